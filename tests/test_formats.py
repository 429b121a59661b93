"""The format registry: a format added to the table is offered by export, the CLI and the runtime; the C++ consumer agrees."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from unet_deploy import Segmenter, UnetDeployError, formats
from unet_deploy.cli.export import command as export_command
from unet_deploy.export import export_model, resolve_formats
from unet_deploy.formats import Format
from unet_deploy.formats._torch import reduced_precision
from unet_deploy.formats import sidecar_path
from unet_deploy.meta import ModelMeta
from unet_deploy.runtime.base import Backend, backend_class, backend_names

ROOT = Path(__file__).resolve().parents[1]
META = ModelMeta(classes=["background", "red"], input_size=(64, 64), arch={"base_channels": 8})


# -- a fake format: a 1x1 convolution stored as JSON, run with numpy ------------------------------
def write(model, example, path, meta, opts) -> None:
    """The fake format's writer: the 1x1 conv's weights and the metadata, as JSON."""
    conv = model[0] if isinstance(model, torch.nn.Sequential) else model
    path.write_text(json.dumps({"meta": meta.to_dict(), "weight": conv.weight[:, :, 0, 0].tolist(),
                                "bias": conv.bias.tolist()}))  # fmt: skip


class FakeBackend(Backend):
    name = "fake-numpy"

    def __init__(self, path, device="auto", threads=None, precision=None, **options) -> None:
        super().__init__(path, device, threads, precision)
        data = json.loads(Path(path).read_text())
        self.meta = ModelMeta.from_dict(data["meta"])
        self.weight, self.bias = np.array(data["weight"], np.float32), np.array(data["bias"], np.float32)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return np.einsum("kc,nchw->nkhw", self.weight, batch) + self.bias[None, :, None, None]


FAKE = Format(
    name="fake", title="Fake", suffixes=(".fake",), backend="fake-numpy", backend_class=f"{__name__}:FakeBackend",
    exporter=f"{__name__}:write", precisions=("fp32",), devices=("cpu",), needs_torch=False, requires=(),
    options=frozenset(), aliases=("fk",), note="a 1x1 conv as JSON, run by numpy",
)  # fmt: skip


@pytest.fixture
def fake_format(with_formats):
    with_formats(FAKE)
    return FAKE


def red_conv() -> torch.nn.Module:
    """Class 1 wins where the red channel (RGB input / 255) is above 0.5."""
    conv = torch.nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[1, 0] = 1.0
        conv.bias[1] = -0.5
    return conv.eval()


def test_a_registered_format_is_offered_by_export_the_cli_and_the_runtime(fake_format, tmp_path):
    assert resolve_formats("fk") == [FAKE] and FAKE in resolve_formats("all")
    lines: list[str] = []
    path = export_model((red_conv(), META), "fake", tmp_path, log=lines.append)["fake"]
    assert path == tmp_path / "model.fake" and ModelMeta.load(sidecar_path(path)).extra == {"precision": "fp32", "trained_letterbox": "top-left"}
    assert any(line.startswith("Fake: parity ok") for line in lines), lines  # checked through FakeBackend
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fake", "model.json"]

    help_text = CliRunner().invoke(export_command, ["--help"]).output
    assert "fake (.fake: a 1x1 conv as JSON, run by numpy)" in " ".join(help_text.split())
    assert "aoti, openvino, triton, fake, all" in " ".join(help_text.split())

    assert backend_class(path) is FakeBackend and "fake-numpy" in backend_names()
    seg = Segmenter(path)
    image = np.zeros((50, 80, 3), np.uint8)
    image[10:30, 20:60, 2] = 255  # a red rectangle (BGR)
    res = seg(image)
    assert (seg.backend, seg.precision) == ("fake-numpy", "fp32")
    assert [r.class_name for r in res.regions] == ["red"] and res.mask[10:30, 20:60].all()
    assert res.mask.sum() == pytest.approx(20 * 40, rel=0.15)


def test_a_fake_format_whose_artefact_disagrees_is_refused(fake_format, tmp_path, monkeypatch):
    monkeypatch.setattr(FakeBackend, "forward", lambda self, batch: np.zeros((batch.shape[0], 2, *batch.shape[2:]), np.float32))
    with pytest.raises(UnetDeployError, match=r"model\.fake: Fake output differs from the eager model"):
        export_model((red_conv(), META), "fake", tmp_path, verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_a_format_is_known_only_while_it_is_in_the_table(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(formats, "FORMATS", type(formats.FORMATS)({**formats.FORMATS, "fake": FAKE}))
        assert formats.get("fk") is FAKE and backend_class(tmp_path / "m.fake") is FakeBackend
    with pytest.raises(UnetDeployError, match=r"m\.fake: unknown model type; pass one of \.torchscript\.pt"):
        backend_class(tmp_path / "m.fake")
    with pytest.raises(UnetDeployError, match="unknown export format 'fake'; choose from torchscript, onnx, aoti"):
        resolve_formats("fake")
    with pytest.raises(UnetDeployError, match="format 'fake' is unknown"):
        formats.get("fake")


def test_the_table_is_read_only():
    with pytest.raises(TypeError):
        formats.FORMATS["fake"] = FAKE  # type: ignore[index]
    assert not hasattr(formats, "register")


@pytest.mark.parametrize("call, message", [
    (lambda: formats.get("onxx"), "format 'onxx' is unknown (did you mean 'onnx'?); choose from torchscript"),
    (lambda: resolve_formats("opnevino"), "unknown export format 'opnevino' (did you mean 'openvino'?)"),
    (lambda: backend_class("m.onnx", "openvinno"), "backend 'openvinno' is unknown (did you mean 'openvino'?)"),
    (lambda: export_model((red_conv(), META), "onnx", precision="fp61"), "(did you mean 'fp16'?)"),
])  # fmt: skip
def test_unknown_names_get_the_closest_valid_one(call, message):
    with pytest.raises(UnetDeployError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_backend_refuses_an_option_it_does_not_take(tmp_path):
    path = tmp_path / "m.fake"
    path.write_text(json.dumps({"meta": META.to_dict(), "weight": [[1, 0, 0], [0, 1, 0]], "bias": [0, 0]}))
    with pytest.raises(UnetDeployError, match=r"the fake-numpy backend has no option 'thread' \(did you mean 'threads'\?\)"):
        FakeBackend(path, thread=2)
    assert FakeBackend(path, providers=None, classes=["a", "b"]).meta == META  # what Segmenter hands every backend


def test_a_backend_must_define_forward(tmp_path):
    class NoForward(Backend):
        name = "incomplete"

    with pytest.raises(TypeError, match="abstract"):
        NoForward(tmp_path / "m.fake")


def test_lookup_by_name_alias_backend_and_suffix(tmp_path, tiny_checkpoint):
    assert formats.get("ORT") is formats.get("onnxruntime") is formats.get("onnx")
    assert formats.for_path("a/B.TorchScript.PT").name == "torchscript"  # longest suffix, any case
    assert formats.for_path("m.int8.xml").name == "openvino" and formats.for_path(tiny_checkpoint).name == "checkpoint"
    scripted = tmp_path / "scripted.pt"  # a TorchScript archive saved under a checkpoint's suffix
    torch.jit.save(torch.jit.script(red_conv()), str(scripted))
    assert formats.for_path(scripted).name == "torchscript"
    assert formats.FORMATS["openvino"].path(tmp_path, "m", "int8") == tmp_path / "m.int8.xml"
    assert [f.name for f in formats.exportable()] == ["torchscript", "onnx", "aoti", "openvino", "triton"]


def _cpp_suffixes() -> tuple[set[str], set[str], set[str]]:
    """(suffixes whose sidecar it finds, suffixes it refuses to run, suffixes it runs as AOTInductor)."""
    text = (ROOT / "export" / "cpp" / "unet_infer.cpp").read_text()
    sidecar = re.search(r"for \(const char\* suffix : \{([^}]*)\}\)", text)
    refused = re.search(r"if \(((?:\s*\|\|\s*)?(?:ends_with\(name, \"[^\"]+\"\)(?:\s*\|\|\s*)?)+)\)\s*\n\s*throw", text)
    aoti = re.search(r"if \(ends_with\(name, \"([^\"]+)\"\)\) \{\s*\n\s*m\.load_aoti", text)
    assert sidecar and refused and aoti, "unet_infer.cpp no longer has the suffix checks this test reads"
    quoted = lambda s: set(re.findall(r"\"([^\"]+)\"", s))  # noqa: E731
    return quoted(sidecar.group(1)), quoted(refused.group(1)), {aoti.group(1)}


def test_the_cpp_consumer_knows_the_registry_suffixes():
    sidecar, refused, aoti = _cpp_suffixes()
    torch_free = {s for f in formats.FORMATS.values() if not f.needs_torch and not f.folder for s in f.suffixes}
    assert refused == torch_free  # what it sends to unet-predict: exactly the formats that need no torch
    assert aoti == set(formats.get("aoti").suffixes)
    for fmt in formats.FORMATS.values():
        if fmt.backend in ("torchscript", "aoti"):  # what it runs: the file export writes, and its sidecar
            assert fmt.suffixes[0] in sidecar and fmt.suffixes[0] not in refused
    assert sidecar <= set(formats.suffixes())  # it strips no suffix the registry does not know
    for written in (f.suffixes[0] for f in formats.exportable() if not f.folder):  # every sidecar export writes
        assert written in sidecar, written


def test_reduced_precision_keeps_float32_io_and_the_original():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)).eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.inference_mode():
        ref = model(x)
        for precision, tol in (("bf16", 5e-2), ("fp16", 5e-3)):
            wrapped = reduced_precision(model, precision)
            y = wrapped(x)
            assert y.dtype == torch.float32 and y.shape == ref.shape
            assert next(wrapped.model.parameters()).dtype == getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[precision])
            assert 0 < float((y - ref).abs().max()) < tol, precision  # really rounded, and close
            assert torch.equal(torch.jit.script(wrapped)(x), y)  # scriptable, as the TorchScript export needs
    assert next(model.parameters()).dtype == torch.float32 and reduced_precision(model, "fp32") is model


def test_an_unknown_precision_names_the_closest_one(tiny_checkpoint):
    with pytest.raises(UnetDeployError, match=r"cannot run this model at fp61 \(did you mean 'fp16'\?\); it runs fp32\|bf16\|fp16"):
        Segmenter(tiny_checkpoint, precision="fp61")
