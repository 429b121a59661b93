"""Shared fixtures: the labelme reference data (skipped when absent), small models made once per run,
the OpenVINO/int8 tests' model on real video frames, and the C++ consumer's build."""
from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
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
    (``unet_deploy.formats.sidecar_path``). The AOTInductor compile dominates (~1.5 CPU-minutes).
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


# Formats whose export is too slow for `make test-fast` (pytest -m "not slow"), and why.
SLOW_FORMATS = {"aoti": "its export compiles an AOTInductor package (minutes on 2 cores)"}


def per_format(rows, key=lambda fmt: fmt.name) -> list:
    """``pytest.param`` per registry row (``key(row)`` as value and id), the ``SLOW_FORMATS`` marked slow."""
    return [pytest.param(key(f), id=key(f), marks=[pytest.mark.slow] if f.name in SLOW_FORMATS else []) for f in rows]


@pytest.fixture
def with_formats(monkeypatch):
    """``with_formats(row, ...)``: run the test with rows added to the format table.

    The registry is a read-only table; this puts a new one in its place for the test only
    (monkeypatch restores the original), so no test can leave a format behind for another.
    """
    from types import MappingProxyType

    from unet_deploy import formats

    def add(*rows):
        monkeypatch.setattr(formats, "FORMATS", MappingProxyType({**formats.FORMATS, **{r.name: r for r in rows}}))

    return add


# ----------------------------------------------------------------------------- the OpenVINO/int8 tests' model
VIDEO_CLASSES = ["background", "car", "track"]  # labelme's video_annotation/labels.txt
TEST_MIN_AGREEMENT = 70.0  # separates a sound int8 calibration of the random-weight model from a broken one


@pytest.fixture(scope="session")
def voc_dir(labelme_dir, tmp_path_factory) -> Path:
    """(test_openvino, test_quant) The five real video frames with labelme's reference masks, as a VOC-style dataset."""
    src = labelme_dir / "video_annotation"
    root = tmp_path_factory.mktemp("voc")
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    for image in sorted(src.glob("*.jpg")):
        shutil.copy(image, root / "JPEGImages" / image.name)
        shutil.copy(src / "reference_voc" / "SegmentationClassPNG" / f"{image.stem}.png", root / "SegmentationClass")
    return root


@pytest.fixture(scope="session")
def model_meta(voc_dir):
    """(tiny UNet in eval mode, its ModelMeta): random weights, BatchNorm statistics from the frames."""
    import numpy as np
    import torch

    from unet_deploy import accuracy
    from unet_deploy.fileio import read_image
    from unet_deploy.meta import ModelMeta
    from unet_deploy.model import UNet
    from unet_deploy.preprocess import preprocess

    meta = ModelMeta(classes=VIDEO_CLASSES, input_size=(64, 64), arch={"base_channels": 8})
    frames = np.stack([preprocess(read_image(p), meta)[0] for p in accuracy.dataset_images(voc_dir)])
    torch.manual_seed(0)
    model = UNet(len(VIDEO_CLASSES), base_channels=8)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the exact statistics of the frames
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(frames))
    return model.eval(), meta


@pytest.fixture(scope="session")
def checkpoint(model_meta, tmp_path_factory) -> Path:
    from unet_deploy.checkpoint import save_checkpoint

    model, meta = model_meta
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, meta)


def openvino_meta(xml: Path):
    """The ModelMeta inside an OpenVINO IR's rt_info."""
    from unet_deploy.formats.openvino import read_meta
    from unet_deploy.runtime import openvino_backend

    return read_meta(openvino_backend.core().read_model(str(xml)), xml)


# ----------------------------------------------------------------------------- the C++ consumer (export/cpp)
CPP = ROOT / "export" / "cpp"
BUILD = CPP / "build"


def _skip_reason() -> str | None:
    if not shutil.which("cmake"):
        return "cmake is not installed (apt install cmake)"
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "no C++ compiler (apt install g++)"
    return None


@pytest.fixture(scope="session")
def unet_infer() -> Path:
    """Configure and build export/cpp once per session; the path of the `unet_infer` program."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    import torch

    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".test-lock", "w") as lock:  # two pytest sessions must not build at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        configure = ["cmake", "-S", str(CPP), "-B", str(BUILD), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
        if shutil.which("ninja") and not (BUILD / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja"]
        done = subprocess.run(configure, capture_output=True, text=True)
        if done.returncode != 0 and "OpenCV" in done.stdout + done.stderr and not _has_opencv_dev():
            pytest.skip("OpenCV's C++ package is missing (apt install libopencv-dev, or `make cpp-deps` as root)")
        if done.returncode != 0 and "nlohmann_json" in done.stdout + done.stderr:
            pytest.skip("nlohmann::json is missing (apt install nlohmann-json3-dev, or `make cpp-deps` as root)")
        assert done.returncode == 0, f"cmake configure failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        done = subprocess.run(["cmake", "--build", str(BUILD), "-j", "2"], capture_output=True, text=True)
        assert done.returncode == 0, f"build failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return BUILD / "unet_infer"


def _has_opencv_dev() -> bool:
    return subprocess.run(["pkg-config", "--exists", "opencv4"]).returncode == 0 if shutil.which("pkg-config") else False


def run_unet_infer(exe: Path, *args: str | Path) -> subprocess.CompletedProcess:
    """`unet_infer` with one inference thread: OpenMP threads spin against each other on a busy 2-core CI box."""
    return subprocess.run([str(exe), *map(str, args), "--threads", "1"], capture_output=True, text=True, timeout=300)


@contextlib.contextmanager
def one_torch_thread():
    """torch on one thread in this process (as `_run`), the previous setting restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
