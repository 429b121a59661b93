"""Video sources for streams: which SOURCE texts are streams, opening them with OpenCV, and the reader thread.

A stream source is a video file (``.mp4``, ``.avi``, ``.mkv``, ...), a camera index (``0`` or
``camera:0``) or an ``rtsp://`` / ``http(s)://`` URL, all read through ``cv2.VideoCapture``.
``Reader`` decodes frames on its own thread into a bounded queue (``unet_deploy.stream`` runs
the rest of the pipeline); it keeps every ``every``-th frame, stops after ``max_frames``, and
ends with an ``End`` that says whether the stream finished or broke.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from .errors import UnetDeployError
from .fileio import quote

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm")
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
SourceLike = Union[str, int, Path]


def is_stream_source(source: SourceLike) -> bool:
    """True for a video file name, a camera index (``0``, ``camera:0``) or a stream URL."""
    if isinstance(source, int):
        return True
    text = str(source).strip()
    low = text.lower()
    return (low.startswith(URL_SCHEMES) or text.isdigit() or (low.startswith("camera:") and text[7:].isdigit())
            or Path(text).suffix.lower() in VIDEO_SUFFIXES)  # fmt: skip


def parse_source(source: SourceLike) -> int | str:
    """``cv2.VideoCapture``'s argument: a camera index as an int, else the file name or URL as text."""
    if isinstance(source, int):
        return source
    text = str(source).strip()
    if text.isdigit():
        return int(text)
    if text.lower().startswith("camera:") and text[7:].isdigit():
        return int(text[7:])
    return text


def is_live(source: SourceLike) -> bool:
    """A camera or URL (no end of file, no frame count), as opposed to a video file."""
    target = parse_source(source)
    return isinstance(target, int) or str(target).lower().startswith(URL_SCHEMES)


def source_name(source: SourceLike) -> str:
    """How messages and reports name the source: ``camera:0``, the URL or the file name."""
    target = parse_source(source)
    return f"camera:{target}" if isinstance(target, int) else str(target)


def open_capture(source: SourceLike) -> Any:
    """An opened ``cv2.VideoCapture`` on ``source``; one-line ``UnetDeployError`` when it cannot be opened."""
    import cv2

    target = parse_source(source)
    name = quote(source_name(source))
    if isinstance(target, str) and not is_live(source) and not Path(target).is_file():
        raise UnetDeployError(f"{name}: no such video file; check the path (or pass a camera index 0, camera:0, or a URL)")
    log = cv2.utils.logging
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_ERROR)  # OpenCV's own warnings on a failed open: the error below says it
    try:
        capture = cv2.VideoCapture(target)
    finally:
        log.setLogLevel(level)
    if not capture.isOpened():
        capture.release()
        what = ("camera: is it plugged in and free, and is the index right?" if isinstance(target, int)
                else "URL: is the server reachable and the address right?" if is_live(source)
                else "video file: is it a video OpenCV's FFmpeg can decode (.mp4, .avi, .mkv)?")  # fmt: skip
        raise UnetDeployError(f"{name}: cannot open this {what}")
    return capture


@dataclass
class Frame:
    """One decoded frame: its index in the source (0-based, counting skipped frames), its
    timestamp (ms: the file's position, or since the stream opened for a live source), the
    wall-clock ``time`` it was read (Unix seconds), and the BGR image."""

    index: int
    timestamp_ms: float
    time: float
    image: np.ndarray
    decode_ms: float


@dataclass
class End:
    """How the stream ended: ``broken`` False at the end of a file or after ``max_frames``, True
    when a file ends before its announced frame count or a live source stops; ``message`` is one line."""

    message: str
    broken: bool
    frames_read: int


class Reader(threading.Thread):
    """Decode ``capture`` into ``out`` (a bounded ``queue.Queue``) on a daemon thread.

    Only frames with ``index % every == 0`` are decoded (the others are only grabbed), at most
    ``max_frames`` of them. A full queue blocks the reader, or with ``drop`` loses its oldest
    frame (``self.dropped`` counts them) so that a live camera is never behind. The last item
    put is an ``End``. ``stop`` (an Event) ends it early; the capture is released on exit.
    """

    def __init__(self, capture: Any, source: SourceLike, out: queue.Queue, stop: threading.Event, every: int = 1,
                 max_frames: int | None = None, drop: bool = False) -> None:  # fmt: skip
        super().__init__(name="unet-stream-reader", daemon=True)
        self.capture, self.name_, self.live = capture, source_name(source), is_live(source)
        self.out, self.stop, self.every, self.max_frames, self.drop = out, stop, every, max_frames, drop
        self.dropped = 0
        self.busy_s = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        import cv2

        end = End(f"{quote(self.name_)}: stopped", False, 0)
        try:
            count = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
            announced = int(count) if not self.live and count and count > 0 else None
            start, index, kept = time.perf_counter(), 0, 0
            while not self.stop.is_set():
                if self.max_frames is not None and kept >= self.max_frames:
                    end = End(f"{quote(self.name_)}: {kept} frame(s) processed (--max-frames)", False, index)
                    break
                t0 = time.perf_counter()
                wanted = index % self.every == 0
                ok, image = self.capture.read() if wanted else (self.capture.grab(), None)
                if not ok or (wanted and (image is None or image.size == 0)):
                    end = self._ended(index, announced)
                    break
                decode_ms = (time.perf_counter() - t0) * 1000.0
                self.busy_s += decode_ms / 1000.0
                if wanted:
                    position = self.capture.get(cv2.CAP_PROP_POS_MSEC)
                    stamp = position if not self.live else (t0 - start) * 1000.0
                    self._put(Frame(index, round(float(stamp), 3), time.time(), image, decode_ms))
                    kept += 1
                index += 1
        except BaseException as e:  # a bug: the consumer re-raises it
            self.error = e
        finally:
            self.capture.release()
            self._put(end, always=True)

    def _ended(self, index: int, announced: int | None) -> End:
        name = quote(self.name_)
        if self.live:
            return End(f"{name}: no frame after {index} read (camera unplugged or stream lost); "
                       "check the connection and run again", True, index)  # fmt: skip
        if announced is not None and index < announced:
            return End(f"{name}: stream broke at frame {index} of the {announced} the file announces (truncated "
                       "or corrupt file)", True, index)  # fmt: skip
        return End(f"{name}: end of file after {index} frame(s)", False, index)

    def _put(self, item: Frame | End, always: bool = False) -> None:
        """Put ``item``; block (checking ``stop``) or drop the oldest frame when the queue is full."""
        while always or not self.stop.is_set():
            make_room = (self.drop and isinstance(item, Frame)) or (always and self.stop.is_set())
            try:
                if make_room:
                    self.out.put_nowait(item)
                else:
                    self.out.put(item, timeout=0.05)
                return
            except queue.Full:
                if make_room:
                    try:
                        self.dropped += isinstance(self.out.get_nowait(), Frame)
                    except queue.Empty:
                        pass
