"""Write a Triton model repository for a unet-deploy model: ``export_triton`` (the ``triton`` export format).

Two layouts:
  ``python``   (default) ``repo/<name>/`` is one Python-backend model that runs ``Segmenter`` on
               the artefact beside it: the same letterbox, tiling and regions as everywhere else.
               Runs on any Triton with the Python backend, the nvidia-pytriton wheel included.
  ``ensemble`` ``<name>_pre`` (Python: decode + letterbox) -> ``<name>_net`` (the plain ONNX network
               on Triton's onnxruntime backend; swap in a TensorRT plan on a GPU) -> ``<name>_post``
               (Python: argmax, un-letterbox, regions), tied by the ensemble ``<name>``. Needs a
               full Triton (e.g. the NGC ``tritonserver`` container); square or fixed-size letterbox only.
Both answer input ``image`` (encoded bytes, TYPE_STRING) with ``mask`` (uint8 class ids at the
original size) and ``regions`` (JSON: ``Result.to_dict()``, the objects of report.json).
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import UnetDeployError
from ..fileio import private_tempdir
from ..formats import sidecar_path
from ..meta import ModelMeta

LAYOUTS = ("python", "ensemble")
DEFAULT_QUEUE_DELAY_US = 2000  # dynamic batching waits at most 2 ms for more requests to join a batch
MODEL_PY = Path(__file__).with_name("python_model.py")
# A Triton model name is the name of its folder in the repository and of its config: letters,
# digits, "_", "-" and "." (not first), at most 64 characters. No separators, no "..", not empty.
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def check_model_name(name: object) -> str:
    """Return ``name`` if it is a Triton model name (``MODEL_NAME``), else raise the one-line error.

    Args:
        name: the model name clients ask for (``--name``); it becomes a folder of the repository.
    """
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise UnetDeployError(
            f"model name {name!r} is not a Triton model name: use 1-64 letters, digits, '_', '-' or '.' "
            "(not first), no path separators, e.g. --name unet"
        )
    return name


@dataclass(frozen=True)
class Tensor:
    """One ``input``/``output`` entry of config.pbtxt (dims without the batch dimension)."""

    name: str
    dtype: str  # "TYPE_STRING", "TYPE_UINT8", "TYPE_FP32", "TYPE_INT32"
    dims: tuple[int, ...]
    optional: bool = False

    def pbtxt(self) -> str:
        opt = " optional: true" if self.optional else ""
        return f'  {{ name: "{self.name}" data_type: {self.dtype} dims: [ {", ".join(map(str, self.dims))} ]{opt} }}'


IMAGE = Tensor("image", "TYPE_STRING", (1,))
OUTPUTS = (Tensor("mask", "TYPE_UINT8", (-1, -1)), Tensor("regions", "TYPE_STRING", (1,)))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def config_pbtxt(
    name: str,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    max_batch: int,
    backend: str | None = "python",
    platform: str | None = None,
    instances: int | None = 1,
    kind: str = "KIND_CPU",
    queue_delay_us: int | None = DEFAULT_QUEUE_DELAY_US,
    parameters: dict[str, str] | None = None,
    extra: str = "",
) -> str:
    """The text of one config.pbtxt (protobuf text format, ``inference.ModelConfig``)."""
    lines = [f'name: "{name}"']
    lines += [f'backend: "{backend}"'] if backend else []
    lines += [f'platform: "{platform}"'] if platform else []
    lines.append(f"max_batch_size: {max_batch}")
    lines += ["input ["] + [",\n".join(t.pbtxt() for t in inputs)] + ["]"]
    lines += ["output ["] + [",\n".join(t.pbtxt() for t in outputs)] + ["]"]
    if queue_delay_us is not None:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {int(queue_delay_us)} }}")
    if instances is not None:
        lines.append(f"instance_group [ {{ count: {int(instances)} kind: {kind} }} ]")
    for key, value in (parameters or {}).items():
        lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
    return "\n".join(lines) + "\n" + extra


def export_triton(
    model_file_or_checkpoint: str | Path,
    out_repo: str | Path,
    name: str = "unet",
    instances: int = 1,
    max_batch: int = 8,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    layout: str = "python",
    device: str = "cpu",
    threads: int | None = None,
    min_area: int = 0,
    min_score: float = 0.0,
    log: Callable[[str], None] | None = None,
    trust_code: bool = False,
) -> Path:
    """Write the Triton model repository for one model into ``out_repo``; returns ``out_repo/<name>``.

    ``model_file_or_checkpoint`` is anything ``Segmenter`` takes (.onnx, OpenVINO .xml,
    .torchscript.pt, .pt2, a checkpoint .pt); a checkpoint is exported to ONNX first. ``instances``
    copies per server (``instance_group``, ``device`` "cpu" or "gpu" sets its kind),
    ``max_batch`` the largest batch Triton forms, ``queue_delay_us`` how long it waits to form one.
    ``threads`` sets each instance's intra-op threads; ``min_area`` drops smaller regions.
    ``name`` must be a Triton model name (``check_model_name``); a model folder already in
    ``out_repo`` is replaced only when this package wrote it. ``trust_code`` lets a ``.pt2``
    (native code) load, here and in the server (``Segmenter(trust_code=...)``).
    ``min_score`` drops regions whose score (``Region.score``) is lower.
    """
    check_model_name(name)
    if layout not in LAYOUTS:
        raise UnetDeployError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if device not in ("cpu", "gpu"):
        raise UnetDeployError(f"device {device!r} for Triton instances must be cpu or gpu")
    if instances < 1 or max_batch < 1 or queue_delay_us < 0:
        raise UnetDeployError(f"instances ({instances}) and max batch ({max_batch}) must be >= 1, queue delay ({queue_delay_us}) >= 0")
    log = log or (lambda message: None)
    out_repo = Path(out_repo)
    kind = "KIND_GPU" if device == "gpu" else "KIND_CPU"
    with private_tempdir("triton-export") as tmp:
        files, meta = _artefact(Path(model_file_or_checkpoint), Path(tmp), onnx_only=layout == "ensemble", log=log,
                                trust_code=trust_code)
        params = {"unet_deploy": meta.to_json(), "min_area": str(int(min_area)), "min_score": repr(float(min_score))}
        if trust_code:
            params["trust_code"] = "1"
        if layout == "python":
            params.update(role="segmenter", model_file=files[0].name, threads=str(threads or ""))
            raw = Tensor("raw", "TYPE_UINT8", (-1, -1, -1), optional=True)
            config = config_pbtxt(name, [Tensor("image", "TYPE_STRING", (1,), optional=True), raw], OUTPUTS,
                                  max_batch, instances=instances, kind=kind, queue_delay_us=queue_delay_us,
                                  parameters=params)
            _write_model(out_repo / name, config, files)
        else:
            _write_ensemble(out_repo, name, files[0], meta, params, instances, max_batch, queue_delay_us, kind)
    log(f"Triton: wrote {layout} repository {out_repo} (model {name!r}, {instances} x {device}, max batch {max_batch}, "
        f"queue delay {queue_delay_us} us)")
    return out_repo / name


def write(model: Any, example: Any, path: Path, meta: ModelMeta, opts: Any) -> ModelMeta:
    """The format registry's writer of ``--format triton``: ONNX first, then the python-layout repository at ``path``.

    ``path`` is the repository folder (``<stem>.triton``); the model in it is named ``unet``.
    """
    from ..export import export_to
    from ..formats import onnx as onnx_format

    with private_tempdir("triton-onnx") as tmp:
        onnx_path = Path(tmp) / f"{Path(path).name.split('.')[0] or 'model'}.onnx"
        export_to(onnx_format.FORMAT, model, meta, onnx_path, opts)  # staged, parity-checked, with its sidecar
        export_triton(onnx_path, path, log=opts.log)
    return meta


def _artefact(path: Path, tmp: Path, onnx_only: bool, log: Callable[[str], None],
              trust_code: bool = False) -> tuple[list[Path], ModelMeta]:
    """The model file(s) to put in the repository (a checkpoint exported to ONNX) and its ModelMeta."""
    from .. import formats

    if not path.is_file():
        raise UnetDeployError(f"{path}: model file not found; pass an .onnx, .xml, .torchscript.pt, .pt2 or checkpoint .pt")
    fmt = formats.for_path(path)
    if fmt.name == "checkpoint":
        from ..export import export_model

        from ..checkpoint import load_checkpoint

        pad = load_checkpoint(path)[1].pad if onnx_only else None  # the ensemble's fixed-size steps: as trained
        path = export_model(path, "onnx", out_dir=tmp, log=log, letterbox=pad)["onnx"]
        fmt = formats.for_path(path)
    if onnx_only and fmt.name != "onnx":
        raise UnetDeployError(f"{path}: the ensemble layout needs an ONNX model (or a checkpoint); pass the .onnx or use layout python")
    from ..runtime import Segmenter

    meta = Segmenter(path, device="cpu", trust_code=trust_code).meta  # loads it: a broken file fails here, not in the server
    files = [path] + [p for p in (path.with_suffix(".bin"),) if fmt.name == "openvino" and p.is_file()]
    if sidecar_path(path).is_file():
        files.append(sidecar_path(path))
    return files, meta


def _write_model(model_dir: Path, config: str, files: Sequence[Path] = (), model_py: bool = True) -> None:
    version = model_dir / "1"
    if model_dir.exists() or model_dir.is_symlink():
        _remove_own_model(model_dir)
    version.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config)
    if model_py:
        shutil.copyfile(MODEL_PY, version / "model.py")
    for f in files:
        shutil.copyfile(f, version / f.name)


def _remove_own_model(model_dir: Path) -> None:
    """Delete a model folder this module wrote earlier (a config.pbtxt with our ``unet_deploy`` parameter);
    anything else is left alone with a one-line error."""
    config = model_dir / "config.pbtxt"
    try:
        ours = model_dir.is_dir() and not model_dir.is_symlink() and "unet_deploy" in read_parameters(config)
    except (OSError, UnicodeDecodeError, ValueError):
        ours = False
    if not ours:
        raise UnetDeployError(f"{model_dir}: exists and was not written by unet-deploy; remove it yourself "
                              "or choose another model name or repository folder")
    shutil.rmtree(model_dir)


def _write_ensemble(out_repo: Path, name: str, onnx_path: Path, meta: ModelMeta, params: dict[str, str],
                    instances: int, max_batch: int, queue_delay_us: int, kind: str) -> None:
    if meta.tiling or meta.pad == "rect":
        raise UnetDeployError(
            f"{onnx_path}: {'tiling' if meta.tiling else 'the rect letterbox'} needs more than one fixed-size network call; "
            "use layout python (Segmenter inside Triton) for this model"
        )
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    net_in, net_out = session.get_inputs()[0], session.get_outputs()[0]
    if not isinstance(net_in.shape[0], str) and net_in.shape[0] is not None:
        raise UnetDeployError(f"{onnx_path}: fixed batch {net_in.shape[0]}; re-export with a dynamic batch for Triton batching")
    h, w = meta.input_size
    images = Tensor("images", "TYPE_FP32", (meta.in_channels, h, w))
    logits = Tensor("logits", "TYPE_FP32", (meta.num_outputs, h, w))
    transform = Tensor("transform", "TYPE_INT32", (8,))
    _write_model(out_repo / f"{name}_pre", config_pbtxt(
        f"{name}_pre", [IMAGE], [images, transform], max_batch, instances=instances, kind="KIND_CPU",
        queue_delay_us=None, parameters={**params, "role": "pre"}))
    net = config_pbtxt(
        f"{name}_net", [Tensor(net_in.name, images.dtype, images.dims)], [Tensor(net_out.name, logits.dtype, logits.dims)],
        max_batch, backend=None, platform="onnxruntime_onnx", instances=instances, kind=kind,
        queue_delay_us=queue_delay_us, parameters={"unet_deploy": params["unet_deploy"]})
    _write_model(out_repo / f"{name}_net", net, model_py=False)
    shutil.copyfile(onnx_path, out_repo / f"{name}_net" / "1" / "model.onnx")
    _write_model(out_repo / f"{name}_post", config_pbtxt(
        f"{name}_post", [logits, transform], list(OUTPUTS), max_batch, instances=instances, kind="KIND_CPU",
        queue_delay_us=None, parameters={**params, "role": "post"}))
    steps = [
        (f"{name}_pre", {"image": "image"}, {"images": "_images", "transform": "_transform"}),
        (f"{name}_net", {net_in.name: "_images"}, {net_out.name: "_logits"}),
        (f"{name}_post", {"logits": "_logits", "transform": "_transform"}, {"mask": "mask", "regions": "regions"}),
    ]
    _write_model(out_repo / name, config_pbtxt(
        name, [IMAGE], list(OUTPUTS), max_batch, backend=None, platform="ensemble", instances=None,
        queue_delay_us=None, parameters={"unet_deploy": params["unet_deploy"]}, extra=ensemble_scheduling(steps)),
        model_py=False)


def ensemble_scheduling(steps: Sequence[tuple[str, dict[str, str], dict[str, str]]]) -> str:
    """The ``ensemble_scheduling`` block: (model, {model input: ensemble tensor}, {model output: ensemble tensor})."""
    def maps(kind: str, mapping: dict[str, str]) -> str:
        return " ".join(f'{kind} {{ key: "{k}" value: "{v}" }}' for k, v in mapping.items())

    body = ",\n".join(f'  {{ model_name: "{m}" model_version: -1 {maps("input_map", i)} {maps("output_map", o)} }}'
                      for m, i, o in steps)
    return f"ensemble_scheduling {{ step [\n{body}\n] }}\n"


def read_parameters(config: str | Path) -> dict[str, str]:
    """The ``parameters`` of a config.pbtxt written here (key -> string value), ModelMeta JSON included."""
    import re

    text = Path(config).read_text() if isinstance(config, Path) else config
    found = {}
    for key, value in re.findall(r'parameters \{ key: ("(?:[^"\\]|\\.)*") value: \{ string_value: ("(?:[^"\\]|\\.)*") \} \}', text):
        found[json.loads(key)] = json.loads(value)
    return found
