"""Segmenter tiling and rect letterbox: the tiler wired into the runtime, per-shape batching."""
import numpy as np
import pytest

from tests.models import color_classes, color_image, color_logits
from unet_deploy import Segmenter, UnetDeployError
from unet_deploy.data.synthetic import sample


def _untied(image):
    """Pixels whose two best reference logits differ (the colour UNet's argmax is exact there)."""
    top2 = np.sort(color_logits(image), axis=0)[-2:]
    return top2[1] > top2[0]


@pytest.mark.parametrize("fmt", ["checkpoint", "onnx"])
def test_tiled_segmenter_gives_the_per_pixel_answer(fmt, color_checkpoint, exported_color):
    path = color_checkpoint if fmt == "checkpoint" else exported_color["onnx"]
    image = color_image(3, (900, 500))
    image[80:81, 20:880] = (0, 0, 255)  # a 1-px line the letterbox cannot keep
    tiled = Segmenter(path, tiling={"scale": 1.0, "overlap": 0.25}, tile_batch=3)
    assert tiled.tiling == {"scale": 1.0, "overlap": 0.25}
    res = tiled(image)
    keep = _untied(image)
    assert res.mask.shape == image.shape[:2]
    assert np.array_equal(res.mask[keep], color_classes(image)[keep])
    assert set(res.timings) == {"preprocess", "inference", "postprocess"}
    boxed = Segmenter(path, tiling=False)(image)
    line = keep[80] & (color_classes(image)[80] != color_classes(image)[79])
    assert np.mean(res.mask[80][line] == color_classes(image)[80][line]) == 1.0
    assert np.mean(boxed.mask[80][line] == color_classes(image)[80][line]) < 0.5  # 14x shrink blurs the line away


def test_tiling_from_meta_and_its_override(color_checkpoint, tmp_path):
    from unet_deploy.checkpoint import load_checkpoint, save_checkpoint
    import dataclasses

    model, meta = load_checkpoint(color_checkpoint)
    tiled = save_checkpoint(tmp_path / "tiled.pt", model, dataclasses.replace(meta, tiling={"scale": 0.5, "overlap": 0.25}))
    assert Segmenter(tiled).tiling == {"scale": 0.5, "overlap": 0.25}
    assert Segmenter(tiled, tiling=False).tiling is None
    for bad in ({"scale": 0}, {"scale": 1, "overlap": 1.0}, {"scale": float("nan")}, True):
        with pytest.raises(UnetDeployError) as e:
            Segmenter(tiled, tiling=bad)
        assert "\n" not in str(e.value)


def test_rect_frames_of_several_shapes_batch_per_shape(exported_color):
    frames = [sample(i, 0, size).image for i, size in enumerate([(320, 180), (200, 150), (320, 180), (90, 160)])]
    seg = Segmenter(exported_color["onnx"], letterbox="rect")
    assert seg.meta.pad == "rect"
    batched = seg.predict_batch(frames, batch_size=4)
    for frame, res in zip(frames, batched):
        assert res.ok and np.array_equal(res.mask, seg(frame).mask)
    with pytest.raises(UnetDeployError):
        Segmenter(exported_color["onnx"], letterbox="diagonal")


def test_unet_predict_tiles_on_request(exported_color, tmp_path):
    import json

    from click.testing import CliRunner

    from unet_deploy.cli.predict import command
    from unet_deploy.data.palette import read_mask
    from unet_deploy.fileio import write_image

    image = color_image(5, (400, 240))
    write_image(tmp_path / "in" / "a.png", image)
    run = lambda *a: CliRunner().invoke(command, [str(exported_color["onnx"]), str(tmp_path / "in"), *a])  # noqa: E731
    ok = run("--out", str(tmp_path / "t"), "--tile-scale", "1.0", "--overlap", "0.5")
    assert ok.exit_code == 0, ok.output
    mask = read_mask(tmp_path / "t" / "masks" / "a.png")
    tiled = Segmenter(exported_color["onnx"], tiling={"scale": 1.0, "overlap": 0.5})(image).mask
    assert np.array_equal(mask, tiled)
    assert json.loads((tmp_path / "t" / "report.json").read_text())["images"][0]["mask"] == "masks/a.png"
    bad = run("--out", str(tmp_path / "u"), "--no-tile", "--tile-scale", "1")
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "contradict" in bad.output
