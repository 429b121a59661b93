"""Shared fixtures: the labelme reference data (skipped when absent) and small models made once per run."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
LABELME = DATA / "labelme"
DATA_FIXTURES = ("labelme_dir", "data_dir")
MISSING_DATA = "needs ../shared/data/labelme beside the repo (the labelme reference projects; CI has it)"
NO_CUDA = "needs a CUDA GPU (torch.cuda.is_available() is False); bash benchmarks/run_gpu.sh runs these on one"


def _have_data() -> bool:
    return LABELME.is_dir()


def _have_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses the reference data ``needs_labelme_data``; skip them when it is absent.
    Skip the ``cuda`` tests where torch sees no GPU."""
    have = _have_data()
    cuda = None
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            cuda = _have_cuda() if cuda is None else cuda
            if not cuda:
                item.add_marker(pytest.mark.skip(reason=NO_CUDA))
        if any(name in getattr(item, "fixturenames", ()) for name in DATA_FIXTURES):
            item.add_marker(pytest.mark.needs_labelme_data)
            if not have:
                item.add_marker(pytest.mark.skip(reason=MISSING_DATA))


@pytest.fixture(scope="session")
def labelme_dir() -> Path:
    """``../shared/data/labelme``: labelme's own example projects with their reference masks."""
    if not _have_data():
        pytest.skip(MISSING_DATA)
    return LABELME


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data``: ``labelme/``, ``labelme_shapes/`` and ``seed_unet_state_dict.json``."""
    if not _have_data():
        pytest.skip(MISSING_DATA)
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


@pytest.fixture(scope="session")
def color_checkpoint(tmp_path_factory) -> Path:
    """``tests.models.color_unet()`` saved as a checkpoint: 4 classes, each large on ordinary images.

    Its mask is ``tests.models.color_classes(image)`` at the network's resolution (exact ties
    aside), and it is translation-equivariant; ``ModelMeta`` from ``tests.models.color_meta()``
    (64x64 input, RGB, ``pixel / 255``).
    """
    from unet_deploy.checkpoint import save_checkpoint

    from .models import color_meta, color_unet

    return save_checkpoint(tmp_path_factory.mktemp("color") / "color.pt", color_unet(), color_meta(), epoch=1)


@pytest.fixture(scope="session")
def exported_color(color_checkpoint, tmp_path_factory) -> dict:
    """``color_checkpoint`` exported to ONNX, parity-checked: ``{"onnx": color.onnx}``, sidecar beside it.

    About 10-15 s once per run; TorchScript adds ~8 s and AOTInductor ~40 s, so a test that
    needs those exports them itself (AOTInductor: marked slow).
    """
    from unet_deploy.export import export_model

    return export_model(color_checkpoint, "onnx", out_dir=tmp_path_factory.mktemp("exported_color"), verbose=False)
