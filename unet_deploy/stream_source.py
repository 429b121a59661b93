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
from .fileio import check_pixel_limit, probe_size, quote

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm")
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
SourceLike = Union[str, int, Path]
# OpenCV reads an index of 100 or more as a backend id plus a camera (CAP_V4L + 0 = 200), and a
# negative one crashes some backends: camera indices are 0..99.
MAX_CAMERA_INDEX = 99


def _camera_text(text: str) -> str | None:
    """The digits of ``"3"`` or ``"camera:3"``, else None. Bare digits that name an existing file or
    folder (a folder called ``2024``) are that path, not a camera."""
    if text.isascii() and text.isdigit():
        return None if Path(text).exists() else text
    if text.lower().startswith("camera:") and text[7:].isascii() and text[7:].isdigit():
        return text[7:]
    return None


def is_stream_source(source: SourceLike) -> bool:
    """True for a video file name, a camera index (``0``, ``camera:0``) or a stream URL."""
    if isinstance(source, int) and not isinstance(source, bool):
        return True
    text = str(source).strip()
    low = text.lower()
    return low.startswith(URL_SCHEMES) or _camera_text(text) is not None or Path(text).suffix.lower() in VIDEO_SUFFIXES


def parse_source(source: SourceLike) -> int | str:
    """``cv2.VideoCapture``'s argument: a camera index as an int (0..``MAX_CAMERA_INDEX``), else the
    file name or URL as text; an impossible camera index is the one-line error."""
    if isinstance(source, bool):
        raise UnetDeployError(f"source {source!r} is not a video file, camera index or URL")
    digits = str(source) if isinstance(source, int) else _camera_text(str(source).strip())
    if digits is None:
        return str(source).strip()
    try:
        index = int(digits)
    except ValueError:
        index = -1
    if not 0 <= index <= MAX_CAMERA_INDEX:
        raise UnetDeployError(
            f"camera index {quote(digits)} is not 0..{MAX_CAMERA_INDEX}; pass the camera's number (0 is the first), "
            "or a video file or URL"
        )
    return index


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
    if isinstance(target, str) and not is_live(source) and Path(target).is_dir():
        raise UnetDeployError(f"{name}: a folder, not a video; pass its images as SOURCE, or camera:N for a camera")
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
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    try:
        check_pixel_limit(size, f"{source_name(source)} (video frames)")  # the header's size, before a frame
    except UnetDeployError:
        capture.release()
        raise
    return capture


class PacketSizes:
    """Each frame's size read from its encoded packet, before OpenCV decodes it, for a file whose
    packets are images (MJPEG, PNG-in-AVI): a second capture in raw mode (``CAP_PROP_FORMAT=-1``).

    OpenCV scales every frame to the first frame's size and reports no change, so a video whose size
    changes mid-file would give sizes and boxes of a squeezed frame; and a huge frame would be
    decoded before the pixel limit could see it. For other codecs (H.264 ...) OpenCV offers no way
    to tell: ``open`` returns None.
    """

    def __init__(self, capture: Any, first: tuple[int, int]) -> None:
        self.capture, self.first, self.pending = capture, first, True

    @classmethod
    def open(cls, source: SourceLike) -> "PacketSizes | None":
        import cv2

        capture = cv2.VideoCapture(str(parse_source(source)))
        size = None
        try:
            if capture.isOpened() and capture.set(cv2.CAP_PROP_FORMAT, -1):
                size = _packet_size(capture)
        finally:
            if size is None:
                capture.release()
        return None if size is None else cls(capture, size)

    def next(self) -> tuple[int, int] | None:
        """The (width, height) of the next frame's packet, or None when there is none or it is no image."""
        if self.pending:  # the first packet was read by ``open``
            self.pending = False
            return self.first
        return _packet_size(self.capture)

    def release(self) -> None:
        self.capture.release()


def _packet_size(capture: Any) -> tuple[int, int] | None:
    """(width, height) from the header of the next raw packet when it is an image (JPEG, PNG), else None."""
    ok, packet = capture.read()
    return probe_size(packet.tobytes()) if ok and packet is not None and packet.size else None


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
        self.sizes: PacketSizes | None = None if self.live else PacketSizes.open(source)

    def _size_changed(self, index: int) -> End | None:
        """The ``End`` for a packet whose size differs from the first or exceeds the pixel limit (None: fine)."""
        size = self.sizes.next() if self.sizes is not None else None
        if size is None:
            return None
        name = quote(self.name_)
        try:
            check_pixel_limit(size, f"{self.name_} frame {index}")
        except UnetDeployError as e:
            return End(e.message, True, index)
        if size != self.sizes.first:
            (w0, h0), (w, h) = self.sizes.first, size
            return End(f"{name}: frame {index} is {w}x{h} but the video started at {w0}x{h0}; OpenCV would squeeze it "
                       "to the first size and give wrong sizes and boxes: split the video where its size changes",
                       True, index)  # fmt: skip
        return None

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
                changed = self._size_changed(index)
                if changed is not None:
                    end = changed
                    break
                wanted = index % self.every == 0
                ok, image = self.capture.read() if wanted else (self.capture.grab(), None)
                if not ok or (wanted and (image is None or image.size == 0)):
                    end = self._ended(index, announced)
                    break
                if wanted:  # a codec whose packets say no size: the decoded frame is checked
                    try:
                        check_pixel_limit((image.shape[1], image.shape[0]), f"{self.name_} frame {index}")
                    except UnetDeployError as e:
                        end = End(e.message, True, index)
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
            if self.sizes is not None:
                self.sizes.release()
            self._put(end, always=True)

    def _ended(self, index: int, announced: int | None) -> End:
        name = quote(self.name_)
        if self.live:
            return End(f"{name}: no frame after {index} read (camera unplugged or stream lost); "
                       "check the connection and run again", True, index)  # fmt: skip
        if announced is not None and index < announced:
            return End(f"{name}: stream broke at frame {index} of the {announced} the file announces (truncated "
                       "or corrupt file)", True, index)  # fmt: skip
        if index == 0:
            return End(f"{name}: no frame in this video (empty, or a codec OpenCV's FFmpeg cannot decode)", True, 0)
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
