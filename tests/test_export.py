"""Export: every format from our checkpoint and from a seed state_dict, reloaded by its own consumer; the CLI's errors.

Per-format tests run over the registry (``formats.exportable()``). Tests of the AOTInductor
package (``exported_tiny`` compiles one) are slow; the others use ``exported_light`` (every
other in-process format, of the same checkpoint).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import SLOW_FORMATS, per_format
from tests.seed_net import UNet as SeedUNet
from unet_deploy import export, formats
from unet_deploy.checkpoint import load_checkpoint
from unet_deploy.cli.export import command as export_command
from unet_deploy.errors import UnetDeployError
from unet_deploy.formats import sidecar_path
from unet_deploy.meta import METADATA_KEY, TORCHSCRIPT_EXTRA_FILE, ModelMeta, deployed, letterbox_note
from unet_deploy.runtime.base import load_backend

# Every exportable format with an in-process runtime (a Triton repository folder: tests/test_serve.py).
PER_FORMAT = per_format([f for f in formats.exportable() if f.backend_class is not None])
# The file names DESIGN.md promises for a checkpoint tiny.pt.
NAMES = {"torchscript": "tiny.torchscript.pt", "onnx": "tiny.onnx", "aoti": "tiny.pt2", "openvino": "tiny.xml"}
# (batch, height, width): two input sizes x batch 1 and 3, as the acceptance asks.
SHAPES = [(1, 64, 64), (3, 64, 64), (1, 96, 160), (3, 96, 160)]
CLASSES = "background,scratch,spot"


def _inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(b, 3, h, w, generator=g) for b, h, w in SHAPES]


def _load(fmt: str, path):
    """Each artefact through its consumer's own API (not the exporter's loaders): (run, meta)."""
    if fmt == "torchscript":
        extra = {TORCHSCRIPT_EXTRA_FILE: ""}
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        return module, ModelMeta.from_json(extra[TORCHSCRIPT_EXTRA_FILE])
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = ModelMeta.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        return (lambda x: torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])), meta
    if fmt == "openvino":
        ov = pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
        core = ov.Core()
        model = core.read_model(str(path))
        meta = ModelMeta.from_json(model.get_rt_info(METADATA_KEY).astype(str))
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return (lambda x: torch.from_numpy(compiled(x.numpy())[0])), meta
    if fmt == "aoti":
        compiled = torch._inductor.aoti_load_package(str(path))
        return compiled, ModelMeta.from_json(compiled.get_metadata()["unet_deploy"])
    raise AssertionError(f"{fmt}: a new format; load it here through its consumer's own API")


def _assert_matches(run, model, atol=1e-4, min_agree=0.9999):
    with torch.inference_mode():
        for x in _inputs():
            ref, got = model(x), run(x)
            assert got.shape == ref.shape and got.dtype == torch.float32
            assert float((got - ref).abs().max()) <= atol, f"{tuple(x.shape)}"
            assert float((got.argmax(1) == ref.argmax(1)).float().mean()) >= min_agree, f"{tuple(x.shape)}"


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def exported_light(tiny_checkpoint, tmp_path_factory) -> dict:
    """``tiny_checkpoint`` exported to every installed in-process format but the ``SLOW`` ones."""
    out = tmp_path_factory.mktemp("exported_light")
    light = [f.name for f in export.resolve_formats("all") if f.name not in SLOW_FORMATS]
    return export.export_model(tiny_checkpoint, light, out_dir=out, verbose=False)


def _exported(fmt, request):
    """The artefact of ``fmt``: from ``exported_light`` when it has it, else (``SLOW_FORMATS``) ``exported_tiny``."""
    made = request.getfixturevalue("exported_tiny" if fmt in SLOW_FORMATS else "exported_light")
    if fmt not in made:
        pytest.skip(f"{fmt}: its export needs a package that is not installed")
    return made[fmt]


def _written(meta: ModelMeta, fmt: str) -> ModelMeta:
    """The metadata an fp32 export of ``meta`` carries, in every format alike: the deployed letterbox (rect for
    a top-left model, with the trained one recorded) and its precision."""
    d = deployed(meta)
    return replace(d, extra={**d.extra, "precision": "fp32"})


@pytest.mark.parametrize("fmt", PER_FORMAT)
def test_each_format_reloads_with_its_metadata_and_the_eager_logits(request, tiny, fmt):
    model, meta = tiny
    path = _exported(fmt, request)
    assert fmt in NAMES, f"{fmt}: add the file name DESIGN.md promises for it to NAMES"
    assert path.name == NAMES[fmt] and path.is_file()
    run, got = _load(fmt, path)
    assert got == _written(meta, fmt)
    assert ModelMeta.load(sidecar_path(path)) == got
    _assert_matches(run, model)


@pytest.mark.slow  # exported_tiny compiles an AOTInductor package
def test_export_folder_holds_the_artefacts_and_sidecar_only(exported_tiny):
    folder = exported_tiny["onnx"].parent
    names = {p.name for p in folder.iterdir()} - {"tiny.xml", "tiny.bin"}  # OpenVINO, when installed
    assert names == {"tiny.json", "tiny.onnx", "tiny.pt2", "tiny.torchscript.pt"}  # no .data, no staging left


def test_torchscript_has_no_device_constant_and_stays_in_eval_mode(exported_light):
    from unet_deploy.formats.torchscript import device_constants

    module = torch.jit.load(str(exported_light["torchscript"]), map_location="cpu")
    assert device_constants(module) == [] and not module.training
    code = "\n".join(getattr(m, "code", "") for m in module.modules())
    assert "_conv_forward" in code and "cpu" not in code and "cuda" not in code

    class Baked(torch.nn.Module):  # the detector itself finds a device baked into a graph
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.zeros(1, device=torch.device("cpu"))

    assert device_constants(torch.jit.script(Baked()))


def test_torchscript_refuses_a_wrong_input_size_in_one_line(exported_light):
    module = torch.jit.load(str(exported_light["torchscript"]), map_location="cpu")
    with pytest.raises(torch.jit.Error, match="multiples of 16 \\(at least 32\\), got 40x64; letterbox"):
        module(torch.rand(1, 3, 40, 64))
    with pytest.raises(torch.jit.Error, match=r"expects N x 3 x H x W input, got \[3, 64, 64\]"):
        module(torch.rand(3, 64, 64))


def test_onnx_is_one_checked_file_with_named_dynamic_io(exported_light):
    import onnx

    model = onnx.load(str(exported_light["onnx"]))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert {p.key for p in model.metadata_props} == {METADATA_KEY}
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)


def test_onnx_agrees_in_opencv_dnn(exported_light, tiny):
    import cv2

    net = cv2.dnn.readNetFromONNX(str(exported_light["onnx"]))

    def run(x):
        net.setInput(x.numpy())
        return torch.from_numpy(net.forward())

    _assert_matches(run, tiny[0])


def test_cli_exports_a_seed_state_dict(tiny, exported_light, tmp_path):
    """The seed's own network class, its state_dict saved as the seed's train.py does.

    AOTInductor is left out here on purpose: its compile (~1.5 CPU-minutes) runs once per test
    session, in ``exported_tiny``; after ``load_checkpoint`` a seed file and our checkpoint take
    the same path, and the seed file loads to the same weights and metadata (asserted below).
    """
    model, meta = tiny
    seed = SeedUNet(3, width=8)
    seed.load_state_dict(model.state_dict())
    torch.save(seed.state_dict(), tmp_path / "unet.pth")
    loaded, loaded_meta = load_checkpoint(tmp_path / "unet.pth", classes=CLASSES.split(","))
    assert replace(loaded_meta, input_size=(64, 64)) == meta
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    out = tmp_path / "out"
    args = [str(tmp_path / "unet.pth"), "-f", "torchscript,onnx", "--classes", CLASSES, "--img-size", "64", "64",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(export_command, args)
    assert result.exit_code == 0, result.output
    paths = [out / "unet.torchscript.pt", out / "unet.onnx"]
    assert result.stdout.split() == [str(p) for p in paths]
    assert "aoti is its successor" in result.stderr  # the export's own line says TorchScript is deprecated ...
    assert "Warning" not in result.stderr  # ... so torch's DeprecationWarnings (and its pytree FutureWarning) are not repeated
    assert result.stderr.count("parity ok") == 2 and (out / "unet.json").is_file()
    for fmt, path in zip(["torchscript", "onnx"], paths):
        run, got = _load(fmt, path)
        assert got == _written(meta, fmt)
        _assert_matches(run, _load(fmt, exported_light[fmt])[0], atol=1e-5, min_agree=1.0)


def test_fp16_static_onnx_keeps_float32_io(tiny, tiny_checkpoint, tmp_path):
    import onnx

    path = export.export_model(tiny_checkpoint, "onnx", tmp_path, precision="fp16", dynamic=False, verbose=False)["onnx"]
    model = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 64, 64]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    run, got = _load("onnx", path)
    assert got.extra == {"precision": "fp16", "dynamic": False}  # static: the trained top-left, never rect (#30)
    with torch.inference_mode():
        x = _inputs()[1]
        ref, out = tiny[0](x), run(x)
    assert float((out - ref).abs().max()) < 1e-2 and float((out.argmax(1) == ref.argmax(1)).float().mean()) > 0.99


class _Drifting(torch.nn.Module):
    """Eager output shifted from what TorchScript records: an export that silently differs."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if not torch.jit.is_scripting():
            out = out + 0.01
        return out


def test_failed_parity_check_leaves_no_file(tiny, tmp_path):
    model, meta = tiny
    with pytest.raises(UnetDeployError, match=r"model.torchscript.pt: TorchScript output differs .* 1.0e-02"):
        export.export_model((_Drifting(model), meta), "torchscript", tmp_path, verbose=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, words",
    [
        (["--img-size", "100", "100"], "--img-size 100x100 is not a multiple of 16 (at least 32); use e.g. 96x96"),
        (["--format", "tensorrt"], "unknown export format 'tensorrt'; choose from torchscript, onnx, aoti"),
        (["-f", "torchscript", "--static"], "--static applies to --format onnx, aoti only, not torchscript"),
        (["--classes", "a,b"], "tiny.pt: checkpoint has 3 classes but 2 were given"),
        (["-f", "onnx", "--opset", "13"], "--opset 13 is not supported"),
        (["-f", "onnx", "--portable"], "--portable applies to --format aoti only, not onnx"),
        (["--precision", "int4"], "--precision 'int4' is not one of fp32|fp16"),
        (["MISSING"], "missing.pt: file not found; pass a checkpoint (.pt) or a seed unet.pth"),
    ],
)
def test_cli_user_errors_are_one_line(tiny_checkpoint, tmp_path, args, words):
    source = [str(tmp_path / "missing.pt")] if args == ["MISSING"] else [str(tiny_checkpoint), *args]
    result = CliRunner().invoke(export_command, [*source, "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_seed_state_dict_class_count_mismatch_is_one_line(tiny, tmp_path):
    torch.save(tiny[0].state_dict(), tmp_path / "unet.pth")
    result = CliRunner().invoke(export_command, [str(tmp_path / "unet.pth"), "--classes", "good,bad"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "unet.pth: the state_dict weights have 3 output channels but the metadata lists 2 classes" in result.output


def test_format_names_resolve_in_order_without_duplicates():
    assert [f.name for f in export.resolve_formats(["aoti", "onnx,aoti"])] == ["aoti", "onnx"]
    assert [f.name for f in export.resolve_formats("all", "int8")] == ["onnx", "openvino"]  # only they export int8
    with pytest.raises(UnetDeployError, match=r"--format torchscript cannot export int8; use fp32\|fp16"):
        export.export_model("unused.pt", "torchscript,openvino", precision="int8", verbose=False)


@pytest.mark.slow  # exported_tiny compiles an AOTInductor package
def test_every_exported_file_runs_on_its_registry_backend_and_agrees(exported_tiny, tiny):
    """What export wrote is what the runtime picks for that file (``formats.for_path``), and it agrees."""
    model, meta = tiny
    assert {f.name for f in export.resolve_formats("all")} == set(exported_tiny)
    for fmt, path in exported_tiny.items():
        assert path.name == NAMES[fmt] and formats.for_path(path).name == fmt
        backend = load_backend(formats.for_path(path))(path, device="cpu")
        assert backend.meta == _written(meta, fmt) and backend.precision == "fp32"
        with torch.inference_mode():
            for x in _inputs():
                ref = model(x).numpy()
                got = backend.forward(x.numpy())
                assert got.dtype == ref.dtype and abs(got - ref).max() <= 1e-4, (fmt, tuple(x.shape))


def test_export_refuses_a_folder_target_and_cleans_a_killed_exports_staging(tiny_checkpoint, tmp_path):
    from unet_deploy.export import export_model
    from unet_deploy.fileio import temporary_name

    out = tmp_path / "out"
    (out / "tiny.onnx").mkdir(parents=True)
    with pytest.raises(UnetDeployError) as e:
        export_model(tiny_checkpoint, "onnx", out_dir=out, verbose=False)
    assert "is a folder" in str(e.value) and "\n" not in str(e.value)
    (out / "tiny.onnx").rmdir()
    stale = temporary_name(out / "tiny.onnx", ".export").with_name(".tiny.onnx.999999999.deadbeef.export")
    stale.mkdir()
    export_model(tiny_checkpoint, "onnx", out_dir=out, verbose=False)
    assert (out / "tiny.onnx").is_file() and not stale.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_new_exports_letterbox_rect_unless_told(color_checkpoint, tmp_path):
    """rect is the default of new exports of square-letterbox models (issue 17's measured bar); --letterbox overrides."""
    import dataclasses

    from unet_deploy.checkpoint import load_checkpoint
    from unet_deploy.errors import UnetDeployError
    from unet_deploy.export import export_letterbox
    from unet_deploy.runtime import Segmenter

    _, meta = load_checkpoint(color_checkpoint)
    assert meta.pad == "top-left"
    path = export.export_model(color_checkpoint, "onnx", out_dir=tmp_path / "a", verbose=False)["onnx"]
    seg = Segmenter(path)
    assert seg.meta.pad == "rect"
    frame = np.zeros((90, 160, 3), np.uint8)  # 16:9: the network sees 48x64 instead of 64x64
    from unet_deploy.preprocess import preprocess

    assert preprocess(frame, seg.meta)[0].shape[1:] == (48, 64)
    kept = export.export_model(color_checkpoint, "onnx", out_dir=tmp_path / "b", verbose=False, letterbox="top-left")
    assert Segmenter(kept["onnx"]).meta.pad == "top-left"
    centred = dataclasses.replace(meta, letterbox={"pad": "center", "fill": 0})
    assert export_letterbox(centred, None)["pad"] == "center"  # only the measured case changes
    assert "trained_letterbox" not in deployed(centred).extra
    assert "letterbox rect, trained with top-left" in letterbox_note(seg.meta)  # the export line and seg.letterbox say it
    assert Segmenter(color_checkpoint).letterbox == seg.letterbox == "rect (trained with top-left)"
    with pytest.raises(UnetDeployError, match=r"^--letterbox 'square' is not one of top-left\|center\|rect$"):
        export_letterbox(meta, "square")


def test_a_checkpoint_and_its_exports_give_one_answer_on_real_photos(color_checkpoint, labelme_dir, tmp_path):
    """Issue 25's 'one model, one answer': under default settings the checkpoint and its ONNX, TorchScript and
    (where installed) OpenVINO exports letterbox alike (rect, trained top-left: said by seg.letterbox) and give
    the same masks on labelme's real photos."""
    import importlib.util

    import cv2

    from unet_deploy.runtime import Segmenter

    wanted = ["onnx", "torchscript"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    files = export.export_model(color_checkpoint, wanted, out_dir=tmp_path, verbose=False)
    photos = [cv2.imread(str(f)) for f in sorted(labelme_dir.rglob("*.jpg"))[:6]]
    reference = Segmenter(color_checkpoint)
    want = [r.mask for r in reference.predict_batch(photos)]
    for fmt, path in files.items():
        seg = Segmenter(path)
        assert seg.letterbox == reference.letterbox == "rect (trained with top-left)", fmt
        got = [r.mask for r in seg.predict_batch(photos)]
        same = sum(int((a == b).sum()) for a, b in zip(want, got)) / sum(a.size for a in want)
        assert same >= 0.9999, (fmt, same)  # float rounding may flip an exact tie of the colour model; nothing else
