"""Start and stop a real Triton Inference Server on a model repository: the ``[serve]`` extra's ``tritonserver``.

The server is the ``tritonserver`` 2.51 binary that the ``nvidia-pytriton`` 0.7.0 wheel ships,
run directly (PyTriton's own Python wrapper is not used). What it needs, all set up here:
``LD_LIBRARY_PATH`` to the wheel's ``nvidia_pytriton.libs``; a backend directory whose
``python/`` holds ``libtriton_python.so`` and the stub for this Python version (symlinks in a
temporary folder); and ``UNET_DEPLOY_PYTHONPATH`` for the model.py, because the stub embeds its
own libpython and ignores ``PYTHONPATH`` and virtual environments. The wheel's stub was built
with a pybind11 that reads numpy 1's array layout: under numpy 2 it garbles every string tensor
(and crashes), so when this environment has numpy 2 the stub is given a numpy 1.26 of its own
(``STUB_SITE``), found before the environment's site-packages; everything else stays shared.
"""
from __future__ import annotations

import errno
import os
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import UnetDeployError
from ..fileio import private_tempdir

INSTALL_HINT = (
    "install the [serve] extra: pip install --no-deps nvidia-pytriton==0.7.0 && pip install 'unet-deploy[serve]'"
)
STUB_SITE_ENV = "UNET_DEPLOY_TRITON_STUB_SITE"  # a folder holding numpy<2 for the stub (pip install --target)
EXIT_TIMEOUT_S = 5  # tritonserver --exit-timeout-secs: how long it waits for in-flight requests


def default_stub_site() -> Path:
    """Where the stub's numpy 1.26 lives: ``$UNET_DEPLOY_TRITON_STUB_SITE`` or ``<venv>/triton-stub-site``."""
    return Path(os.environ.get(STUB_SITE_ENV) or Path(sys.prefix) / "triton-stub-site")


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's server pieces are."""

    binary: Path
    libs: Path
    python_backend: Path  # libtriton_python.so, triton_python_backend_utils.py
    stub: Path

    @classmethod
    def find(cls) -> "TritonInstall":
        """The ``tritonserver`` of the installed nvidia-pytriton wheel; a one-line error when absent."""
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise UnetDeployError(f"no Triton server found (nvidia-pytriton is not installed); {INSTALL_HINT}")
        root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        found = cls(root / "bin" / "tritonserver", root.parents[1] / "nvidia_pytriton.libs", root / "backends" / "python",
                    root / "python_backend_stubs" / version / "triton_python_backend_stub")
        for path in (found.binary, found.libs, found.python_backend / "libtriton_python.so", found.stub):
            if not path.exists():
                raise UnetDeployError(f"{path}: missing from the nvidia-pytriton install (Python {version}); {INSTALL_HINT}")
        return found


def stub_python_path() -> list[str]:
    """The site folders model.py puts in front of the stub's ``sys.path`` (numpy 1.26 first where needed)."""
    import numpy

    import unet_deploy

    paths = []
    if int(numpy.__version__.split(".")[0]) >= 2:
        stub_site = default_stub_site()
        if not any(p.name.startswith("numpy-1.") for p in stub_site.glob("numpy-*.dist-info")):
            raise UnetDeployError(
                f"{stub_site}: no numpy 1.x for the Triton Python stub (it misreads numpy {numpy.__version__}'s arrays); "
                f"run: pip install --target {stub_site} 'numpy<2'  (or set {STUB_SITE_ENV})"
            )
        paths.append(str(stub_site))
    paths.append(str(Path(unet_deploy.__file__).resolve().parents[1]))
    paths += [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    return list(dict.fromkeys(paths))


def _libpython_dir() -> str | None:
    """This interpreter's libpython folder, so the stub embeds the same Python as the environment."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    return libdir if libdir and soname and (Path(libdir) / soname).is_file() else None


def check_address(host: str, ports: dict[str, int]) -> None:
    """Raise the one-line error when ``host`` is no address of this machine or a port is out of range
    or taken (0 stands for "pick a free one" and always passes).

    Args:
        host: the address to bind (``127.0.0.1``, ``0.0.0.0``, a local name).
        ports: ``{"http": 8000, ...}``; each is tried with a bind and released at once.
    """
    for what, port in ports.items():
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise UnetDeployError(f"--{what}-port {port!r} is not a TCP port: use 1-65535, or 0 to pick a free one")
    taken = [(what, p) for what, p in ports.items() if p and list(ports.values()).count(p) > 1]
    if taken:
        raise UnetDeployError(f"port {taken[0][1]} is given for {' and '.join(w for w, _ in taken)}; give each its own")
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as e:
        raise UnetDeployError(f"--host {host!r} is not an address of this machine ({e}); use 127.0.0.1 or 0.0.0.0") from None
    family, *_, address = infos[0]
    for what, port in ports.items():
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver binds: TIME_WAIT is no conflict
            try:
                s.bind((address[0], port))
            except OSError as e:
                busy = "in use by another program" if e.errno == errno.EADDRINUSE else e.strerror
                raise UnetDeployError(
                    f"{host}:{port} ({what}) cannot be bound: {busy}; pick another --{what}-port (0: a free one)"
                    + (" or --host" if e.errno == errno.EADDRNOTAVAIL else "")
                ) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for tests and ``--port 0``)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TritonServer:
    """A ``tritonserver`` process on ``repository``: ``with TritonServer(repo) as server: server.url``.

    Binds HTTP, gRPC and metrics to ``host`` (127.0.0.1 by default; a port of 0 picks a free one).
    ``models`` loads only those (explicit model control). ``stop()`` ends the server and every
    stub process it started (its own process group), so nothing is left behind.
    """

    def __init__(
        self,
        repository: str | Path,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        models: Sequence[str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise UnetDeployError(f"{self.repository}: not a model repository folder; export one with export_triton")
        self.host = host
        asked = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        check_address(host, asked)
        self.ports = {k: p or free_port(host) for k, p in asked.items()}
        self.models = list(models or [])
        self.log = log or (lambda message: None)
        self.process: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        """``host:port`` of the HTTP endpoint, as ``tritonclient.http`` takes it."""
        return f"{self.host}:{self.ports['http']}"

    @property
    def log_path(self) -> Path | None:
        return Path(self._tmp.name) / "tritonserver.log" if self._tmp else None

    def command(self, backends: Path) -> list[str]:
        cmd = [str(self._install.binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
               f"--http-address={self.host}", f"--http-port={self.ports['http']}",
               f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
               f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}",
               "--allow-gpu-metrics=false", f"--exit-timeout-secs={EXIT_TIMEOUT_S}"]
        if self.models:
            cmd += ["--model-control-mode=explicit", *[f"--load-model={m}" for m in self.models]]
        return cmd

    def start(self, timeout: float = 120.0) -> "TritonServer":
        """Start the server and wait until it reports ready; the log's tail in the error otherwise."""
        self._install = TritonInstall.find()
        env = dict(os.environ)
        env["UNET_DEPLOY_PYTHONPATH"] = os.pathsep.join(stub_python_path())
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self._install.libs), _libpython_dir(), env.get("LD_LIBRARY_PATH")) if p)
        self._tmp = private_tempdir("triton")
        backends = Path(self._tmp.name) / "backends"
        (backends / "python").mkdir(parents=True)
        for src in (*self._install.python_backend.glob("*.so"), *self._install.python_backend.glob("*.py"), self._install.stub):
            (backends / "python" / src.name).symlink_to(src)
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(self.command(backends), env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        self.log(f"Triton {self._install.binary} starting on {self.repository} (pid {self.process.pid})")
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UnetDeployError(f"{self.repository}: tritonserver exited with code {self.process.returncode}: {self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        raise UnetDeployError(f"{self.repository}: tritonserver not ready after {timeout:.0f} s: {self.log_tail()}")

    def ready(self) -> bool:
        """The server's ``/v2/health/ready`` answers 200 (every model loaded)."""
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 6) -> str:
        """The last error-looking lines of the server log, joined on one line."""
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        picked = [t.strip() for t in text if t[:1] in "EW" or "rror" in t] or text
        return " | ".join(picked[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of the whole process group after the exit timeout; waits until it is empty."""
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(EXIT_TIMEOUT_S + 10)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(proc.pid)
            proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process (thread) that started it dies, even by SIGKILL."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(stat.parent.name))
    return found


def _kill_group(pgid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    sent = False
    while group_members(pgid) and time.monotonic() < deadline:
        if not sent:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                return
            sent = True
        time.sleep(0.05)

