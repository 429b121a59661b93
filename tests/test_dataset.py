"""SegmentationDataset: training pixels are the runtime's pixels, masks stay aligned, errors name the file."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from unet_deploy.data.dataset import SegmentationDataset, TileDataset, augment_pair, list_samples, split_samples
from unet_deploy.data.palette import read_mask, save_palette_png
from unet_deploy.errors import UnetDeployError
from unet_deploy.fileio import read_image, write_image
from unet_deploy.meta import ModelMeta
from unet_deploy.preprocess import letterbox, preprocess, resize_image

CLASSES = ("background", "scratch", "spot")


def make_voc(root: Path, count: int = 12, size: tuple[int, int] = (80, 60), seed: int = 0) -> Path:
    """Write a small VOC-style dataset: grey textured parts with dark scratches (1) and bright spots (2)."""
    rng = np.random.default_rng(seed)
    w, h = size
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = rng.normal(120, 12, (h, w, 3)).clip(0, 255).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        p0, p1 = rng.integers(0, (w, h), size=(2, 2))
        cv2.line(mask, tuple(map(int, p0)), tuple(map(int, p1)), 1, int(rng.integers(3, 6)))
        centre = tuple(int(v) for v in rng.integers((8, 8), (w - 8, h - 8)))
        cv2.circle(mask, centre, int(rng.integers(4, 9)), 2, -1)
        image[mask == 1] = (40, 40, 60)
        image[mask == 2] = (230, 210, 200)
        write_image(root / "JPEGImages" / f"part {i:02d}.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        save_palette_png(root / "SegmentationClass" / f"part {i:02d}.png", mask)
    (root / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    return root


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def labelme_voc(labelme_dir, tmp_path_factory) -> Path:
    """labelme's own VOC output for its semantic_segmentation example (non-square images, 255 = ignore)."""
    src = labelme_dir / "semantic_segmentation"
    root = tmp_path_factory.mktemp("labelme_voc")
    (root / "JPEGImages").mkdir()
    shutil.copytree(src / "reference_voc" / "SegmentationClass", root / "SegmentationClass")
    for png in (root / "SegmentationClass").glob("*.png"):
        shutil.copy(src / f"{png.stem}.jpg", root / "JPEGImages")
    names = (src / "labels.txt").read_text().split("\n")[1:]  # drop __ignore__; class id = line - 1
    (root / "class_names.txt").write_text("\n".join(n for n in names if n))
    return root


def test_samples_equal_runtime_preprocess_on_labelme_masks(labelme_voc):
    ds = SegmentationDataset(labelme_voc, size=96)
    assert len(ds) == 3 and ds.cached and ds.classes[0] == "_background_"
    ignored = 0
    for i, (image_path, mask_path) in enumerate(ds.samples):
        x, y = ds[i]
        assert x.dtype == torch.float32 and x.shape == (3, 96, 96)
        assert y.dtype == torch.int64 and y.shape == (96, 96)
        expected, _ = preprocess(read_image(image_path), ds.meta)
        np.testing.assert_array_equal(x.numpy(), expected)  # bit for bit what the runtime feeds
        mask = read_mask(mask_path)
        boxed, t = letterbox(mask, 96, interpolation=cv2.INTER_NEAREST_EXACT)
        np.testing.assert_array_equal(y.numpy(), boxed)
        assert (y[t.new_hw[0]:, :] == 0).all() and (y[:, t.new_hw[1]:] == 0).all()  # padding is background
        ignored += int((y == 255).sum())
    assert ignored > 0, "labelme's ignore pixels (255) must survive the letterbox"


def test_meta_drives_colour_padding_and_normalisation(voc):
    meta = ModelMeta(classes=list(CLASSES), input_size=(64, 96), letterbox={"pad": "center"}, color="BGR",
                     mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    ds = SegmentationDataset(voc, meta=meta, cache=False)
    assert not ds.cached
    x, y = ds[0]
    expected, t = preprocess(read_image(ds.samples[0][0]), meta)
    np.testing.assert_array_equal(x.numpy(), expected)
    assert y.shape == (64, 96) and t.offset[1] > 0 and (y[:, : t.offset[1]] == 0).all()
    with pytest.raises(UnetDeployError, match="differ from the model's"):
        SegmentationDataset(voc, meta=ModelMeta(classes=["bg", "x", "y"], input_size=64))


def test_augmentations_keep_image_and_mask_aligned():
    # Image colour encodes the class, so after any augmentation the two must still agree.
    rng = np.random.default_rng(1)
    mask = np.zeros((64, 64), np.uint8)
    cv2.rectangle(mask, (5, 8), (30, 20), 1, -1)
    cv2.circle(mask, (44, 40), 10, 2, -1)
    mask[60:, :48] = 255
    lut = np.array([[10, 10, 10], [200, 20, 20], [20, 200, 20]] + [[0, 0, 0]] * 252 + [[20, 20, 200]], np.uint8)
    image = lut[mask]
    changed = 0
    for _ in range(40):
        img, m = augment_pair(image, mask, rng)
        assert img.shape == image.shape and img.dtype == np.uint8 and m.dtype == np.uint8
        assert set(np.unique(m)) <= {0, 1, 2, 255}
        channel = img.argmax(axis=2)
        for cls, ch in ((1, 0), (2, 1), (255, 2)):
            inside = cv2.erode((m == cls).view(np.uint8), np.ones((3, 3), np.uint8)) > 0  # skip resampled edges
            assert (channel[inside] == ch).all()
        assert (m == 2).sum() > 200  # the spot is never lost
        changed += not np.array_equal(m, mask)
    assert changed > 30


def test_augmentation_repeats_by_seed_epoch_and_index(voc):
    ds = SegmentationDataset(voc, size=64, augment=True, seed=3)
    a = [ds[i] for i in range(4)]
    b = [ds[i] for i in range(4)]
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    ds.set_epoch(1)
    c = [ds[i] for i in range(4)]
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(a, c))
    plain = SegmentationDataset(voc, size=64)
    counts = plain.class_pixel_counts()
    assert counts.shape == (3,) and (counts > 0).all() and counts.sum() == 12 * 64 * 64


def test_cache_means_files_are_read_once(tmp_path):
    root = make_voc(tmp_path / "d", count=3)
    ds = SegmentationDataset(root, size=32)
    shutil.rmtree(root / "JPEGImages")
    assert ds[2][0].shape == (3, 32, 32)


def test_split_is_seeded_disjoint_and_honours_voc_lists(voc, tmp_path):
    train, val = split_samples(voc, 0.25, seed=0)
    assert len(val) == 3 and len(train) == 9 and not set(train) & set(val)
    assert split_samples(voc, 0.25, seed=0) == (train, val)
    assert split_samples(voc, 0.0) == (list_samples(voc), list_samples(voc))
    root = make_voc(tmp_path / "sets", count=4)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("part 00\npart 01\n")
    (sets / "val.txt").write_text("part 03\n")
    assert split_samples(root, 0.5) == (["part 00", "part 01"], ["part 03"])
    assert SegmentationDataset(root, size=32, files=["part 03.jpg"]).stems == ["part 03"]


def test_bad_datasets_name_the_file(tmp_path):
    root = make_voc(tmp_path / "bad", count=2)
    save_palette_png(root / "SegmentationClass" / "part 01.png", np.full((60, 80), 7, np.uint8))
    with pytest.raises(UnetDeployError, match=r"part 01\.png: class id 7 but class_names\.txt lists 3"):
        SegmentationDataset(root, size=32)
    save_palette_png(root / "SegmentationClass" / "part 01.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(UnetDeployError, match=r"part 01\.png: mask is 10x10 but its image is 80x60"):
        SegmentationDataset(root, size=32)
    (root / "class_names.txt").unlink()
    with pytest.raises(UnetDeployError, match="class_names.txt: missing"):
        SegmentationDataset(root)
    with pytest.raises(UnetDeployError, match="not a dataset folder"):
        list_samples(tmp_path / "nowhere")


def _tile_meta(size: int = 64, scale: float = 1.0) -> ModelMeta:
    return ModelMeta(classes=list(CLASSES), input_size=size, tiling={"scale": scale, "overlap": 0.25})


@pytest.mark.parametrize("scale, size", [(1.0, 64), (0.5, 32)])
def test_tile_crops_are_the_tilers_inputs_with_padding_ignored(voc, scale, size):
    """80x60 images: shorter than a tile in height (padded), longer in width (cropped)."""
    from unet_deploy.tiling import _tile_input, scaled_size

    meta = _tile_meta(size, scale)
    ds = TileDataset(voc, meta, seed=2)
    sh, sw = scaled_size((60, 80), scale)
    assert len(ds) == 12 * 2 and ds.cached  # ceil(sh / size) * ceil(sw / size) = 1 * 2 crops per image
    for i in range(0, len(ds), 5):
        x, y = ds[i]
        assert x.shape == (3, size, size) and x.dtype == torch.float32 and y.shape == (size, size) and y.dtype == torch.int64
        assert (y[sh:] == 255).all() and (y[:sh] != 255).all()  # reflected rows are ignored, real rows are not
        image, mask = ds.read(ds.image_index(i))
        assert mask.shape == (60, 80)
        resized = image if scale == 1 else resize_image(image, (sh, sw), None)
        # the crop equals the tiler's input for the tile at the same column: same resize, colour, padding
        matches = [left for left in range(sw - size + 1)
                   if np.array_equal(x.numpy(), _tile_input(resized, 0, left, (size, size), meta))]
        assert len(matches) == 1, matches
        assert set(np.unique(y[:sh].numpy())) <= {0, 1, 2}


def test_tile_crops_find_a_rare_class_far_more_often_than_its_pixel_share(tmp_path):
    root = tmp_path / "rare"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        mask = np.zeros((256, 256), np.uint8)
        mask[:, : 40 + 10 * i] = 1  # a common class: 16-25% of the pixels
        y, x = rng.integers(60, 250, size=2)
        mask[y : y + 3, x : x + 3] = 2  # a rare one: 9 pixels, 0.014%
        image = rng.normal(120, 10, (256, 256, 3)).clip(0, 255).astype(np.uint8)
        write_image(root / "JPEGImages" / f"{i}.png", image)
        save_palette_png(root / "SegmentationClass" / f"{i}.png", mask)
    (root / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    ds = TileDataset(root, _tile_meta(64))
    share = ds.class_pixel_counts()[2] / ds.class_pixel_counts().sum()
    assert len(ds) == 4 * 16 and share < 2e-4
    rare = empty = total = 0
    for epoch in range(8):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            m = ds.load(i)[1]
            rare += (m == 2).any()
            empty += not m.any()
            total += 1
    # p = 0.5 of crops on a defect, half of those on the rare class: about 25%, plus uniform hits (~7% of those)
    assert 0.18 < rare / total < 0.40, rare / total
    assert empty > 0.1 * total  # uniform crops still show plain surface
    ds.set_epoch(0)
    assert all(torch.equal(ds[i][1], ds[i][1]) for i in range(3))


def test_tile_dataset_needs_tiling(voc):
    with pytest.raises(UnetDeployError, match="--tile-scale"):
        TileDataset(voc, ModelMeta(classes=list(CLASSES), input_size=64))


def test_tile_crops_draw_a_small_defect_as_often_as_a_large_one_of_its_class(tmp_path):
    """One class, two defects: a 60x60 patch (3600 px) and a 2x2 spot (4 px) far apart.

    Drawn by pixel, the spot would be the crop's target once in 900 defect crops; drawn by
    defect, half of the defect crops hold it.
    """
    root = tmp_path / "sizes"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    mask = np.zeros((512, 512), np.uint8)
    mask[20:80, 20:80] = 1
    mask[400:402, 400:402] = 1
    write_image(root / "JPEGImages" / "a.png", np.full((512, 512, 3), 120, np.uint8))
    save_palette_png(root / "SegmentationClass" / "a.png", mask)
    (root / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    ds = TileDataset(root, _tile_meta(64))
    small = large = 0
    for epoch in range(10):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            on = int(ds.load(i)[1].sum())  # defect pixels in the crop: the spot's <= 4, the patch's more
            small += 0 < on <= 4
            large += on > 4
    total = 10 * len(ds)
    # p = 0.5 on a defect, half of those on the spot (~25%); uniform crops reach it ~1.5% of the time
    assert 0.17 < small / total < 0.35, (small, large, total)
    assert 0.17 < large / total < 0.40, (small, large, total)
