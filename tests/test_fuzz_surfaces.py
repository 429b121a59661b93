"""Hypothesis fuzzing of the validation every caller passes through (issue #30): serve's options,
Segmenter.stream's arguments, tiling= dictionaries and the ModelMeta of model files. Each input is
accepted within its bounds or refused in one UnetDeployError line; nothing else may escape."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_meta import _documents
from tests.test_runtime import red_model
from unet_deploy import Segmenter, UnetDeployError
from unet_deploy.meta import MAX_OVERLAP, MAX_TILE_SCALE, MIN_TILE_SCALE, check_tiling
from unet_deploy.serve.repository import check_model_name
from unet_deploy.serve.server import check_address
from unet_deploy.stream_source import MAX_CAMERA_INDEX, parse_source
from unet_deploy.tiling import tile_grid

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_anything = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=12)


def _one_line(e: UnetDeployError) -> None:
    assert e.message and "\n" not in e.message and len(e.message) < 400


# ---------------------------------------------------------------------------- serve


@FUZZ
@given(st.text(max_size=80) | st.sampled_from(["..", ".", "", "a/b", "../x", "unet", "a" * 64, "a" * 65]))
def test_any_model_name_is_a_safe_folder_name_or_one_line(name):
    try:
        checked = check_model_name(name)
    except UnetDeployError as e:
        _one_line(e)
        return
    assert checked == name and name not in (".", "..") and not set(name) & set("/\\\0") and len(name) <= 64
    assert Path("repo", name).parent == Path("repo") and not name.startswith((".", "-"))


_hosts = st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "localhost", "8.8.8.8", "999.1.1.1", "", "::g"]) | st.text(
    alphabet="0123456789.:[]%", max_size=16)  # no letters: nothing is looked up in DNS
_ports = st.integers(-5, 70_000) | st.sampled_from([0, 65535, 65536, 2**31]) | _anything


@FUZZ
@given(_hosts, st.fixed_dictionaries({"http": _ports, "grpc": _ports, "metrics": _ports}))
def test_any_host_and_ports_bind_or_are_one_line(host, ports):
    try:
        check_address(host, ports)
    except UnetDeployError as e:
        _one_line(e)
        return
    assert all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 65535 for p in ports.values())
    assert len({p for p in ports.values() if p}) == len([p for p in ports.values() if p])


# ---------------------------------------------------------------------------- Segmenter.stream


@pytest.fixture(scope="module")
def video_seg(tmp_path_factory):
    from tests.test_lost_work import _video

    folder = tmp_path_factory.mktemp("fuzz_stream")
    return Segmenter(red_model(folder / "red.onnx")), _video(folder / "v.avi", count=3)


@FUZZ
@given(_anything | st.integers(0, 200), _anything | st.integers(1, 5), _anything | st.integers(1, 2000))
def test_any_stream_arguments_start_a_stream_or_are_one_line(video_seg, every, max_frames, queue_size):
    seg, video = video_seg
    try:
        stream = seg.stream(video, every=every, max_frames=max_frames, queue_size=queue_size)
    except UnetDeployError as e:
        _one_line(e)
        return
    with stream:
        assert stream.every >= 1 and stream.every == every and 1 <= stream.queue_size <= 1024
        assert stream.max_frames is None or stream.max_frames >= 1


@FUZZ
@given(_anything | st.integers(-(10**12), 10**12) | st.text(alphabet="camera:0123456789-+ ", max_size=16))
def test_any_source_is_a_bounded_camera_a_name_or_one_line(source):
    try:
        target = parse_source(source)
    except UnetDeployError as e:
        _one_line(e)
        return
    if isinstance(target, int):
        assert 0 <= target <= MAX_CAMERA_INDEX
    else:
        assert isinstance(target, str)


# ---------------------------------------------------------------------------- tiling=


_tiling_values = st.floats(allow_nan=True) | st.integers(-10, 10) | _anything
_tilings = st.dictionaries(st.sampled_from(["scale", "overlap", "tile", "Scale"]), _tiling_values, max_size=3)


@FUZZ
@given(_tilings | _anything, st.integers(1, 20_000), st.integers(1, 20_000), st.sampled_from([32, 64, 256]))
def test_any_tiling_dictionary_is_bounded_or_one_line(tiling, height, width, tile):
    try:
        checked = check_tiling(tiling)
    except UnetDeployError as e:
        _one_line(e)
        return
    if checked is None:
        assert tiling is None
        return
    assert MIN_TILE_SCALE <= checked["scale"] <= MAX_TILE_SCALE and 0 <= checked["overlap"] <= MAX_OVERLAP
    ys, xs = tile_grid((height, width), (tile, tile), checked["overlap"])
    stride = max(1, tile - math.floor(tile * MAX_OVERLAP + 0.5))  # the least stride any accepted overlap gives
    for axis, length in ((ys, height), (xs, width)):
        assert len(axis) <= max(1, -(-(length - tile) // stride) + 1)  # never a 1-pixel stride


# ---------------------------------------------------------------------------- ModelMeta of model files


@pytest.fixture(scope="module")
def bare_model(tmp_path_factory):
    """A hand-built ONNX network without metadata: its sidecar is all the runtime knows."""
    return red_model(tmp_path_factory.mktemp("fuzz_meta") / "bare.onnx", meta=False)


@FUZZ
@given(_documents())
def test_any_sidecar_loads_a_usable_model_or_is_one_line(bare_model, doc):
    (bare_model.parent / "bare.json").write_text(json.dumps(doc))
    try:
        seg = Segmenter(bare_model)
    except UnetDeployError as e:
        _one_line(e)
        return
    meta = seg.meta
    assert meta.num_outputs == 2 and meta.in_channels == 3  # what the network has, or it was refused
    assert 1 <= seg.max_batch and 1 <= seg.tile_batch <= seg.max_batch
    assert meta.tiling is None or meta.tiling["overlap"] <= MAX_OVERLAP
