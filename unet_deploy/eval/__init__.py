"""`unet-deploy eval`: how good a deployed model is on labelled images, in pixels and in defects.

``data`` reads DATA (a `unet-deploy labelme` dataset, or a labelme folder converted on the fly)
and matches classes by name; ``run`` scores models (through ``Segmenter``) or mask PNGs with the
definitions of ``unet_deploy.metrics``; ``report`` writes eval.json, eval.md and eval.html.
(``unet_deploy.train.evaluate`` is training's validation loop; it uses the same metrics.)

Python use::

    from unet_deploy.eval import evaluate, load_data, write_reports
    data = load_data("data/voc")
    result = evaluate(data, ["model.onnx", "model_int8.xml"], device="cpu")
    write_reports(result, "eval_out")        # eval.json, eval.md, eval.html
"""
from __future__ import annotations

from .data import EvalData, load_data, match_classes
from .report import write_reports
from .run import Evaluation, SourceScore, evaluate

__all__ = ["EvalData", "Evaluation", "SourceScore", "evaluate", "load_data", "match_classes", "write_reports"]
