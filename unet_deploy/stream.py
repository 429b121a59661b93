"""Segment a video stream (file, camera, URL) in a pipeline: decode, preprocess + inference, postprocess overlap.

::

    seg = Segmenter("model.onnx")
    with seg.stream("line3.mp4", every=3) as frames:     # or 0, "camera:0", "rtsp://..."
        for res in frames:                               # FrameResult, in frame order
            print(res.frame, res.timestamp_ms, res.class_areas())
    print(frames.end.message)                            # end of file, or where it broke

Four threads joined by bounded queues: the reader (``stream_source.Reader``: OpenCV decode),
then the Segmenter's own stages: ``preprocess`` (THE letterbox), ``infer_items`` (ONNX Runtime,
OpenVINO and torch release the GIL while they compute, so this thread is the backend's
asynchronous worker) and ``postprocess`` (argmax, un-letterbox, regions); OpenCV, Pillow's resize and
numpy release the GIL too, so the stages overlap. The caller's thread takes the results. Each stage is one thread reading a
FIFO queue, so results come out in frame order. A slow consumer fills the queues and then blocks
the reader, or, with ``drop_frames``, makes it drop its oldest frame: memory never grows.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import UnetDeployError
from .meta import check_int
from .runtime.result import Result, elapsed_ms
from .stream_source import End, Frame, Reader, SourceLike, open_capture, source_name

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Segmenter

STAGES = ("decode", "preprocess", "inference", "postprocess")
MAX_QUEUE_SIZE = 1024  # frames per queue: 4 queues of 1024 4K frames are already 100 GB


@dataclass
class FrameResult(Result):
    """A ``Result`` for one frame of a stream: ``frame`` (index in the source, counting skipped
    frames), ``timestamp_ms`` (position in the file, or since a live source opened) and ``time``
    (Unix seconds when it was decoded). ``timings`` adds ``decode`` and ``latency`` (decoded to done)."""

    frame: int = -1
    timestamp_ms: float = 0.0
    time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The frame's ``report.jsonl`` record: frame, timestamp_ms, time, then ``Result.to_dict()``."""
        return {"frame": self.frame, "timestamp_ms": self.timestamp_ms, "time": round(self.time, 6),
                **super().to_dict()}  # fmt: skip


@dataclass
class _Failure:
    """An exception raised in a stage thread, carried to the consumer to be re-raised there."""

    error: BaseException


class FrameStream:
    """The frames of ``source`` segmented by ``seg``; iterate it once for ``FrameResult``s in frame order.

    The source is opened here (one-line ``UnetDeployError`` if it cannot be), the threads start on
    iteration. ``every``: keep frames 0, N, 2N, ...; ``max_frames``: stop after that many kept
    frames; ``drop_frames``: a full queue drops its oldest frame instead of blocking the reader
    (for live cameras; ``dropped`` counts them); ``queue_size``: the bound of each queue;
    ``keep_image``: keep each frame in its result (needed for ``overlay()``). After iteration
    ``end`` says how the stream ended (``end.broken``: truncated file, camera lost) and
    ``stage_seconds`` how long each stage was busy. Closing (``close()``, ``with``, or leaving the
    loop and dropping the iterator) stops the threads and releases the capture.
    """

    def __init__(self, seg: "Segmenter", source: SourceLike, every: int = 1, max_frames: int | None = None,
                 drop_frames: bool = False, queue_size: int = 4, keep_image: bool = True) -> None:  # fmt: skip
        import cv2

        every = check_int(every, "every (1 keeps every frame)", 1)
        max_frames = None if max_frames is None else check_int(max_frames, "max_frames (None: to the end)", 1)
        queue_size = check_int(queue_size, "queue_size", 1, MAX_QUEUE_SIZE)
        self.seg, self.source, self.name = seg, source, source_name(source)
        self.every, self.max_frames, self.drop_frames = every, max_frames, bool(drop_frames)
        self.queue_size, self.keep_image = queue_size, keep_image
        self._capture = open_capture(source)
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps: float | None = float(fps) if fps and 0 < fps < 1000 else None
        self.frame_size = (int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                           int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))  # fmt: skip
        self.end: End | None = None
        self.stage_seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.wall_seconds = 0.0
        self.processed = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reader: Reader | None = None
        self._started = False

    @property
    def dropped(self) -> int:
        """Frames the reader dropped because the pipeline was full (``drop_frames`` only)."""
        return self._reader.dropped if self._reader is not None else 0

    def __enter__(self) -> "FrameStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads and release the source (idempotent)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        if not self._started:
            self._capture.release()

    def __iter__(self) -> Iterator[FrameResult]:
        if self._started:
            raise UnetDeployError(f"{self.name}: a FrameStream is iterated once; call seg.stream(...) again")
        self._started = True
        frames, prepared, inferred, done = (queue.Queue(self.queue_size) for _ in range(4))
        self._reader = Reader(self._capture, self.source, frames, self._stop, self.every, self.max_frames,
                              self.drop_frames)  # fmt: skip
        self._threads = [
            self._reader,
            _Stage("unet-stream-pre", self._preprocess, frames, prepared, self._stop),
            _Stage("unet-stream-infer", self._infer, prepared, inferred, self._stop),
            _Stage("unet-stream-post", self._postprocess, inferred, done, self._stop),
        ]
        t0 = time.perf_counter()
        for t in self._threads:
            t.start()
        try:
            while True:
                item = _get(done, self._stop)
                if isinstance(item, _Failure):
                    raise item.error
                if isinstance(item, End) or item is None:
                    if self._reader.error is not None:
                        raise self._reader.error
                    self.end = item
                    return
                self.processed += 1
                yield item
        finally:
            self.wall_seconds = time.perf_counter() - t0
            self.stage_seconds["decode"] = self._reader.busy_s
            self.close()

    def _preprocess(self, frame: Frame) -> tuple:
        """Stage 2: ``Segmenter.preprocess`` (THE letterbox; tiles and the device pipeline: the check only)."""
        try:
            return frame, self.seg.preprocess(frame.image, name=f"{self.name} frame {frame.index}", threads=1)
        except UnetDeployError as e:
            return frame, e

    def _infer(self, item: tuple) -> tuple:
        """Stage 3: ``Segmenter.infer_items`` on one frame (tiled: the whole tiled prediction)."""
        frame, prepared = item
        if isinstance(prepared, UnetDeployError):
            return frame, prepared, None
        return frame, prepared, self.seg.infer_items([prepared])[0]

    def _postprocess(self, item: tuple) -> FrameResult:
        """Stage 4: ``Segmenter.postprocess`` (argmax, back to the frame's size, regions); the FrameResult."""
        frame, prepared, out = item
        t0 = time.perf_counter()
        if isinstance(prepared, UnetDeployError):
            result = Result(self.name, classes=self.seg.classes, error=prepared.message)
            pre_ms = infer_ms = 0.0
        else:
            prepared.file = self.name
            result = self.seg.postprocess(prepared, out)
            pre_ms, infer_ms = prepared.timings["preprocess"], out.ms
        self.stage_seconds["preprocess"] += pre_ms / 1000.0
        self.stage_seconds["inference"] += infer_ms / 1000.0
        self.stage_seconds["postprocess"] += elapsed_ms(t0) / 1000.0
        timings = {"decode": round(frame.decode_ms, 3), **result.timings,
                   "latency": round((time.time() - frame.time) * 1000.0, 3)}  # fmt: skip
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(Result)}
        fields.update(timings=timings, image=frame.image if self.keep_image else None)
        return FrameResult(**fields, frame=frame.index, timestamp_ms=frame.timestamp_ms, time=frame.time)


class _Stage(threading.Thread):
    """One pipeline stage: ``fn`` on each item of ``inbox`` into ``outbox``; an ``End`` or a
    ``_Failure`` is passed on and ends the stage; an exception of ``fn`` becomes a ``_Failure``."""

    def __init__(self, name: str, fn: Callable[[Any], Any], inbox: queue.Queue, outbox: queue.Queue,
                 stop: threading.Event) -> None:  # fmt: skip
        super().__init__(name=name, daemon=True)
        self.fn, self.inbox, self.outbox, self.stop = fn, inbox, outbox, stop

    def run(self) -> None:
        while True:
            item = _get(self.inbox, self.stop)
            if item is None:
                return
            if not isinstance(item, (End, _Failure)):
                try:
                    item = self.fn(item)
                except BaseException as e:  # a bug in a stage: re-raised by the consumer
                    item = _Failure(e)
            if not _put(self.outbox, item, self.stop) or isinstance(item, (End, _Failure)):
                return


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    """The next item of ``q``, or None once ``stop`` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            continue
    return None


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` into ``q``, blocking while it is full; False if ``stop`` was set first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False



