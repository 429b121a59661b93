"""Shared fixtures: paths to the real labelme data and small models made once per test run."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
LABELME = DATA / "labelme"


def pytest_collection_modifyitems(config, items):
    if not LABELME.is_dir():
        raise pytest.UsageError(f"{LABELME} is missing: the tests need ../shared/data beside the repo")


@pytest.fixture(scope="session")
def labelme_dir() -> Path:
    return LABELME


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def warm_batchnorm(model, steps: int = 3, size: int = 64, in_channels: int = 3) -> None:
    """Give BatchNorm non-trivial running statistics so eval-mode outputs are not an identity BN."""
    import torch

    g = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.rand(2, in_channels, size, size, generator=g) * 2 + 0.2)
    model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A base_channels=8, 3-class checkpoint in our format (random weights, warmed BatchNorm)."""
    import torch

    from unet_deploy.checkpoint import save_checkpoint
    from unet_deploy.meta import ModelMeta
    from unet_deploy.model import UNet

    torch.manual_seed(0)
    model = UNet(3, base_channels=8)
    warm_batchnorm(model)
    meta = ModelMeta(classes=["background", "scratch", "spot"], input_size=(64, 64),
                     arch={"base_channels": 8})
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, meta, epoch=1)


@pytest.fixture(scope="session")
def exported_tiny(tiny_checkpoint, tmp_path_factory) -> dict:
    """``tiny_checkpoint`` exported once per run to every format, parity-checked: ``{format: path}``.

    Keys ``torchscript`` (``tiny.torchscript.pt``), ``onnx`` (``tiny.onnx``), ``aoti``
    (``tiny.pt2``, host-tuned CPU package) and, where OpenVINO is installed, ``openvino``
    (``tiny.xml`` + ``.bin``); the ``tiny.json`` sidecar sits beside them
    (``unet_deploy.meta.sidecar_path``). The AOTInductor compile dominates (~1.5 CPU-minutes).
    """
    from unet_deploy.export import export_model

    return export_model(tiny_checkpoint, "all", out_dir=tmp_path_factory.mktemp("exported"), verbose=False)
