"""`unet-deploy demo --quick`: the whole pipeline, the labelling loop included, end to end."""
from __future__ import annotations

import json
import re

import pytest

from unet_deploy.demo import run_demo


@pytest.mark.slow
def test_quick_demo_runs_the_labelling_loop(tmp_path):
    report = run_demo(tmp_path / "demo", quick=True, log=lambda line: None)
    out = report.parent
    text = report.read_text()
    assert "<h2>Labelling loop</h2>" in text and "before (labelled half)" in text and "after (" in text
    assert re.search(r"[\d.]+% of the pre-labelled pixels unchanged by the correction", text)
    sel = json.loads((out / "to_label" / "selection.json").read_text())
    assert len(sel["picks"]) == 2 and len(sel["ranking"]) == 6
    for p in sel["picks"]:  # corrected: the truth was saved over the pre-annotation
        truth = json.loads((out / "pool_truth" / p["labelme"]).read_text())
        assert json.loads((out / "to_label" / p["labelme"]).read_text())["shapes"] == truth["shapes"]
    assert len(list((out / "dataset2" / "SegmentationClass").glob("*.png"))) == 6 + 2
    ev = json.loads((out / "eval_loop" / "eval.json").read_text())
    assert len(ev["models"]) == 2  # before and after, by unet-deploy eval
    assert not (out / "export" / "best.pt2").exists()  # AOTInductor left out of the demo for time
