"""The embedded local Triton: the real tritonserver 2.51.0 bundled in the nvidia-pytriton wheel, python backend only.

Prepares a backend directory (python backend + the stub built for the running Python), starts the server with
an environment in which the stub imports this virtualenv's torch/onnxruntime, waits for /v2/health/ready and
stops the whole process group on exit.
"""

import importlib.util
import json
import os
import shutil
import signal
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
from typing import List, Optional

from .errors import KitError

READY_TIMEOUT_S = 120.0
# Errors the server logs at every start on a machine without a GPU; never why a repository failed to load.
NO_GPU_NOISE = ("CudaDriverHelper has not been initialized", "Failed to initialize NVML", "DCGM unable to start")
HOW_TO_INSTALL = "install the kit's requirements (make venv), which include nvidia-pytriton==0.7.0"


def pytriton_root() -> Path:
    # find_spec locates the wheel without importing PyTriton itself (its Python API and dependencies are not used)
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise KitError(f"the embedded Triton needs the nvidia-pytriton wheel: {HOW_TO_INSTALL}")
    root = Path(list(spec.submodule_search_locations)[0])
    if not (root / "tritonserver" / "bin" / "tritonserver").is_file():
        raise KitError(f"{root} has no bundled tritonserver: reinstall nvidia-pytriton==0.7.0")
    return root


def prepare_backends(root: Path, dest: Path) -> Path:
    """backends/python with the stub matching this interpreter (the wheel ships one per Python version)."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "tritonserver" / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        raise KitError(f"nvidia-pytriton has no python-backend stub for Python {py}")
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in (root / "tritonserver" / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python_dir / item.name)
    shutil.copy2(stub, python_dir / stub.name)
    return dest


def server_env(root: Path) -> dict:
    env = dict(os.environ)
    # The stub links libpython: the running interpreter's own copy must win over a system one of another patch
    # level (a mix breaks parts of the stdlib inside models). The venv's bin first makes the stub import the venv.
    libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs if d] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def free(cls) -> "Ports":
        return cls(free_port(), free_port(), free_port())


class LocalTriton:
    """``with LocalTriton(repo) as server:`` -- a ready tritonserver serving ``repo``; stopped on exit."""

    def __init__(self, repo: Path, ports: Optional[Ports] = None, log_path: Optional[Path] = None,
                 extra_args: Optional[List[str]] = None, verbose: int = 0):
        self.repo = Path(repo).resolve()
        self.ports = ports or Ports()
        self.extra_args = list(extra_args or [])
        self.verbose = verbose
        self._workdir = Path(tempfile.mkdtemp(prefix="mnv3kit-triton-"))
        self.log_path = Path(log_path) if log_path else self._workdir / "tritonserver.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def http_url(self) -> str:
        return f"localhost:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.ports.grpc}"

    def command(self, root: Path) -> List[str]:
        return [str(root / "tritonserver" / "bin" / "tritonserver"),
                f"--model-repository={self.repo}",
                f"--backend-directory={self._workdir / 'backends'}",
                f"--http-port={self.ports.http}", f"--grpc-port={self.ports.grpc}",
                f"--metrics-port={self.ports.metrics}",
                "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true",
                "--allow-cpu-metrics=true",
                # Python backend: start shared memory large enough for a max batch of 224x224 images.
                "--backend-config=python,shm-default-byte-size=16777216",
                f"--log-verbose={self.verbose}", *self.extra_args]

    def start(self, timeout: float = READY_TIMEOUT_S) -> "LocalTriton":
        if not self.repo.is_dir():
            raise KitError(f"model repository {self.repo} does not exist: build it with "
                           f"`python build_repo.py --target local -o {self.repo}`")
        busy = [p for p in (self.ports.http, self.ports.grpc, self.ports.metrics) if port_in_use(p)]
        if busy:
            raise KitError(f"port(s) {busy} already in use (another Triton?): stop it or pass other ports")
        root = pytriton_root()
        prepare_backends(root, self._workdir / "backends")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(root), stdout=log, stderr=subprocess.STDOUT,
                                     env=server_env(root), start_new_session=True)
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                errors = self.error_lines()
                self.stop()
                raise KitError(f"tritonserver exited with code {self.proc.returncode} while loading {self.repo}:\n"
                               + "\n".join(errors[-15:]))
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.25)
        errors = self.error_lines()
        self.stop()
        raise KitError(f"tritonserver was not ready after {timeout:.0f}s; last log lines:\n" + "\n".join(errors[-15:]))

    def _get(self, path: str, body: Optional[bytes] = None) -> dict:
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=body)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")

    def ready_models(self) -> List[str]:
        index = self._get("/v2/repository/index", body=b"{}")
        return sorted(m["name"] for m in index if m.get("state") == "READY")

    def version(self) -> str:
        return self._get("/v2").get("version", "?")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def error_lines(self) -> List[str]:
        """Triton's own error lines (glog 'E' severity and model load failures), else the log tail; without the
        GPU probes' errors that every start on a machine without a GPU prints."""
        lines = self.log_text().splitlines()
        errors = [line for line in lines if (line[:1] == "E" and line[1:5].isdigit() or "UNAVAILABLE" in line
                                             or "Traceback" in line or "Error" in line)
                  and not any(noise in line for noise in NO_GPU_NOISE)]
        return errors or lines[-15:]

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the stubs are children of the server: stop them all
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        try:  # stubs outliving the server (killed -9) would otherwise linger
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> "LocalTriton":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
