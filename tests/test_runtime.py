"""The runtime: exact mapping back, every backend agreeing, torch-free ONNX, device choice, metadata."""
import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.red import RECTS, red_image, red_model
from unet_deploy import Segmenter, UnetDeployError
from unet_deploy.meta import ModelMeta, deployed
from unet_deploy.runtime.base import backend_class, choose_device

ROOT = Path(__file__).resolve().parents[1]


def photos(count=6, size=(200, 150)):
    """Inspection-like BGR photos (generated: the suite needs no data beside the repo)."""
    from unet_deploy.data.synthetic import sample

    return [sample(seed, 0, size).image for seed in range(count)]


def _check_rectangle(mask, hw, input_size):
    y0, y1, x0, x1 = RECTS[hw]
    net_px = max(hw[0] / input_size[0], hw[1] / input_size[1])  # max(H, W) / input size when square
    ys, xs = np.nonzero(mask)
    assert ys.size, f"{hw}: no red pixel found"
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # The mask is a filled axis-aligned rectangle, with each edge within one network pixel.
    assert mask[top:bottom, left:right].all() and mask.sum() == (bottom - top) * (right - left)
    for got, want in ((top, y0), (bottom, y1), (left, x0), (right, x1)):
        assert abs(int(got) - want) <= net_px, f"{hw}: edge {got} vs {want} (network pixel {net_px:.2f})"
    # No systematic shift: centroids within a third of a network pixel.
    assert abs(ys.mean() + 0.5 - (y0 + y1) / 2) < net_px / 3
    assert abs(xs.mean() + 0.5 - (x0 + x1) / 2) < net_px / 3
    return net_px


@pytest.mark.parametrize("pad", ["top-left", "center"])
@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_mapping_back_is_exact_within_one_network_pixel(tmp_path, pad, head):
    seg = Segmenter(red_model(tmp_path / "red.onnx", (64, 64), pad, head))
    assert seg.meta.pad == pad and seg.meta.head == head
    results = seg.predict_batch([red_image(hw) for hw in RECTS], batch_size=3)
    for hw, res in zip(RECTS, results):
        assert res.mask.shape == hw and res.mask.dtype == np.uint8
        _check_rectangle(res.mask, hw, (64, 64))
        assert [r.class_name for r in res.regions] == ["red"]
        x, y, w, h = res.regions[0].bbox
        assert res.regions[0].area == w * h == int(res.mask.sum())
    assert np.array_equal(seg(red_image((3, 517))).mask, results[1].mask)  # batch == single


def test_mapping_back_with_a_non_square_input(tmp_path):
    seg = Segmenter(red_model(tmp_path / "red.onnx", (48, 96), "center"))
    for hw in RECTS:
        _check_rectangle(seg(red_image(hw)).mask, hw, (48, 96))


def test_input_kinds_paths_gray_bgra_16bit_agree(tmp_path):
    import cv2

    seg = Segmenter(red_model(tmp_path / "red.onnx"))
    bgr = red_image((300, 200), (50, 200, 20, 120))
    bgr[:, :, 1] = 40
    path = tmp_path / "part ü.png"
    cv2.imencode(".png", bgr)[1].tofile(str(path))
    want = seg(bgr).mask
    assert np.array_equal(seg(path).mask, want) and np.array_equal(seg(str(path)).mask, want)
    assert seg(path).to_dict()["file"] == str(path)
    bgra = np.dstack([bgr, np.full((300, 200), 128, np.uint8)])
    assert np.array_equal(seg(bgra).mask, want)
    assert np.array_equal(seg(bgr.astype(np.uint16) * 257).mask, want)
    gray = seg(np.full((30, 40), 255, np.uint8))  # gray: R = 1 everywhere
    assert gray.mask.all() and gray.regions[0].bbox == [0, 0, 40, 30]


@pytest.mark.parametrize("min_area, survivors", [(0, [9, 12, 13, 40]), (12, [12, 13, 40]), (13, [13, 40]),
                                                 (41, [])])  # fmt: skip
def test_min_area_keeps_exactly_the_regions_at_least_that_large(tmp_path, min_area, survivors):
    """Red blobs of 9, 12, 13 and 40 pixels on a 64x64 image that the 64x64 model sees pixel for pixel."""
    seg = Segmenter(red_model(tmp_path / "red.onnx"), min_area=min_area)
    img = np.zeros((64, 64, 3), np.uint8)
    blobs = {9: (2, 5, 2, 5), 12: (2, 5, 20, 24), 40: (30, 35, 2, 10)}  # (y0, y1, x0, x1): 3x3, 3x4, 5x8
    for y0, y1, x0, x1 in blobs.values():
        img[y0:y1, x0:x1, 2] = 255
    img[40:43, 40:44, 2] = 255  # 12 pixels ...
    img[43, 40, 2] = 255  # ... and one more below, touching: 13
    res = seg(img)
    assert int((img[:, :, 2] == 255).sum()) == 9 + 12 + 13 + 40 == int(res.mask.sum())  # the mask keeps every pixel
    assert sorted(r.area for r in res.regions) == survivors


def test_result_report_timings_and_overlay(tmp_path):
    seg = Segmenter(red_model(tmp_path / "red.onnx"))
    img = red_image((100, 160), (10, 40, 20, 80))
    res = seg(img)
    d = res.to_dict()
    assert d["file"] == "<array>" and d["size"] == [100, 160]
    assert set(d["timings"]) == {"preprocess", "inference", "postprocess"}
    assert all(v >= 0 for v in d["timings"].values())
    assert d["regions"] == [r.to_dict() for r in res.regions] and len(d["regions"]) == 1
    assert json.loads(json.dumps(d)) == d
    assert res.class_areas() == {"red": res.regions[0].area}
    ov = res.overlay()
    assert ov.shape == (100, 160, 3) and ov.dtype == np.uint8
    assert (ov[0, 0] == 0).all() and tuple(ov[10, 50]) == (0, 255, 0)  # background kept, green contour


def test_an_unreadable_item_fails_alone(tmp_path):
    seg = Segmenter(red_model(tmp_path / "red.onnx"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    items = [red_image((3, 517)), broken, tmp_path / "missing.jpg", np.zeros((4, 4, 2), np.uint8), red_image((1, 1))]
    results = seg.predict_batch(items, batch_size=4)
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert results[1].to_dict() == {"file": str(broken), "error": results[1].error}
    assert str(broken) in results[1].error and "not a readable image" in results[1].error
    assert "\n" not in results[3].error and results[4].mask.tolist() == [[1]]
    with pytest.raises(UnetDeployError, match="broken.png"):
        seg(broken)


def test_a_fixed_batch_model_is_fed_whole_batches(tmp_path):
    seg = Segmenter(red_model(tmp_path / "red.onnx", batch=2))
    assert seg._backend.fixed_batch == 2
    images = [red_image(hw) for hw in RECTS] + [red_image((3, 517))]
    masks = [r.mask for r in seg.predict_batch(images, batch_size=3)]
    assert all(np.array_equal(a, seg(b).mask) for a, b in zip(masks, images))


# -- metadata ---------------------------------------------------------------------------------
def test_metadata_sidecar_explicit_or_a_clear_error(tmp_path):
    bare = red_model(tmp_path / "bare.onnx", meta=False)
    with pytest.raises(UnetDeployError, match=r"bare\.onnx: no unet-deploy metadata inside and no bare\.json"):
        Segmenter(bare)
    seg = Segmenter(bare, classes=["bg", "red"], input_size=64)
    assert seg.meta.classes == ["bg", "red"] and seg.meta.input_size == (64, 64)
    _check_rectangle(seg(red_image((1080, 1920))).mask, (1080, 1920), (64, 64))
    with pytest.raises(UnetDeployError, match="input_size"):
        Segmenter(bare, classes=["bg", "red"])
    ModelMeta(classes=["bg", "defect"], input_size=(32, 32), letterbox={"pad": "center"}).save(tmp_path / "bare.json")
    side = Segmenter(bare)
    assert side.meta.classes == ["bg", "defect"] and side.meta.pad == "center"
    with pytest.raises(UnetDeployError, match="has 2 classes"):
        Segmenter(bare, classes=["a", "b", "c"])
    with pytest.raises(UnetDeployError, match="2 output channels but the metadata lists 3"):
        Segmenter(red_model(tmp_path / "wrong.onnx", meta=False), classes=["a", "b", "c"], input_size=64)


def test_backend_is_chosen_by_suffix(tmp_path, tiny_checkpoint):
    names = {"m.onnx": "onnxruntime", "m.torchscript.pt": "torchscript", "m.pt2": "aoti",
             "m.pt": "checkpoint", "m.PTH": "checkpoint", "m.int8.xml": "openvino"}  # fmt: skip
    for name, backend in names.items():
        assert backend_class(tmp_path / name).name == backend
    assert backend_class(tiny_checkpoint).name == "checkpoint"
    with pytest.raises(UnetDeployError, match="unknown model type"):
        backend_class(tmp_path / "m.h5")
    with pytest.raises(UnetDeployError, match="backend 'tensorrt' is unknown"):
        backend_class(tmp_path / "m.onnx", "tensorrt")
    assert backend_class(tmp_path / "m.bin", "onnx").name == "onnxruntime"


# -- device choice ----------------------------------------------------------------------------
def test_choose_device_rules():
    assert choose_device("auto", True, "n/a") == ("cuda", "CUDA available")
    assert choose_device("auto", False, "no CUDA here") == ("cpu", "no CUDA here")
    assert choose_device("cpu", True, "n/a")[0] == "cpu"
    assert choose_device("cuda:1", True, "n/a")[0] == "cuda"
    with pytest.raises(UnetDeployError, match="m.onnx: CUDA was asked for but no CUDA here; use --device cpu"):
        choose_device("cuda", False, "no CUDA here", "m.onnx")
    with pytest.raises(UnetDeployError, match="not one of auto, cpu, cuda"):
        choose_device("gpu0", True, "n/a")


def test_auto_device_without_cuda_selects_cpu_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="unet_deploy.runtime"):
        seg = Segmenter(red_model(tmp_path / "red.onnx"))
    assert (seg.device, seg.backend) == ("cpu", "onnxruntime")
    assert "red.onnx: onnxruntime on cpu (onnxruntime has no CUDAExecutionProvider" in caplog.text
    assert seg._backend.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(UnetDeployError, match="CUDA was asked for"):
        Segmenter(tmp_path / "red.onnx", device="cuda")


def _fake_cuda_onnxruntime(monkeypatch, cuda_starts: bool):
    """onnxruntime as onnxruntime-gpu on a GPU machine would look: CUDA listed, and (if
    ``cuda_starts``) the session reports the providers it was asked for. Runs on the CPU."""
    import onnxruntime as ort

    real_session, asked = ort.InferenceSession, []

    class Session:
        def __init__(self, path, sess_options=None, providers=None):
            asked.append(providers)
            self._s = real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

        def get_providers(self):
            names = [p[0] if isinstance(p, tuple) else p for p in asked[-1]]
            return names if cuda_starts else ["CPUExecutionProvider"]

        def __getattr__(self, name):
            return getattr(self._s, name)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", Session)
    return asked


def test_auto_device_takes_the_cuda_provider_when_offered(tmp_path, monkeypatch, caplog):
    model = red_model(tmp_path / "red.onnx")
    asked = _fake_cuda_onnxruntime(monkeypatch, cuda_starts=True)
    with caplog.at_level(logging.INFO, logger="unet_deploy.runtime"):
        seg = Segmenter(model)
    assert seg.device == "cuda" and "onnxruntime on cuda" in caplog.text
    assert asked[-1] == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    _check_rectangle(seg(red_image((1080, 1920))).mask, (1080, 1920), (64, 64))
    assert Segmenter(model, device="cuda:1").device == "cuda" and asked[-1][0][1] == {"device_id": 1}
    assert Segmenter(model, device="cpu").device == "cpu" and asked[-1] == ["CPUExecutionProvider"]


def test_a_cuda_provider_that_fails_to_start_falls_back_to_cpu(tmp_path, monkeypatch):
    model = red_model(tmp_path / "red.onnx")
    _fake_cuda_onnxruntime(monkeypatch, cuda_starts=False)
    seg = Segmenter(model)
    assert seg.device == "cpu" and "failed to start" in seg.describe()
    with pytest.raises(UnetDeployError, match="CUDA provider failed to start"):
        Segmenter(model, device="cuda")


def test_torch_backends_take_cuda_when_torch_has_it(tiny_checkpoint, monkeypatch):
    import torch

    import unet_deploy.checkpoint as checkpoint

    seen = []

    def load_on(path, device, classes):  # what a CUDA machine would do, minus the copy to the GPU
        seen.append(device)
        return None, ModelMeta(classes=["a", "b", "c"], input_size=64)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(checkpoint, "load_checkpoint", load_on)
    seg = Segmenter(tiny_checkpoint)
    assert (seg.device, seg.backend) == ("cuda", "checkpoint") and seen == [torch.device("cuda:0")]
    assert seg.pipeline == "device"  # on CUDA the letterbox-to-mask pipeline runs on the GPU
    with pytest.raises(UnetDeployError, match=r"cuda:1 was asked for but this machine has 1 CUDA device \(cuda:0"):
        Segmenter(tiny_checkpoint, device="cuda:1")
    assert seen == [torch.device("cuda:0")]  # refused before any load
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Segmenter(tiny_checkpoint).device == "cpu"


# -- torch absent -----------------------------------------------------------------------------
def test_onnx_runs_with_torch_and_click_unimportable(tmp_path):
    import cv2

    model = red_model(tmp_path / "red.onnx")
    (tmp_path / "m.torchscript.pt").write_bytes(b"not used")
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), photos(1)[0])
    script = f"""
import json, sys
sys.modules["torch"] = None  # import torch now raises ImportError
sys.modules["click"] = None
import unet_deploy.runtime, unet_deploy.formats
from unet_deploy import Segmenter, UnetDeployError
seg = Segmenter({str(model)!r})
res = seg({str(image)!r})
try:
    Segmenter({str(tmp_path / "m.torchscript.pt")!r})
    torch_error = None
except UnetDeployError as e:
    torch_error = e.message
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "click", "openvino", "matplotlib")
                and sys.modules[m] is not None)
print(json.dumps({{"result": res.to_dict(), "backend": seg.backend, "device": seg.device, "precision": seg.precision,
                  "torch_error": torch_error, "loaded": loaded, "mask_sum": int(res.mask.sum())}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    here = Segmenter(model)(image)
    assert out["result"]["regions"] == here.to_dict()["regions"] and out["mask_sum"] == int(here.mask.sum())
    assert here.mask.any() and not here.mask.all()  # the photo has red and non-red parts
    assert (out["backend"], out["device"], out["precision"], out["loaded"]) == ("onnxruntime", "cpu", "fp32", [])
    assert "needs torch, which is not installed" in out["torch_error"]


# -- precision ----------------------------------------------------------------------------------
def test_checkpoint_runs_bf16_on_request_and_says_so(color_checkpoint):
    """``precision="bf16"``: bf16 weights inside, float32 logits out, the same masks as fp32 on a
    model that predicts four classes over large areas."""
    import torch

    from tests.models import color_image

    fp32, bf16 = Segmenter(color_checkpoint), Segmenter(color_checkpoint, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert {p.dtype for p in bf16._backend.model.parameters()} == {torch.bfloat16}
    images = [color_image(seed, (96, 80)) for seed in range(3)]
    want = np.concatenate([r.mask.ravel() for r in fp32.predict_batch(images)])
    got = np.concatenate([r.mask.ravel() for r in bf16.predict_batch(images)])
    assert (np.bincount(want, minlength=4) / want.size > 0.05).all()  # every class is there
    assert np.mean(got == want) > 0.99


def test_a_precision_the_backend_cannot_run_is_one_line(tmp_path, tiny_checkpoint):
    model = red_model(tmp_path / "red.onnx")
    with pytest.raises(UnetDeployError, match=r"red\.onnx: the onnxruntime backend cannot run this model at bf16; "
                                              r"it runs fp32 \(re-export with --precision bf16"):
        Segmenter(model, precision="bf16")
    with pytest.raises(UnetDeployError, match=r"tiny\.pt: the checkpoint backend cannot run this model at int8"):
        Segmenter(tiny_checkpoint, precision="int8")


# -- every backend, one trained model -----------------------------------------------------------
@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A tiny UNet saved as a checkpoint and exported to ONNX and TorchScript with its ModelMeta
    inside. Its last layer is rescaled so that on the photos every class wins about a third
    of the pixels: argmax boundaries everywhere, a harder parity test than a confident model."""
    import torch

    from tests.conftest import warm_batchnorm
    from unet_deploy.checkpoint import save_checkpoint
    from unet_deploy.meta import TORCHSCRIPT_EXTRA_FILE
    from unet_deploy.model import UNet
    from unet_deploy.preprocess import preprocess_batch

    out = tmp_path_factory.mktemp("exports")
    meta = ModelMeta(classes=["background", "scratch", "spot"], input_size=(64, 64), arch={"base_channels": 8})
    torch.manual_seed(0)
    model = UNet(3, base_channels=8)
    warm_batchnorm(model)
    x = torch.from_numpy(preprocess_batch(photos(), meta)[0])
    with torch.no_grad():
        logits = model(x)
        mean, std = logits.mean((0, 2, 3)), logits.std((0, 2, 3))
        model.out.weight /= std[:, None, None, None]
        model.out.bias.copy_((model.out.bias - mean) / std)
    paths = {"checkpoint": save_checkpoint(out / "tiny.pt", model, meta)}
    meta = deployed(meta)  # what the exporter writes (rect for this top-left model), and the checkpoint runs
    paths["onnx"] = out / "tiny.onnx"
    torch.onnx.export(model, (x[:1],), str(paths["onnx"]), input_names=["images"], output_names=["logits"],
                      dynamic_axes={n: {0: "batch", 2: "h", 3: "w"} for n in ("images", "logits")}, dynamo=False)  # fmt: skip
    proto = onnx.load(str(paths["onnx"]))
    helper.set_model_props(proto, {"unet_deploy": meta.to_json()})
    onnx.save(proto, str(paths["onnx"]))
    paths["torchscript"] = out / "tiny.torchscript.pt"
    torch.jit.save(torch.jit.script(model), str(paths["torchscript"]), _extra_files={TORCHSCRIPT_EXTRA_FILE: meta.to_json()})
    return paths


def test_onnx_torchscript_and_checkpoint_give_the_same_masks(exports, tmp_path):
    images = photos()
    renamed = tmp_path / "model.pt"  # a TorchScript archive named like a checkpoint is still TorchScript
    renamed.write_bytes(exports["torchscript"].read_bytes())
    assert backend_class(renamed).name == "torchscript"
    segs = {fmt: Segmenter(path) for fmt, path in exports.items()}
    assert {s.backend for s in segs.values()} == {"onnxruntime", "torchscript", "checkpoint"}
    assert all(s.meta == segs["checkpoint"].meta for s in segs.values())
    assert {s.letterbox for s in segs.values()} == {"rect (trained with top-left)"}  # said once, alike
    masks = {fmt: [r.mask for r in s.predict_batch(images, batch_size=5)] for fmt, s in segs.items()}
    ref = np.concatenate([m.ravel() for m in masks["checkpoint"]])
    counts = np.bincount(ref, minlength=3) / ref.size
    assert (counts > 0.1).all(), f"the model must predict every class for this test to mean something: {counts}"
    for fmt in ("onnx", "torchscript"):
        agree = np.mean(np.concatenate([m.ravel() for m in masks[fmt]]) == ref)
        assert agree >= 0.999, f"{fmt}: {agree:.5f} of pixels agree with the checkpoint"


def test_aoti_package_metadata_and_device(tmp_path, monkeypatch):
    """The AOTI backend's own logic, with the compiled package faked (a real one takes a minute to
    build): metadata from the package or the sidecar, and the device it was compiled for."""
    import torch

    meta = ModelMeta(classes=["background", "red"], input_size=(64, 64))

    class Package:
        def __init__(self, device="cpu", with_meta=True):
            self.metadata = {"AOTI_DEVICE_KEY": device, **({"unet_deploy": meta.to_json()} if with_meta else {})}

        def get_metadata(self):
            return self.metadata

        def __call__(self, x):
            batches.append(x.shape[0])
            return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0] - 0.5], 1)

    batches, loads = [], []

    def load(path, device_index=-1):
        loads.append(device_index)
        return packages[Path(path).name]

    packages = {"m.pt2": Package(), "cuda.pt2": Package("cuda"), "bare.pt2": Package(with_meta=False)}
    monkeypatch.setattr(torch._inductor, "aoti_load_package", load)
    for name in packages:
        (tmp_path / name).write_bytes(b"stand-in")
    seg = Segmenter(tmp_path / "m.pt2", trust_code=True)  # a package we made (faked)
    assert (seg.backend, seg.device, seg.meta, seg.precision) == ("aoti", "cpu", meta, "fp32")
    for hw, res in zip(RECTS, seg.predict_batch([red_image(hw) for hw in RECTS], batch_size=3)):
        _check_rectangle(res.mask, hw, (64, 64))
    batches.clear()
    hw = next(iter(RECTS))
    _check_rectangle(seg(red_image(hw)).mask, hw, (64, 64))
    assert batches == [2]  # no batch-limit record: Inductor's dynamic batch starts at 2, so 1 is padded
    with pytest.raises(UnetDeployError, match="compiled for CUDA but torch has no CUDA"):
        Segmenter(tmp_path / "cuda.pt2", trust_code=True)
    with pytest.raises(UnetDeployError, match="CUDA was asked for but torch has no CUDA"):
        Segmenter(tmp_path / "m.pt2", device="cuda", trust_code=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UnetDeployError, match="compiled for cpu, not cuda"):
        Segmenter(tmp_path / "m.pt2", device="cuda:1", trust_code=True)
    assert loads[-1] == 1  # the device index reaches aoti_load_package
    with pytest.raises(UnetDeployError, match="bare.pt2: no unet-deploy metadata inside and no bare.json"):
        Segmenter(tmp_path / "bare.pt2", trust_code=True)
    meta.save(tmp_path / "bare.json")
    assert Segmenter(tmp_path / "bare.pt2", trust_code=True).meta == meta


@pytest.mark.slow  # compiles an AOTInductor package
def test_a_real_fixed_batch_aoti_package_is_fed_whole_batches(tmp_path):
    """A package compiled for batch 2 at 64x64 whose metadata records it (``formats.aoti.BATCH_KEY``):
    the Segmenter re-batches to 2; a wrong input size, or a package that does not say, is one line."""
    import torch

    from unet_deploy.formats.aoti import BATCH_KEY

    class Red(torch.nn.Module):  # class 1 where red > 0.5
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0] - 0.5], 1)

    program = torch.export.export(Red(), (torch.zeros(2, 3, 64, 64),))  # static: batch 2, 64x64
    meta = ModelMeta(classes=["background", "red"], input_size=(64, 64))
    for name, limits in (("red.pt2", {BATCH_KEY: '{"fixed_batch": 2}'}), ("silent.pt2", {})):
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / name), inductor_configs={
            "aot_inductor.metadata": {"unet_deploy": meta.to_json(), **limits}})  # fmt: skip
    seg = Segmenter(tmp_path / "red.pt2", trust_code=True)
    assert seg._backend.fixed_batch == 2
    images = [red_image(hw) for hw in RECTS] + [red_image((3, 517))]
    results = seg.predict_batch(images, batch_size=5)
    for hw, res in zip(RECTS, results):
        _check_rectangle(res.mask, hw, (64, 64))
    assert np.array_equal(seg(images[-1]).mask, results[-1].mask)  # a single image is padded to the batch
    with pytest.raises(UnetDeployError, match=r"red\.pt2: the package refused a 2x3x96x96 input"):
        Segmenter(tmp_path / "red.pt2", input_size=96, trust_code=True)(red_image((3, 517)))
    silent = Segmenter(tmp_path / "silent.pt2", trust_code=True)  # no record: a dynamic batch from 2 is assumed, so 2 runs
    with pytest.raises(UnetDeployError, match=r"silent\.pt2: the package refused a 3x3x64x64 input"):
        silent.infer(np.zeros((3, 3, 64, 64), np.float32))  # the raw call says what the package refused
    again = silent.predict_batch(images[:3], batch_size=3)  # a refused batch is retried image by image (#30)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(again, results[:3]))


@pytest.mark.slow  # the exported_tiny fixture compiles an AOTI package (shared with the export tests)
def test_every_format_of_the_shared_export_fixture_agrees(exported_tiny, tiny_checkpoint):
    """The exporter's artefacts (TorchScript, ONNX, AOTInductor .pt2) of ``tiny_checkpoint`` through the
    runtime on photos: the same logits as the checkpoint and the same masks. (This random
    model calls nearly every pixel background, hence the logits check; the test above has the
    boundaries.)"""
    from unet_deploy.preprocess import preprocess_batch

    images = photos()
    reference = Segmenter(tiny_checkpoint)  # letterboxed as its exports are (rect for this top-left model)
    x = preprocess_batch(images, reference.meta)[0]
    want_logits = reference.infer(x)
    want_masks = [r.mask for r in reference.predict_batch(images)]
    backends = set()
    for fmt, path in exported_tiny.items():
        seg = Segmenter(path, trust_code=True)  # exported by this run
        backends.add(seg.backend)
        assert dataclasses.replace(seg.meta, extra={}) == dataclasses.replace(reference.meta, extra={}), fmt  # extra: notes
        assert seg.letterbox == reference.letterbox == "rect (trained with top-left)", fmt
        np.testing.assert_allclose(seg.infer(x), want_logits, atol=1e-4, rtol=1e-4, err_msg=fmt)
        masks = [r.mask for r in seg.predict_batch(images, batch_size=5)]
        agree = np.mean(np.concatenate([(a == b).ravel() for a, b in zip(masks, want_masks)]))
        assert agree >= 0.999, f"{fmt} ({seg.backend}): {agree:.5f} of pixels agree with the checkpoint"
    assert {"onnxruntime", "torchscript", "aoti"} <= backends


def test_the_host_resize_takes_the_backends_threads_and_no_more(exports, monkeypatch):
    """``threads=1``, or torch's pool set to 1 thread: a 1080p frame is resized on the caller's thread
    alone; 2 threads: in 2 bands (one band thread). The network input is the same bytes either way."""
    from tests.conftest import one_torch_thread
    from unet_deploy import preprocess

    asked: list[int] = []
    real = preprocess._band_pool
    monkeypatch.setattr(preprocess, "_band_pool", lambda workers: asked.append(workers) or real(workers))
    frame = photos(1, (1920, 1080))[0]

    def network_input(model, **kw) -> np.ndarray:
        asked.clear()
        return Segmenter(model, device="cpu", input_size=256, **kw).preprocess(frame).x

    one = network_input(exports["onnx"], threads=1)
    assert asked == [] and one.shape == (3, 144, 256)
    assert np.array_equal(network_input(exports["onnx"], threads=2), one) and set(asked) == {1}
    with one_torch_thread():  # the torch backends follow torch's pool, set by the caller or by threads=
        assert np.array_equal(network_input(exports["checkpoint"]), one) and asked == []
        assert np.array_equal(network_input(exports["checkpoint"], threads=2), one) and set(asked) == {1}
