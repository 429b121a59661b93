"""Streams: `unet-predict` and `Segmenter.stream` on a video made with cv2.VideoWriter (MJPG .avi).

Each processed frame's mask must equal the Segmenter's on the same decoded frame; ``--every``
picks frames 0, N, 2N; report.jsonl keeps whole lines through a kill -9; a source that cannot
be opened and a truncated file each end in one line with exit 1; a slow consumer blocks or
drops frames, never queues them without bound.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.models import color_image
from tests.red import red_model
from unet_deploy import Segmenter
from unet_deploy.cli.predict import command
from unet_deploy.errors import UnetDeployError
from unet_deploy.stream_source import is_stream_source, parse_source, source_name

SIZE = (160, 96)  # W, H


def make_video(path: Path, count: int, size: tuple[int, int] = SIZE) -> Path:
    """An MJPG .avi of ``count`` colour-patch frames (each different: four classes, large areas)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert writer.isOpened()
    for i in range(count):
        writer.write(color_image(i, size))
    writer.release()
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` as cv2.VideoCapture decodes it (the reference pixels)."""
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "line.avi", 10)


@pytest.fixture(scope="module")
def red(tmp_path_factory) -> Path:
    return red_model(tmp_path_factory.mktemp("red") / "red.onnx")


def _run(*args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stream_masks_equal_the_segmenter_on_each_decoded_frame(exported_color, video):
    seg = Segmenter(exported_color["onnx"])
    frames = decoded_frames(video)
    with seg.stream(video) as stream:
        results = list(stream)
    assert [r.frame for r in results] == list(range(len(frames))) == list(range(10))
    for r, frame in zip(results, frames):
        assert r.ok and r.size == frame.shape[:2]
        assert len(np.unique(r.mask)) >= 3  # the colour model finds several classes: not a vacuous match
        assert np.array_equal(r.mask, seg(frame).mask)
        assert {"decode", "preprocess", "inference", "postprocess", "latency"} <= set(r.timings)
    assert [r.timestamp_ms for r in results[:3]] == [0.0, 100.0, 200.0]  # 10 frames/s
    assert not stream.end.broken and "end of file after 10" in stream.end.message
    assert not any(r.mask is results[0].mask for r in results[1:])


def test_a_tiled_segmenter_streams_its_tiled_masks(exported_color, video):
    seg = Segmenter(exported_color["onnx"], tiling={"scale": 1.0, "overlap": 0.25})
    frames = decoded_frames(video)
    with seg.stream(video, max_frames=3) as stream:
        results = list(stream)
    assert [r.frame for r in results] == [0, 1, 2] and "--max-frames" in stream.end.message
    for r in results:
        assert np.array_equal(r.mask, seg(frames[r.frame]).mask)
        assert not np.array_equal(r.mask, Segmenter(exported_color["onnx"], tiling=False)(frames[r.frame]).mask)


def test_cli_every_3_writes_one_json_line_per_processed_frame(exported_color, video, tmp_path):
    out = tmp_path / "out"
    result = _run(exported_color["onnx"], video, "--out", out, "--every", 3, "--save-video", out / "overlay.avi")
    assert result.exit_code == 0, result.output
    assert "end of file after 10 frame(s); 4 frame(s)" in result.stdout
    records = _lines(out / "report.jsonl")
    assert [r["frame"] for r in records] == [0, 3, 6, 9]
    seg = Segmenter(exported_color["onnx"])
    frames = decoded_frames(video)
    for r in records:
        expected = seg(frames[r["frame"]])
        assert r["size"] == [96, 160] and r["file"] == str(video)
        assert r["regions"] == [g.to_dict() for g in expected.regions] and r["regions"]
        assert r["timestamp_ms"] == pytest.approx(100.0 * r["frame"])
    written = decoded_frames(out / "overlay.avi")
    assert len(written) == 4 and written[0].shape == (96, 160, 3)
    assert np.abs(written[1].astype(int) - frames[3]).mean() > 5  # an overlay, not the plain frame

    result = _run(exported_color["onnx"], video, "--out", tmp_path / "o2", "--every", 2, "--max-frames", 2, "--json")
    assert result.exit_code == 0, result.output
    assert [r["frame"] for r in _lines(tmp_path / "o2" / "report.jsonl")] == [0, 2]
    assert [json.loads(line)["frame"] for line in result.stdout.splitlines()] == [0, 2]


def test_a_source_that_cannot_be_opened_is_one_line_and_exit_1(red, tmp_path):
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(b"not a video" * 50)
    for source, message in [(tmp_path / "missing.mp4", "no such video file"), (garbage, "cannot open this video"),
                            ("camera:97", "cannot open this camera"),
                            ("rtsp://127.0.0.1:9/none", "cannot open this URL")]:  # fmt: skip
        result = _run(red, source, "--out", tmp_path / "o")
        assert result.exit_code == 1, (source, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.output and not (tmp_path / "o" / "report.jsonl").exists()


def test_a_truncated_video_keeps_its_frames_and_ends_in_one_line_exit_1(red, video, tmp_path):
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    readable = len(decoded_frames(cut))
    assert 0 < readable < 10
    result = _run(red, cut, "--out", tmp_path / "o")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "stream broke at frame" in errors[0] and "truncated or corrupt" in errors[0]
    assert [r["frame"] for r in _lines(tmp_path / "o" / "report.jsonl")] == list(range(readable))
    exe = Path(sys.executable).with_name("unet-predict")  # the real stderr: FFmpeg's own messages are silenced too
    proc = subprocess.run([str(exe), str(red), str(cut), "--out", str(tmp_path / "o2")], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [errors[0].replace("/o/", "/o2/")], proc.stderr


def test_video_and_image_options_do_not_mix(red, video, tmp_path):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), color_image(0))
    for args, message in [((video, image), "on its own"), ((image, "--every", 2), "--every applies to a video")]:
        result = _run(red, *args, "--out", tmp_path / "o")
        assert result.exit_code == 1 and message in result.stderr, result.output


def test_a_slow_consumer_blocks_or_drops_and_order_is_kept(red, tmp_path):
    video = make_video(tmp_path / "long.avi", 40, (64, 48))
    seg = Segmenter(red)
    with seg.stream(video, queue_size=1) as stream:  # blocking: every frame, in order, none dropped
        frames = [r.frame for r in stream if time.sleep(0.002) is None]
    assert frames == list(range(40)) and stream.dropped == 0
    with seg.stream(video, drop_frames=True, queue_size=1) as stream:
        results = iter(stream)
        frames = [next(results).frame]
        # The consumer stalls: 40 frames cannot fit in the queues, so the reader must drop some.
        # A generous deadline on the wait, not on speed: it ends as soon as the first drop happens.
        deadline = time.monotonic() + 120
        while stream.dropped == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        frames += [r.frame for r in results]
    assert stream.dropped > 0 and len(frames) + stream.dropped == 40  # each frame read is processed or dropped
    assert frames == sorted(set(frames)) and frames[-1] == 39  # drop-oldest: the newest frame always gets through
    assert not stream.end.broken


def test_leaving_the_loop_early_stops_the_threads(red, video):
    import threading

    seg = Segmenter(red)
    with seg.stream(video) as stream:
        for r in stream:
            break
    assert r.frame == 0
    deadline = time.monotonic() + 30  # close() joins them; the wait only guards a slow machine
    while [t for t in threading.enumerate() if t.name.startswith("unet-stream")] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name.startswith("unet-stream")]
    with pytest.raises(UnetDeployError, match="at least 1"):
        seg.stream(video, every=0)


def test_stream_source_texts():
    assert [is_stream_source(s) for s in ("0", "camera:1", "rtsp://h/x", "http://h/x.mjpg", "a.MP4", "b.mkv", 2)] == [True] * 7
    assert not any(is_stream_source(s) for s in ("a.png", "parts/", "*.jpg", "camera:x"))
    assert (parse_source("camera:3"), parse_source("1"), parse_source("a.avi")) == (3, 1, "a.avi")
    assert source_name(0) == "camera:0"


def test_kill_9_half_way_keeps_one_valid_line_per_frame(red, tmp_path):
    video = make_video(tmp_path / "long.avi", 600)
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("unet-predict")
    proc = subprocess.Popen([str(exe), str(red), str(video), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    report = out / "report.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not report.is_file() or report.read_bytes().count(b"\n") < 20):
        time.sleep(0.02)
    running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert running, "the run ended before it could be killed half way"
    text = report.read_text()
    lines = text.splitlines()
    assert 20 <= len(lines) < 600 and text.endswith("\n")  # only whole lines: each write is one flushed line
    assert [json.loads(line)["frame"] for line in lines] == list(range(len(lines)))


def test_report_lines_are_on_disk_as_each_frame_is_done(red, video, tmp_path):
    from unet_deploy.predict import predict_stream_to_folder

    seen = []
    report = tmp_path / "o" / "report.jsonl"
    record_lines = lambda record: seen.append((record["frame"], report.read_bytes().count(b"\n")))  # noqa: E731
    summary = predict_stream_to_folder(Segmenter(red), str(video), tmp_path / "o", every=2, on_record=record_lines,
                                       progress=False)  # fmt: skip
    assert seen == [(0, 1), (2, 2), (4, 3), (6, 4), (8, 5)]
    assert (summary.frames, summary.failed, summary.dropped, summary.end.broken) == (5, 0, 0, False)


class _Camera:
    """A stand-in for cv2.VideoCapture on a camera that gives ``frames`` frames, then is unplugged."""

    def __init__(self, frames: int) -> None:
        self.left = frames

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_WIDTH: 64, cv2.CAP_PROP_FRAME_HEIGHT: 48}.get(prop, -1.0)

    def read(self):
        self.left -= 1
        return (True, color_image(self.left, (64, 48))) if self.left >= 0 else (False, None)

    def grab(self) -> bool:
        return self.read()[0]

    def release(self) -> None:
        self.left = 0


def test_an_unplugged_camera_keeps_its_frames_and_ends_broken(red, monkeypatch, tmp_path):
    import unet_deploy.stream as stream_module
    from unet_deploy.predict import predict_stream_to_folder

    monkeypatch.setattr(stream_module, "open_capture", lambda source: _Camera(5))
    summary = predict_stream_to_folder(Segmenter(red), "camera:0", tmp_path / "o", every=2, progress=False)
    assert summary.end.broken and "camera:0: no frame after 5 read (camera unplugged" in summary.end.message
    records = _lines(tmp_path / "o" / "report.jsonl")
    assert [r["frame"] for r in records] == [0, 2, 4] and summary.frames == 3
    assert [r["timestamp_ms"] >= 0 for r in records] == [True] * 3 and records[0]["file"] == "camera:0"
    monkeypatch.setattr(stream_module, "open_capture", lambda source: _Camera(50))
    result = _run(red, "0", "--out", tmp_path / "o2", "--max-frames", 4)
    assert result.exit_code == 0 and "4 frame(s) processed (--max-frames)" in result.stdout, result.output
    assert [r["frame"] for r in _lines(tmp_path / "o2" / "report.jsonl")] == [0, 1, 2, 3]
