"""Triton Python-backend model for unet-deploy: ``export_triton`` copies this file to ``<name>/1/model.py``.

The ``role`` parameter of config.pbtxt says what it does:
  ``segmenter``  one model: decode each request's images, ``Segmenter.predict_batch`` on the whole
                 batch Triton formed, answer ``mask`` + ``regions``;
  ``pre``/``post`` the Python ends of the ensemble layout around a plain ONNX network model.
A request whose image cannot be decoded gets a TritonError for itself alone; the model keeps serving.

``unet_deploy`` must be importable in the stub's interpreter: installed in a Triton container's
Python, or listed in ``UNET_DEPLOY_PYTHONPATH`` (``os.pathsep``-separated site directories put in
front of ``sys.path``, .pth files honoured; ``unet-deploy serve`` sets it, because the stub
embeds its own libpython and ignores ``PYTHONPATH`` and virtual environments).
"""
import json
import os
import site
import sys


def _add_site_dirs() -> None:
    for path in reversed([p for p in os.environ.get("UNET_DEPLOY_PYTHONPATH", "").split(os.pathsep) if p]):
        before = list(sys.path)
        site.addsitedir(path)
        sys.path[:] = [p for p in sys.path if p not in before] + before


_add_site_dirs()

import triton_python_backend_utils as pb_utils  # noqa: E402

from unet_deploy.errors import UnetDeployError  # noqa: E402
from unet_deploy.meta import ModelMeta  # noqa: E402
from unet_deploy.serve import stages  # noqa: E402


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.role = params.get("role", "segmenter")
        self.meta = ModelMeta.from_json(params["unet_deploy"], "config.pbtxt parameter unet_deploy")
        self.min_area = int(params.get("min_area", "0"))
        self.min_score = float(params.get("min_score", "0"))
        if self.role == "segmenter":
            from unet_deploy import Segmenter

            here = os.path.join(args["model_repository"], args["model_version"])
            device = "cuda" if args["model_instance_kind"] == "GPU" else "cpu"
            threads = int(params["threads"]) if params.get("threads") else None
            self.seg = Segmenter(os.path.join(here, params["model_file"]), device=device, threads=threads,
                                 min_area=self.min_area, min_score=self.min_score,
                                 trust_code=params.get("trust_code") == "1")

    def execute(self, requests):
        return {"segmenter": self._segment, "pre": self._pre, "post": self._post}[self.role](requests)

    def _segment(self, requests):
        answers, images, spans = [None] * len(requests), [], {}
        for i, request in enumerate(requests):
            try:
                found = stages.request_images(_input(request, "image"), _input(request, "raw"))
            except UnetDeployError as e:
                answers[i] = _error(e)
                continue
            spans[i] = (len(images), len(images) + len(found))
            images.extend(found)
        results = self.seg.predict_batch(images, batch_size=max(1, len(images))) if images else []
        for i, (start, stop) in spans.items():
            try:
                mask, regions = stages.pack_results(results[start:stop])
            except UnetDeployError as e:
                answers[i] = _error(e)
                continue
            answers[i] = pb_utils.InferenceResponse([pb_utils.Tensor("mask", mask), pb_utils.Tensor("regions", regions)])
        return answers

    def _pre(self, requests):
        answers = []
        for request in requests:
            try:
                x, t = stages.prepare(stages.request_images(_input(request, "image"), _input(request, "raw")), self.meta)
            except UnetDeployError as e:
                answers.append(_error(e))
                continue
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("images", x), pb_utils.Tensor("transform", t)]))
        return answers

    def _post(self, requests):
        answers = []
        for request in requests:
            try:
                results = stages.finish(_input(request, "logits"), _input(request, "transform"), self.meta, self.min_area,
                                        self.min_score)  # fmt: skip
                mask, regions = stages.pack_results(results)
            except UnetDeployError as e:
                answers.append(_error(e))
                continue
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("mask", mask), pb_utils.Tensor("regions", regions)]))
        return answers


def _error(e):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(" ".join(str(e).split())))
