"""Triton serving against a real tritonserver on 127.0.0.1: the repository, batching, errors, clean shutdown."""
from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from unet_deploy.errors import UnetDeployError
from unet_deploy.meta import ModelMeta
from unet_deploy.serve import TritonServer, export_triton, read_parameters

CLIENTS, IMAGES = 8, 25
QUEUE_DELAY_US = 10_000  # generous: batches must form even when the shared machine is busy


def _serve_missing() -> str | None:
    """Why the [serve] extra cannot run here, or None."""
    try:
        import tritonclient.http  # noqa: F401

        from unet_deploy.serve.server import TritonInstall, stub_python_path

        TritonInstall.find()
        stub_python_path()
    except (ImportError, UnetDeployError) as e:
        return f"the [serve] extra is not installed (make install sets it up, see README \"Serving\"): {e}"
    return None


needs_serve = pytest.mark.skipif(_serve_missing() is not None, reason=str(_serve_missing()))


def _images() -> list[np.ndarray]:
    from unet_deploy.data.synthetic import sample

    sizes = [(64, 64), (96, 48), (200, 120), (40, 77), (160, 160)]  # (W, H): images 0, 5, 10, ... share one size
    return [sample(3, i, sizes[i % len(sizes)]).image for i in range(IMAGES)]


def _png(image: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", image)[1].tobytes()


def _infer(client, model: str, data: list[bytes]):
    import tritonclient.http as http

    x = http.InferInput("image", [len(data), 1], "BYTES")
    x.set_data_from_numpy(np.array([[d] for d in data], dtype=object))
    return client.infer(model, [x])


@pytest.fixture(scope="module")
def color_repo(exported_color, tmp_path_factory) -> Path:
    """The session's ``color.onnx`` (shared with the runtime tests) written as a Triton repository."""
    return export_triton(exported_color["onnx"], tmp_path_factory.mktemp("repo"), name="color", instances=1, max_batch=8,
                         queue_delay_us=QUEUE_DELAY_US, log=lambda m: None)


def test_repository_layout_and_config(color_repo, color_checkpoint, tmp_path):
    from unet_deploy.checkpoint import load_checkpoint

    files = sorted(p.relative_to(color_repo).as_posix() for p in color_repo.rglob("*") if p.is_file())
    assert files == ["1/color.json", "1/color.onnx", "1/model.py", "config.pbtxt"]
    text = (color_repo / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in text and f"max_queue_delay_microseconds: {QUEUE_DELAY_US}" in text
    assert "count: 1 kind: KIND_CPU" in text and 'data_type: TYPE_STRING' in text
    params = read_parameters(color_repo / "config.pbtxt")
    assert ModelMeta.from_json(params["unet_deploy"]).classes == load_checkpoint(color_checkpoint)[1].classes
    assert params["role"] == "segmenter" and params["model_file"] == "color.onnx"
    torchscript = tmp_path / "color.torchscript.pt"
    torchscript.write_bytes(b"not read: the layout check comes first")
    with pytest.raises(UnetDeployError, match="ensemble layout needs an ONNX"):
        export_triton(torchscript, tmp_path / "repo", layout="ensemble")


@needs_serve
def test_server_batches_concurrent_clients_and_survives_a_corrupt_image(color_repo):
    import tritonclient.http as http

    from unet_deploy import Segmenter
    from unet_deploy.serve.server import group_members

    images = _images()
    seg = Segmenter(color_repo / "1" / "color.onnx", device="cpu")
    want = seg.predict_batch(images)
    encoded = [_png(im) for im in images]
    server = TritonServer(color_repo.parent, http_port=0, grpc_port=0, metrics_port=0)
    with server:
        assert server.host == "127.0.0.1"
        got, errors = {}, []

        def client(k: int) -> None:
            c = http.InferenceServerClient(server.url)
            try:
                for i in np.random.default_rng(k).permutation(IMAGES):
                    r = _infer(c, "color", [encoded[i]])
                    got[(k, int(i))] = (r.as_numpy("mask")[0], json.loads(r.as_numpy("regions")[0, 0]))
            except Exception as e:  # noqa: BLE001  (reported below, with the thread's number)
                errors.append(f"client {k}: {e}")
            finally:
                c.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and len(got) == CLIENTS * IMAGES
        for (k, i), (mask, report) in got.items():
            assert mask.dtype == np.uint8 and np.array_equal(mask, want[i].mask), (k, i)
            expected = want[i].to_dict()
            assert report["size"] == expected["size"] and report["regions"] == json.loads(json.dumps(expected["regions"]))

        c = http.InferenceServerClient(server.url)
        with pytest.raises(Exception, match="image 0: not a readable image"):
            _infer(c, "color", [b"\x89PNG\r\n\x1a\n broken"])
        assert server.ready()
        r = _infer(c, "color", [encoded[3]])
        assert np.array_equal(r.as_numpy("mask")[0], want[3].mask)
        raw = http.InferInput("raw", [2, *images[0].shape], "UINT8")  # the optional raw BGR input, 2 images at once
        raw.set_data_from_numpy(np.stack([images[0], images[5]]))
        masks = c.infer("color", [raw]).as_numpy("mask")
        assert np.array_equal(masks[0], want[0].mask) and np.array_equal(masks[1], want[5].mask)
        stats = c.get_inference_statistics("color")["model_stats"][0]
        sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
        assert sum(n * b for b, n in sizes.items()) == CLIENTS * IMAGES + 4  # every image ran once, the corrupt one too
        assert max(sizes) > 1, f"no batch larger than 1 under {CLIENTS} concurrent clients: {sizes}"
        c.close()
        pgid = server.process.pid
        assert len(group_members(pgid)) >= 2  # the server and its Python stub
    assert server.process is None and group_members(pgid) == []
    assert not os.path.exists(f"/proc/{pgid}") or "Z" in Path(f"/proc/{pgid}/stat").read_text().rsplit(")", 1)[1][:3]


@pytest.mark.slow  # starts a Triton server on two exported repositories
@needs_serve
def test_ensemble_configs_and_python_steps_on_the_server(color_checkpoint, tmp_path):
    import onnxruntime as ort
    import tritonclient.http as http

    from unet_deploy import Segmenter
    from unet_deploy.export import export_model

    # The ensemble's fixed-size steps need a square letterbox (new exports default to rect).
    onnx_path = export_model(color_checkpoint, "onnx", out_dir=tmp_path / "square", letterbox="top-left", verbose=False)["onnx"]
    tmp_path = tmp_path / "repo"
    export_triton(onnx_path, tmp_path, name="seg", layout="ensemble", max_batch=4, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg", "seg_net", "seg_post", "seg_pre"]
    ensemble = (tmp_path / "seg" / "config.pbtxt").read_text()
    net = (tmp_path / "seg_net" / "config.pbtxt").read_text()
    session = ort.InferenceSession(str(tmp_path / "seg_net" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    net_in, net_out = session.get_inputs()[0].name, session.get_outputs()[0].name
    assert 'platform: "ensemble"' in ensemble and 'platform: "onnxruntime_onnx"' in net
    for step in ('model_name: "seg_pre"', 'model_name: "seg_net"', 'model_name: "seg_post"',
                 f'input_map {{ key: "{net_in}" value: "_images" }}', f'output_map {{ key: "{net_out}" value: "_logits" }}'):
        assert step in ensemble
    assert f'name: "{net_in}"' in net and f'name: "{net_out}"' in net
    images = _images()[:4]
    want = Segmenter(onnx_path, device="cpu").predict_batch(images)
    # The wheel has no onnxruntime backend: load the two Python steps and run the network here between them.
    with TritonServer(tmp_path, http_port=0, grpc_port=0, metrics_port=0, models=["seg_pre", "seg_post"]) as server:
        c = http.InferenceServerClient(server.url)
        for image, expected in zip(images, want):
            pre = _infer(c, "seg_pre", [_png(image)])
            logits = session.run(None, {net_in: pre.as_numpy("images")})[0]
            inputs = [http.InferInput("logits", list(logits.shape), "FP32"),
                      http.InferInput("transform", list(pre.as_numpy("transform").shape), "INT32")]
            inputs[0].set_data_from_numpy(logits)
            inputs[1].set_data_from_numpy(pre.as_numpy("transform"))
            post = c.infer("seg_post", inputs)
            assert np.array_equal(post.as_numpy("mask")[0], expected.mask)
            assert json.loads(post.as_numpy("regions")[0, 0])["regions"] == json.loads(json.dumps(expected.to_dict()["regions"]))
        c.close()


@pytest.mark.slow  # two ONNX exports, each parity-checked, inside two repositories
def test_format_triton_is_a_registry_row_that_export_writes_and_replaces(color_checkpoint, tmp_path):
    """``unet-export CKPT --format triton``: a parity-checked ONNX inside a python-layout repository folder."""
    from unet_deploy import formats
    from unet_deploy.errors import UnetDeployError
    from unet_deploy.export import export_model, resolve_formats
    from unet_deploy.runtime import Segmenter

    lines: list[str] = []
    repo = export_model(color_checkpoint, "triton", out_dir=tmp_path, log=lines.append)["triton"]
    assert repo == tmp_path / f"{color_checkpoint.stem}.triton" and repo.is_dir()
    assert any(line.startswith("ONNX: parity ok") for line in lines)  # the model inside was checked
    model_dir = repo / "unet"
    onnx_name = f"{color_checkpoint.stem}.onnx"
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == sorted(["model.py", f"{color_checkpoint.stem}.json", onnx_name])
    params = read_parameters(model_dir / "config.pbtxt")
    assert params["model_file"] == onnx_name
    inside = Segmenter(model_dir / "1" / onnx_name)
    assert ModelMeta.from_json(params["unet_deploy"]) == inside.meta
    # Re-exporting replaces the folder whole (a stale file in it is gone), and leaves no temporaries.
    (model_dir / "stale.txt").write_text("x")
    export_model(color_checkpoint, "triton", out_dir=tmp_path, verbose=False)
    assert not (model_dir / "stale.txt").exists() and (model_dir / "config.pbtxt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([repo.name, f"{color_checkpoint.stem}.json"])
    # Not a runtime format: Segmenter says so in one line; --format all and the bench leave it out.
    with pytest.raises(UnetDeployError, match=r"color\.triton: a Triton repository folder, not a model file; serve it with `unet-deploy serve`"):
        Segmenter(repo)
    assert "triton" not in [f.name for f in resolve_formats("all")]
    from unet_deploy.bench.cases import cases

    assert "triton" not in {c.fmt for c in cases()}
    assert formats.for_path("m.triton").folder


@needs_serve
def test_serve_command_prints_the_url_and_stops_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys
    import urllib.request

    from unet_deploy.serve.server import free_port, group_members

    from .test_runtime import red_model

    port = free_port()
    cmd = [sys.executable, "-c", "from unet_deploy.cli.serve import command; command(prog_name='unet-deploy serve')",
           str(red_model(tmp_path / "red.onnx")), "--port", str(port), "--grpc-port", "0", "--metrics-port", "0"]
    err = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"Triton ready: http://127.0.0.1:{port} "), line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/unet/ready", timeout=5) as r:
            assert r.status == 200
        err.seek(0)
        server_pid = int(re.search(r"tritonserver starting on .* \(pid (\d+)\)", err.read()).group(1))
        assert group_members(server_pid)  # the server runs in its own process group
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        err.close()
    assert group_members(proc.pid) == [] and group_members(server_pid) == []  # command, server, stub: all gone
