"""fileio: EXIF orientation as PIL applies it, the pixel limit before decoding, atomic writes and their leftovers."""
import os
import signal
import stat
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from unet_deploy import fileio
from unet_deploy.data.synthetic import sample
from unet_deploy.errors import UnetDeployError
from unet_deploy.fileio import (atomic_path, atomic_write_text, quote, read_image, remove_stale_temporaries,
                                temporary_name)


def _with_orientation(path, rgb, orientation, fmt):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, format=fmt, exif=exif.tobytes())


def _pil_view(path):
    """What PIL (and so labelme) shows: the decoded image with exif_transpose applied, as BGR."""
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))[:, :, ::-1]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pil_applies_it(tmp_path, orientation):
    rgb = sample(1, 0, (64, 40)).image[:, :, ::-1].copy()  # 64 wide, 40 high, no symmetry
    path = tmp_path / "o.png"
    _with_orientation(path, rgb, orientation, "PNG")
    image = read_image(path)
    np.testing.assert_array_equal(image, _pil_view(path))
    assert image.shape[:2] == ((64, 40) if orientation >= 5 else (40, 64))


def test_camera_jpeg_with_orientation_6_is_read_upright(tmp_path):
    rgb = sample(2, 0, (64, 40)).image[:, :, ::-1].copy()
    path = tmp_path / "camera.jpg"
    _with_orientation(path, rgb, 6, "JPEG")
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2] == (40, 64)  # what OpenCV alone gives
    for flags in (None, cv2.IMREAD_COLOR, cv2.IMREAD_GRAYSCALE):
        image = read_image(path, flags)
        assert image.shape[:2] == (64, 40)  # rotated once, not zero or two times
    diff = np.abs(read_image(path).astype(int) - _pil_view(path)).mean()
    assert diff < 1.0  # the same pixels, up to two JPEG decoders


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    """A valid 30000x30000 1-bit PNG of about 0.1 MB, written row by row (never held in memory)."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    size = 30000

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + size // 8)
    idat = b"".join(z.compress(row * 1000) for _ in range(size // 1000)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", size, size, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    assert path.stat().st_size < 1_000_000
    return path


def test_pixel_limit_refuses_a_huge_png_fast_and_small(huge_png):
    code = (
        "import time, sys\n"
        "from unet_deploy.fileio import read_image\n"
        "from unet_deploy.errors import UnetDeployError\n"
        "t = time.perf_counter()\n"
        "try:\n"
        f"    read_image({str(huge_png)!r})\n"
        "except UnetDeployError as e:\n"
        "    print(e.message)\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest's RSS)
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(time.perf_counter() - t, int(hwm) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    message, numbers = out.stdout.strip().splitlines()
    seconds, peak_mb = float(numbers.split()[0]), int(numbers.split()[1])
    assert message.startswith(f"{huge_png}: image of 900,000,000 pixels exceeds the limit of 178,956,970")
    assert "UNET_DEPLOY_MAX_IMAGE_PIXELS=900000000" in message
    assert peak_mb < 400, (seconds, peak_mb)  # refused from the header: decoding would take 3.6 GB


def test_pixel_limit_is_settable(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((20, 30), np.uint8))
    monkeypatch.setattr(fileio, "MAX_IMAGE_PIXELS", 599)
    with pytest.raises(UnetDeployError, match=r"small.png: image of 30x20 \(600 pixels\) exceeds the limit of 599"):
        read_image(path)
    monkeypatch.setattr(fileio, "MAX_IMAGE_PIXELS", None)
    assert read_image(path).shape == (20, 30)
    code = f"from unet_deploy.fileio import read_image; read_image({str(path)!r})"
    env = {**os.environ, "UNET_DEPLOY_MAX_IMAGE_PIXELS": "100"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1 and "exceeds the limit of 100 pixels" in out.stderr


def test_unreadable_files_are_named_in_one_line(tmp_path):
    bad = tmp_path / "bad image.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(UnetDeployError, match="bad image.png: not a readable image"):
        read_image(bad)
    with pytest.raises(UnetDeployError, match="missing.png: cannot read file"):
        read_image(tmp_path / "missing.png")
    spoof = tmp_path / "a.png\nError: all fine.png"
    spoof.write_bytes(b"garbage")
    with pytest.raises(UnetDeployError) as info:
        read_image(spoof)
    assert "\n" not in info.value.message and "a.png\\nError" in info.value.message


def test_gif_is_read_through_pillow(tmp_path):
    path = tmp_path / "x.gif"
    Image.new("RGB", (8, 6), (255, 0, 0)).save(path)
    image = read_image(path)
    assert image.shape == (6, 8, 3) and (image[..., 2] > 200).all() and (image[..., 0] < 50).all()


def test_quote_escapes_only_what_would_break_a_line():
    assert quote("data/scratch 1.png") == "data/scratch 1.png"
    assert quote("sc\nratch") == "'sc\\nratch'"
    assert quote(" x ") == "' x '" and quote("") == "''"
    assert quote("a\x1b[31mred") == "'a\\x1b[31mred'"
    assert quote(fileio.Path("ö/ü.png")) == "ö/ü.png"


def test_no_umask_change_and_written_files_follow_the_umask(tmp_path):
    code = (
        "import os\n"
        "os.umask(0o027)\n"
        "def forbidden(mask): raise AssertionError('umask changed')\n"
        "os.umask = forbidden\n"
        "from unet_deploy.fileio import atomic_write_text\n"
        f"atomic_write_text({str(tmp_path / 'out.txt')!r}, 'x')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o640


def test_failed_atomic_write_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_kill_9_leftovers_are_recognised_and_only_dead_ones_removed(tmp_path):
    code = (
        "import os, signal\n"
        "from unet_deploy.fileio import atomic_path\n"
        f"with atomic_path({str(tmp_path / 'mask.png')!r}) as tmp:\n"
        "    tmp.write_bytes(b'partial' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (left,) = list(tmp_path.iterdir())
    assert left.name.startswith(".mask.png.") and left.name.endswith(".tmp")
    dead = _dead_pid()
    staging = tmp_path / f".model.onnx.{dead}.0123abcd.export"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"x")
    live = temporary_name(tmp_path / "live.png")  # this process: still writing
    assert temporary_name(tmp_path / "m.onnx", ".export").name.startswith(".m.onnx.")
    live.write_bytes(b"x")
    others = [tmp_path / ".hidden.tmp", tmp_path / f"mask.png.{dead}.0123abcd.tmp", tmp_path / "keep.png",
              tmp_path / f".photo.{dead}.0123abcd.png"]  # a user's hidden file that only looks alike
    for p in others:
        p.write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([left, staging])
    assert sorted(tmp_path.iterdir()) == sorted([live, *others])
    assert remove_stale_temporaries(tmp_path / "absent") == []


def test_untagged_images_are_opencvs_pixels_as_they_are(tmp_path):
    path = tmp_path / "frame.tif"
    image16 = (sample(4, 0, (64, 48)).image.astype(np.uint16) * 257)[:, :, :2].copy()
    image16 = np.dstack([image16, image16[:, :, :1], image16[:, :, 1:]])  # BGRA, 16 bit
    cv2.imwrite(str(path), image16)
    np.testing.assert_array_equal(read_image(path), image16)
