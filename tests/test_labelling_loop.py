"""The labelling loop's pieces on synthetic data: split, hide, correct (work saved), merge."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from unet_deploy.data.labelme import class_ids, convert_folder, labelme_to_mask, read_labels_file
from unet_deploy.data.prelabel import write_prelabel
from unet_deploy.data.synthetic import generate
from unet_deploy.labelling_loop import correct, hide_labels, merge_labelme_folders, split_off
from unet_deploy.postprocess import find_regions


@pytest.fixture()
def halves(tmp_path):
    raw = tmp_path / "raw"
    generate(raw, 8, size=(96, 96), seed=3, progress=False)
    truth = split_off(raw, tmp_path / "truth", 3)
    pool = hide_labels(truth, tmp_path / "pool")
    return raw, truth, pool


def test_split_and_hide(halves):
    raw, truth, pool = halves
    assert len(list(raw.glob("*.json"))) == 5 and len(list(truth.glob("*.json"))) == 3
    assert {p.stem for p in raw.glob("*.json")}.isdisjoint(p.stem for p in truth.glob("*.json"))
    assert [p.stem for p in pool] == sorted(p.stem for p in truth.glob("*.json"))
    assert not list(pool[0].parent.glob("*.json"))  # unlabelled: select ranks them


def test_correct_measures_the_pixels_a_person_keeps(halves, tmp_path):
    raw, truth, pool = halves
    classes = read_labels_file(truth / "labels.txt")
    ids = class_ids(classes)
    to_label = tmp_path / "to_label"
    to_label.mkdir()
    wanted = {}
    for i, image in enumerate(pool):
        shutil.copy2(image, to_label / image.name)
        _, mask = labelme_to_mask(truth / f"{image.stem}.json", ids)
        wanted[image.name] = mask
        proposal = mask if i == 0 else np.zeros_like(mask)  # perfect, then "nothing found"
        proposal = np.where(proposal == 255, 0, proposal).astype(np.uint8)
        write_prelabel(to_label / f"{image.stem}.json", to_label / image.name, proposal,
                       find_regions(proposal, classes), "mask")  # fmt: skip
    done = correct([p.name for p in pool], to_label, truth, classes)
    scored = [m != 255 for m in wanted.values()]
    background = [((m == 0) & s).sum() / s.sum() for m, s in zip(wanted.values(), scored)]
    assert done.unchanged[0] == pytest.approx(1.0)
    assert done.unchanged[1:] == pytest.approx(background[1:])  # only the background was right
    total = sum(s.sum() for s in scored)
    assert done.unchanged_share == pytest.approx((scored[0].sum() + sum(b * s.sum() for b, s in
                                                  zip(background[1:], scored[1:]))) / total)  # fmt: skip
    defects = [int(((m > 0) & (m != 255)).sum()) for m in wanted.values()]  # the truth's defect pixels
    assert done.defect_pixels == sum(defects) and done.defect_agreed == defects[0]  # all of the first, none after
    for image in pool:  # the truth was saved over each proposal, pointing at the copied image
        doc = json.loads((to_label / f"{image.stem}.json").read_text())
        assert doc["imagePath"] == image.name
        assert np.array_equal(labelme_to_mask(to_label / f"{image.stem}.json", ids)[1], wanted[image.name])
    merged = merge_labelme_folders([raw, to_label], tmp_path / "round2")
    summary = convert_folder(merged, tmp_path / "voc", labels_file=merged / "labels.txt", progress=False)
    assert summary.ok and len(summary.converted) == 8
