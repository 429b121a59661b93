"""Serving through NVIDIA Triton Inference Server: the model-repository writer and the server launcher.

    from unet_deploy.serve import export_triton, TritonServer
    export_triton("model.onnx", "repo", name="unet", instances=2, max_batch=8)
    with TritonServer("repo", http_port=8000) as server:   # the [serve] extra's tritonserver
        ...                                                # tritonclient.http at server.url

Import-light: OpenCV, ONNX Runtime and the runtime load only when a repository is written or a model runs.
"""
from __future__ import annotations

from .repository import DEFAULT_QUEUE_DELAY_US, LAYOUTS, export_triton, read_parameters
from .server import TritonInstall, TritonServer, free_port

__all__ = ["DEFAULT_QUEUE_DELAY_US", "LAYOUTS", "TritonInstall", "TritonServer", "export_triton", "free_port",
           "read_parameters"]
