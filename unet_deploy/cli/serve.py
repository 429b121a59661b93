"""`unet-deploy serve`: a real Triton Inference Server on a model file or an exported repository."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import click

from ..errors import UnetDeployError
from ..fileio import private_tempdir
from ._command import command, echo_err


@command("serve")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--port", default=8000, show_default=True, help="HTTP port (0: pick a free one).")
@click.option("--grpc-port", default=8001, show_default=True, help="gRPC port (0: pick a free one).")
@click.option("--metrics-port", default=8002, show_default=True, help="Prometheus metrics port (0: pick a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 serves the network.")
@click.option("--instances", type=click.IntRange(1), default=None, help="Model copies [default: 1].")
@click.option("--max-batch", type=click.IntRange(1), default=None, help="Largest batch Triton forms [default: 8].")
@click.option("--queue-delay-us", type=click.IntRange(0), default=None,
              help="How long Triton waits to fill a batch, microseconds [default: 2000].")
@click.option("--name", default="unet", show_default=True, help="Model name clients ask for.")
@click.option("--trust-code", is_flag=True,
              help="Load a model file that runs code when loaded (.pt2: native code). Only for files you made.")
def command(model: Path, port: int, grpc_port: int, metrics_port: int, host: str, instances: int | None,
            max_batch: int | None, queue_delay_us: int | None, name: str, trust_code: bool) -> None:
    """Serve MODEL with NVIDIA Triton Inference Server until Ctrl-C or SIGTERM ([serve] extra).

    MODEL is any file Segmenter takes (.onnx, .xml, .torchscript.pt, .pt2, checkpoint .pt),
    exported first to a temporary Triton repository, or a repository written by
    export_triton. Clients send encoded images as input "image" and get "mask" and "regions".

    \b
    Examples:
      unet-deploy serve runs/a/best.onnx                 # http://127.0.0.1:8000, model "unet"
      unet-deploy serve repo/ --port 9000                # an exported repository
      unet-deploy serve best.onnx --instances 2 --max-batch 16
      python examples/triton_client.py images/ --url 127.0.0.1:8000 --out served/
    """
    from ..serve import DEFAULT_QUEUE_DELAY_US, TritonServer, export_triton
    from ..serve.server import check_address

    check_address(host, {"http": port, "grpc": grpc_port, "metrics": metrics_port})  # before any export
    with private_tempdir("serve") as tmp:
        if model.is_dir():
            if any(v is not None for v in (instances, max_batch, queue_delay_us)):
                raise UnetDeployError(f"{model}: an exported repository keeps its own settings; "
                                      "edit its config.pbtxt, or pass a model file to set --instances/--max-batch/--queue-delay-us")
            repo = model
            if not _models(repo):
                raise UnetDeployError(f"{model}: no model in this folder (no <name>/config.pbtxt); pass a model file, "
                                      "or a repository written by unet-export --format triton")
        else:
            repo = export_triton(model, tmp, name=name, instances=instances or 1, max_batch=max_batch or 8,
                                 queue_delay_us=DEFAULT_QUEUE_DELAY_US if queue_delay_us is None else queue_delay_us,
                                 log=echo_err, trust_code=trust_code).parent
        server = TritonServer(repo, host, port, grpc_port, metrics_port, log=echo_err)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            server.start()
            ports = server.ports
            click.echo(f"Triton ready: http://{server.url} (gRPC {host}:{ports['grpc']}, metrics "
                       f"http://{host}:{ports['metrics']}/metrics); models: {', '.join(_models(repo))}; Ctrl-C stops")
            while server.process is not None and server.process.poll() is None:
                time.sleep(0.5)
            if server.process is not None:
                raise UnetDeployError(f"{repo}: tritonserver stopped by itself (code {server.process.returncode}): {server.log_tail()}")
        except KeyboardInterrupt:
            echo_err("stopping Triton")
        finally:
            server.stop()
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _models(repo: Path) -> list[str]:
    return sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
