"""``Segmenter``: one exported model in, per-image masks and regions at the original size out.

Every backend gets the same pixels (``preprocess``: THE letterbox) and its logits go through
the same ``postprocess`` (argmax or sigmoid threshold, exact un-letterbox, regions), so the
answer depends on the model file only, not on the way it is run.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from .. import cpu, formats
from ..errors import UnetDeployError
from ..fileio import read_image
from ..formats import sidecar_path
from ..meta import TRAINED_LETTERBOX, ModelMeta, check_int, check_size, check_tiling, deployed, letterbox_note, max_batch
from ..postprocess import check_finite
from ..preprocess import check_image, letterbox_geometry, preprocess
from ..tiling import tiled_prediction
from .base import Backend, backend_format, file_meta, load_backend
from .result import ARRAY_NAME, ImageLike, Inferred, Prepared, Result, elapsed_ms, finish

__all__ = ["ARRAY_NAME", "ImageLike", "Inferred", "PIPELINES", "Prepared", "Result", "Segmenter"]

if TYPE_CHECKING:  # pragma: no cover
    from ..stream import FrameStream

log = logging.getLogger("unet_deploy.runtime")
PIPELINES = ("auto", "host", "device")
MAX_ELEMENTS = 2**31 - 1  # the most elements of one activation in one inference call (CUDA's 32-bit index math)

class Segmenter:
    """Run a segmentation model file on images: ``Segmenter("model.onnx")("part.png") -> Result``.

    The pipeline is three public stages, the same for every caller (streams, serving, the
    benchmark): ``preprocess`` (read, THE letterbox), ``infer``/``infer_items`` (the network, one
    call per input shape) and ``postprocess`` (argmax, the exact mapping back, regions). One
    Segmenter may be called from several threads at once.

    Args:
        model: any file of the format registry (``unet_deploy.formats``): ``.onnx`` (ONNX Runtime),
            ``.torchscript.pt``, ``.pt2`` (AOTInductor), OpenVINO ``.xml`` or a checkpoint ``.pt``.
            ModelMeta is read from the file, else from its ``<stem>.json`` sidecar.
        device: ``"auto"`` (CUDA when the backend can use it, else the CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``; ``seg.device`` says what was chosen and ``describe()`` why.
        backend: force a backend by name (``runtime.base.backend_names()``); ``"auto"``: by the file.
        classes: class names, overriding the metadata or standing in where there is none.
        input_size: network input (H, W) where the file has no metadata (or to override it).
        min_area: regions of fewer original pixels are dropped.
        min_score: regions whose score (``Region.score``, the mean probability of their class) is lower are
            dropped.
        providers: ONNX Runtime execution providers, as ``onnxruntime.InferenceSession`` takes them.
        threads: intra-op CPU threads. ONNX Runtime and OpenVINO apply them to this model alone; the
            torch backends call ``torch.set_num_threads``, which is process-wide (torch has one pool),
            and only when it is given. The host resize splits a large image in as many bands
            (``None``: the backend's count, ``Backend.compute_threads``; 1: no band threads).
        precision: run another precision where the backend can (``"bf16"``/``"fp16"`` for a checkpoint
            or an fp32 TorchScript file, ``"bf16"`` for an OpenVINO IR); ``None``: as exported.
            On CUDA, "fp32" convolutions follow ``torch.backends.cudnn.allow_tf32`` (TF32 by
            default), and ``describe()`` says so.
        tiling: ``None`` follows the model's ``meta.tiling``; ``{"scale": s, "overlap": o}`` tiles every
            image at native resolution (``unet_deploy.tiling``); ``False`` letterboxes the whole image.
        tile_batch: tiles per inference call when tiling; like ``batch_size``, capped so that one
            network call fits the memory budget (``meta.max_batch``, ``UNET_DEPLOY_MAX_MEMORY_MB``). A
            model whose one input cannot fit is refused here.
        letterbox: the pad mode (``"top-left"``, ``"center"``, ``"rect"``: pad only to the next multiple
            of 16). ``None``: the file's; a checkpoint runs with the letterbox its exports write
            (``meta.deployed``: ``rect`` for a model trained top-left), so that a checkpoint and its
            exports give the same masks; ``seg.letterbox`` names it and the trained one.
        pipeline: ``"host"`` (numpy/OpenCV/Pillow around the backend), ``"device"`` (torch backends:
            letterbox, network, argmax and mapping back on the model's device, only the mask and the
            small logits copied back, CUDA graphs on CUDA) or ``"auto"`` (device on CUDA, else host).
        trust_code: load a file that runs code when loaded (an AOTInductor ``.pt2`` carries a shared
            library) only when True or ``UNET_DEPLOY_TRUST_CODE=1``; else a one-line refusal. ONNX
            and OpenVINO IR are data; TorchScript is in part code (README "Trust").
    """

    def __init__(
        self,
        model: str | Path,
        device: str = "auto",
        backend: str = "auto",
        classes: Sequence[str] | None = None,
        input_size: int | Sequence[int] | None = None,
        min_area: int = 0,
        providers: Sequence[Any] | None = None,
        threads: int | None = None,
        precision: str | None = None,
        tiling: dict[str, float] | bool | None = None,
        tile_batch: int = 8,
        letterbox: str | None = None,
        pipeline: str = "auto",
        trust_code: bool = False,
        min_score: float = 0.0,
    ) -> None:
        self.model_path = Path(model)
        if not self.model_path.is_file():
            _refuse_path(self.model_path)
        classes = [str(c) for c in classes] if classes else None
        fmt = backend_format(self.model_path, backend)
        formats.check_trust(fmt, self.model_path, trust_code)  # a .pt2 runs native code: only on opt-in
        cls = load_backend(fmt)
        self._backend: Backend = cls(self.model_path, device=device, threads=threads, precision=precision,
                                     providers=providers, classes=classes)  # fmt: skip
        self.meta = _resolve_meta(self._backend, classes, input_size)
        if letterbox is not None or self._backend.source_model:  # a checkpoint runs as its exports do
            self.meta = deployed(self.meta, letterbox)
        if self._backend.input_hw and self.meta.pad == "rect":  # rect makes non-square inputs: a fixed net fails
            raise UnetDeployError(
                f"{self.model_path}: the network's input is fixed at {self._backend.input_hw[0]}x"
                f"{self._backend.input_hw[1]} but its letterbox is rect (any multiple of 16); run it with "
                "--letterbox top-left (letterbox='top-left') or re-export it with --dynamic"
            )
        if tiling is True:
            raise UnetDeployError("tiling=True says nothing about the scale; pass {'scale': 1.0, 'overlap': 0.25}")
        self.tiling = None if tiling is False else check_tiling(self.meta.tiling if tiling is None else tiling)
        # inputs per network call that fit memory, from the declared size before anything is allocated
        self.max_batch = max_batch(self.meta, source=str(self.model_path))
        self.tile_batch = min(check_int(tile_batch, "tile_batch", 1), self.max_batch)
        self.min_area = int(min_area)
        if not 0.0 <= float(min_score) <= 1.0:
            raise UnetDeployError(f"min_score {min_score} is not a probability; pass a value in [0, 1]")
        self.min_score = float(min_score)
        mismatch = cpu.int8_mismatch(self.meta.extra.get("int8"), self.model_path.name)
        if mismatch:
            warnings.warn(mismatch, RuntimeWarning, stacklevel=2)
        self._device_pipeline = self._choose_pipeline(pipeline)
        log.info("%s", self.describe())

    @property
    def device(self) -> str:
        """``"cuda"`` or ``"cpu"``: where inference really runs."""
        return self._backend.device

    @property
    def backend(self) -> str:
        """The backend's name: ``onnxruntime``, ``torchscript``, ``aoti``, ``openvino``, ``checkpoint`` ..."""
        return self._backend.name

    @property
    def precision(self) -> str:
        """What computes: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"int8"``."""
        return self._backend.precision

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def pipeline(self) -> str:
        """``"device"`` (letterbox to mask on the backend's torch device) or ``"host"`` (numpy/OpenCV/Pillow)."""
        return "host" if self._device_pipeline is None else "device"

    @property
    def letterbox(self) -> str:
        """The letterbox in use, and the one the model was trained with where they differ
        (``"rect (trained with top-left)"``); ``"tiles"`` when tiling."""
        if self.tiling is not None:
            return "tiles"
        trained = self.meta.extra.get(TRAINED_LETTERBOX, self.meta.pad)
        return self.meta.pad if trained == self.meta.pad else f"{self.meta.pad} (trained with {trained})"

    def describe(self) -> str:
        """One line: model, backend, device and why, and the letterbox when it is not the trained one."""
        note = f" ({self._backend.device_note})" if self._backend.device_note else ""
        where = ", letterbox to mask on the device" if self._device_pipeline is not None else ""
        boxed = f"; {letterbox_note(self.meta)}" if self.tiling is None and letterbox_note(self.meta) else ""
        return f"{self.model_path.name}: {self.backend} on {self.device}{note}{where}{boxed}"

    def _choose_pipeline(self, pipeline: str) -> Any:
        """The backend's device pipeline when asked for (``auto``: on CUDA, letterboxed), else None."""
        if pipeline not in PIPELINES:
            raise UnetDeployError(f"pipeline {pipeline!r} is not one of {', '.join(PIPELINES)}")
        make = getattr(self._backend, "device_pipeline", None)
        if pipeline == "device" and make is None:
            raise UnetDeployError(f"{self.model_path}: pipeline='device' needs a torch backend, not {self.backend}; "
                                  "leave pipeline out")  # fmt: skip
        if pipeline == "host" or make is None or self.tiling is not None:
            return None
        if pipeline == "auto" and self.device != "cuda":
            return None
        return make(self.meta)

    def __repr__(self) -> str:
        return f"Segmenter({str(self.model_path)!r}, backend={self.backend!r}, device={self.device!r})"

    def __call__(self, image: ImageLike) -> Result:
        """Segment one image (a path, or an array as OpenCV reads it); unreadable input raises.

        The same as ``postprocess(item, infer_items([item])[0])`` with ``item = preprocess(image)``.
        """
        (result,) = self._predict_chunk([image])
        if result.error is not None:
            raise UnetDeployError(result.error)
        return result

    def predict_batch(self, images: Iterable[ImageLike], batch_size: int = 8) -> list[Result]:
        """Segment many images, ``batch_size`` per inference call; list in, list out (same order).

        An image that cannot be read or prepared gives a ``Result`` with ``error`` set; the
        others are processed as usual.
        """
        return list(self.predict_iter(images, batch_size))

    def predict_iter(self, images: Iterable[ImageLike], batch_size: int = 8) -> Iterator[Result]:
        """Like ``predict_batch`` but yields results as each batch completes (for progress bars
        and for folders too large to keep in memory)."""
        batch_size = min(check_int(batch_size, "batch size", 1), self.max_batch)  # capped by memory
        chunk: list[ImageLike] = []
        for item in images:
            chunk.append(item)
            if len(chunk) == batch_size:
                yield from self._predict_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._predict_chunk(chunk)

    def stream(self, source: str | int | Path, every: int = 1, max_frames: int | None = None,
               drop_frames: bool = False, queue_size: int = 4) -> "FrameStream":  # fmt: skip
        """Segment a video file, camera or URL in a pipeline (decode, the three stages, on their own threads).

        Args:
            source: a video file, a camera index (``0``, ``"camera:0"``) or an ``rtsp://``/``http://`` URL.
            every: process frames 0, every, 2*every, ...
            max_frames: stop after this many processed frames (None: to the end).
            drop_frames: for live sources: when the consumer is slow, drop the oldest waiting frame
                (counted in ``dropped``) instead of blocking the reader.
            queue_size: frames waiting between two stages (memory is bounded by it).

        Returns:
            A ``unet_deploy.stream.FrameStream``: iterate it (best in a ``with`` block) for
            ``FrameResult``s in frame order; ``end`` says how the source ended. A source that cannot
            be opened raises here, in one line.
        """
        from ..stream import FrameStream

        return FrameStream(self, source, every=every, max_frames=max_frames, drop_frames=drop_frames,
                           queue_size=queue_size)  # fmt: skip

    # -- the pipeline, stage by stage ----------------------------------------------------------
    def preprocess(self, image: ImageLike, name: str | None = None, threads: int | None = None) -> Prepared:
        """Stage 1: read ``image`` (a path, or an array as OpenCV reads it) and letterbox it.

        ``threads`` for the resize (default: the backend's, ``Backend.compute_threads``); a stream,
        whose stages overlap, passes 1 so its resize does not compete with inference.

        Returns a ``Prepared`` with the float32 network input (``x``) and its transform; with
        tiles or the device pipeline only the image is checked here (they prepare pixels later).
        Raises ``UnetDeployError`` in one line, naming ``name`` (default: the path, or
        ``<array>``), for an image that cannot be read or used.
        """
        t0 = time.perf_counter()
        file = name or (ARRAY_NAME if isinstance(image, np.ndarray) else str(image))
        try:
            pixels = image if isinstance(image, np.ndarray) else read_image(image)
            if self.tiling is not None or self._on_device(pixels):
                item = Prepared(file, check_image(pixels))
            else:
                x, transform = preprocess(pixels, self.meta, threads or self._backend.compute_threads())
                item = Prepared(file, pixels, x, transform)
        except UnetDeployError as e:
            raise UnetDeployError(_one_line(e.message, file)) from None
        item.timings["preprocess"] = elapsed_ms(t0)
        return item

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Stage 2: raw logits ``(N, K, H, W)`` for a preprocessed batch ``(N, C, H, W)`` (re-batched to a
        fixed batch size where the model file has one)."""
        fixed = self._backend.fixed_batch
        if fixed is None or batch.shape[0] == fixed:
            logits = self._backend.forward(batch)
        else:
            parts = []
            for start in range(0, batch.shape[0], fixed):
                part = batch[start : start + fixed]
                n = part.shape[0]
                if n < fixed:
                    part = np.concatenate([part, np.zeros((fixed - n, *part.shape[1:]), part.dtype)])
                parts.append(self._backend.forward(part)[:n])
            logits = np.concatenate(parts)
        if logits.ndim != 4 or logits.shape[1] != self.meta.num_outputs:
            self.meta.check_num_outputs(logits.shape[1] if logits.ndim == 4 else -1, str(self.model_path))
        check_finite(logits, str(self.model_path))
        return logits

    def infer_items(self, items: Sequence[Prepared]) -> list[Inferred]:
        """Stage 2 for prepared images: one ``infer`` call per network shape (the device pipeline:
        one call per frame shape; tiles: one tiled prediction per image)."""
        out: list[Inferred | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            key = ("tile",) if self.tiling is not None else ("frame", *item.image.shape) if item.x is None \
                else ("net", *item.x.shape)  # fmt: skip
            groups.setdefault(key, []).append(i)
        for key, group in groups.items():
            if key[0] != "tile":
                for members in self._chunks(group, items[group[0]]):
                    self._infer_group(key[0], [items[i] for i in members], members, out)
                continue
            for i in group:
                t0 = time.perf_counter()
                mask, confidence, back = tiled_prediction(
                    items[i].image, self.meta, self.infer, self.tiling["scale"], self.tiling["overlap"],
                    tile_batch=self.tile_batch)  # fmt: skip
                out[i] = Inferred(mask=mask, ms=elapsed_ms(t0), confidence=confidence, confidence_transform=back)
        return out  # type: ignore[return-value]

    def _chunks(self, group: list[int], first: Prepared) -> list[list[int]]:
        """``group`` split so that no activation of one call passes 2**31 elements: CUDA kernels (the
        reflect pad's) refuse larger tensors, and 256 square 256x256 inputs of the seed-size UNet are one
        (its widest activation is 2 x base_channels channels at full input size)."""
        hw = first.x.shape[1:] if first.x is not None else \
            letterbox_geometry(first.image.shape[:2], self.meta.input_size, self.meta.pad).dst_hw  # fmt: skip
        widest = 2 * int(self.meta.arch.get("base_channels", 64)) * (int(hw[0]) + 2) * (int(hw[1]) + 2)  # padded
        size = max(1, MAX_ELEMENTS // widest)
        return [group[i : i + size] for i in range(0, len(group), size)]

    def _infer_group(self, kind: str, items: list[Prepared], members: list[int], out: list) -> None:
        """One inference call for prepared images of one shape; their ``Inferred`` into ``out``."""
        t0 = time.perf_counter()
        if kind == "frame":
            found = self._device_pipeline([item.image for item in items])
            for f in found:
                check_finite(f.logits, str(self.model_path))
        else:
            logits = self.infer(np.stack([item.x for item in items]))
        ms = elapsed_ms(t0) / len(items)
        for n, i in enumerate(members):
            if kind == "frame":
                items[n].transform = found[n].transform
                out[i] = Inferred(found[n].logits, found[n].mask, found[n].class_map, ms)
            else:
                out[i] = Inferred(logits[n], ms=ms)

    def postprocess(self, item: Prepared, out: Inferred) -> Result:
        """Stage 3: the ``Result`` of one prepared image from its inference output (``result.finish``:
        argmax and the exact mapping back unless the mask is there, regions of at least ``min_area`` and
        ``min_score``)."""
        return finish(item, out, self.meta.classes, self.min_area, self.min_score)

    def _on_device(self, image: np.ndarray) -> bool:
        return self._device_pipeline is not None and self._device_pipeline.supports(check_image(image))

    def _predict_chunk(self, images: Sequence[ImageLike]) -> list[Result]:
        """The three stages on a chunk: an image that cannot be prepared gets its error, the rest go on."""
        results: list[Result | None] = [None] * len(images)
        ready: list[tuple[int, Prepared]] = []
        for i, image in enumerate(images):
            try:
                ready.append((i, self.preprocess(image)))
            except UnetDeployError as e:
                file = ARRAY_NAME if isinstance(image, np.ndarray) else str(image)
                results[i] = Result(file, classes=self.classes, error=e.message)
        try:
            outs: list[Inferred | UnetDeployError] = self.infer_items([item for _, item in ready]) if ready else []
        except UnetDeployError:  # NaN logits, a file the backend cannot run, a tiled image too large: whose?
            outs = [self._infer_one(item) for _, item in ready]
        for (i, item), out in zip(ready, outs):
            if isinstance(out, UnetDeployError):
                results[i] = Result(item.file, classes=self.classes, error=_one_line(out.message, item.file))
            else:
                results[i] = self.postprocess(item, out)
        return results  # type: ignore[return-value]

    def _infer_one(self, item: Prepared) -> Inferred | UnetDeployError:
        """One image's inference, or the error that makes it fail alone (reported, the chunk goes on)."""
        try:
            return self.infer_items([item])[0]
        except UnetDeployError as e:
            return e


def _refuse_path(path: Path) -> None:
    """The one-line error for a model path that is not a file (a Triton repository folder says what it is)."""
    files = [x for f in formats.FORMATS.values() if not f.folder for x in f.suffixes]
    if path.is_dir():
        fmt = next((f for f in formats.FORMATS.values() if f.folder and path.name.endswith(f.suffixes)), None)
        if fmt is not None:
            raise UnetDeployError(f"{path}: a {fmt.title} repository folder, not a model file; serve it with "
                                  f"`unet-deploy serve`, or pass the model file inside it")  # fmt: skip
    raise UnetDeployError(f"{path}: model file not found; pass a model file ({', '.join(files)})")


def _resolve_meta(backend: Backend, classes: list[str] | None, input_size: Any) -> ModelMeta:
    """ModelMeta from the file, else the sidecar, else ``classes``/``input_size``; overrides applied."""
    path = backend.path
    meta = file_meta(backend)
    if meta is None:
        if not classes:
            raise UnetDeployError(
                f"{path}: no unet-deploy metadata inside and no {sidecar_path(path).name} beside it; "
                "pass the class names (classes=[...] / --classes bg,a,b) and input_size= / --img-size"
            )
        size = input_size or backend.input_hw
        if size is None:
            raise UnetDeployError(f"{path}: no metadata and no fixed input size in the model; pass input_size= / --img-size")
        head = "sigmoid" if backend.num_outputs == 1 and len(classes) == 2 else "softmax"
        meta = ModelMeta(classes=classes, input_size=size, head=head)
    else:
        meta = copy.deepcopy(meta)
        if classes:
            if len(classes) != meta.num_classes:
                raise UnetDeployError(
                    f"{path}: the model has {meta.num_classes} classes {meta.classes} but {len(classes)} "
                    f"names were given ({','.join(classes)}); pass {meta.num_classes} names"
                )
            meta = dataclasses.replace(meta, classes=list(classes))  # validated like any ModelMeta
        if input_size:
            meta.input_size = check_size(input_size)
    if backend.input_hw and tuple(meta.input_size) != tuple(backend.input_hw):
        h, w = backend.input_hw
        raise UnetDeployError(
            f"{path}: the model's input is fixed at {h}x{w} but {meta.input_size[0]}x{meta.input_size[1]} "
            f"was asked for; use --img-size {h} {w} or re-export with --dynamic"
        )
    if backend.num_outputs is not None:
        meta.check_num_outputs(backend.num_outputs, str(path))
    if backend.in_channels is not None and backend.in_channels != meta.in_channels:
        raise UnetDeployError(
            f"{path}: the network takes {backend.in_channels} input channels but the metadata says {meta.color} "
            f"({meta.in_channels}); the metadata belongs to another model: fix the sidecar or re-export"
        )
    return meta


def _one_line(message: str, file: str) -> str:
    line = " ".join(str(message).split())
    return line if file in line else f"{file}: {line}"
