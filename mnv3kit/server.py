"""The embedded local Triton: the real tritonserver 2.51.0 bundled in the nvidia-pytriton wheel, python backend only.

Prepares a backend directory (python backend + the stub built for the running Python), starts the server with
an environment in which the stub imports this virtualenv's torch/onnxruntime, waits for /v2/health/ready and
stops it cleanly on exit. Safe by default: it listens on 127.0.0.1 only and its admin APIs (shared memory, model
repository, statistics, trace, logging) answer only requests carrying the per-start key. The server dies with
the process that started it (PR_SET_PDEATHSIG), and what a killed one leaves behind (its work directory, python
backend shared-memory regions) is removed by the next start. A server that died can be started again in place
(same ports, key and work directory); each start keeps the previous log as <log>.1 (.2, ... up to LOG_KEEP).
"""

import ctypes
import ctypes.util
import functools
import importlib.util
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .errors import HOW_TO_INSTALL, KitError
from .process import pid_alive
from .triton import Triton
from .spec import ADMIN_APIS, ADMIN_HEADER, admin_headers

READY_TIMEOUT_S = 120.0
# Errors the server logs at every start on a machine without a GPU; never why a repository failed to load.
NO_GPU_NOISE = ("CudaDriverHelper has not been initialized", "Failed to initialize NVML", "DCGM unable to start")
# Triton's --exit-timeout-secs: at SIGTERM it first waits for open HTTP connections (an idle keep-alive one counts)
# up to this long, then the rest of the same budget covers in-flight requests and unloading the models; past it,
# it exits with code 1. stop() unloads the models first, so this budget only bounds the wait for connections.
EXIT_TIMEOUT_S = 3
UNLOAD_TIMEOUT_S = 30.0
STOP_CALL_TIMEOUT_S = 10.0  # each call to the server while stopping it
WORKDIR_PREFIX = "mnv3kit-triton-"  # + owner pid: a dead owner's directory is stale
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "mnv3kit_"  # python-backend regions: mnv3kit_<owner pid>_<n>_<uuid>
# The python backend creates its regions 0644 whatever the umask (it fchmods each one right after creating it):
# each start and load makes this server's own regions private once its models are loaded.
PRIVATE_MODE = 0o600
LOG_KEEP = 3  # previous server logs kept beside the current one: <log>.1 (newest) to <log>.3
# Memory given back after large requests. Triton keeps up to --grpc-infer-allocation-pool-size gRPC request objects
# for reuse, each holding the capacity of the largest message it carried (a refused 200 MB message: 200 MB kept per
# object), and glibc's malloc keeps what it freed in fragmented arenas. Only both measures together give the memory
# back (perf/fault_recovery.py memory; figures in docs/reliability.md): pool 0 alone still kept hundreds of
# MB, jemalloc or tcmalloc with the default pool kept more than glibc.
GRPC_ALLOCATION_POOL = 0
# Triton's CUDA memory pool per GPU (--cuda-memory-pool-byte-size): the python backend hands GPU tensors between
# Triton and its stub processes through it (an ensemble's GPU step output, CUDA shared memory inputs); past it, each
# tensor goes by its own CUDA IPC handle, opened and closed per request. Triton's default, 64 MB, holds one FP32
# batch of 64 images (38.5 MB), less than two instances' inputs and outputs in flight.
CUDA_POOL_MB = 1024
ALLOCATORS = ("auto", "jemalloc", "glibc")  # auto: jemalloc where installed (Debian: libjemalloc2), else glibc
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"
STUB_PRELOAD_ENV = "MNV3KIT_STUB_LD_PRELOAD"  # the LD_PRELOAD the stubs get back (the one before jemalloc's)
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls prctl
_instances = itertools.count()


def pytriton_root() -> Path:
    # find_spec locates the wheel without importing PyTriton itself (its Python API and dependencies are not used)
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise KitError(f"the embedded Triton needs the nvidia-pytriton wheel (the serve extra): {HOW_TO_INSTALL}")
    root = Path(list(spec.submodule_search_locations)[0])
    if not (root / "tritonserver" / "bin" / "tritonserver").is_file():
        raise KitError(f"{root} has no bundled tritonserver: reinstall nvidia-pytriton==0.7.0")
    return root


@functools.lru_cache(maxsize=None)  # one environment per process
def stub_numpy_version() -> str:
    """numpy's version where the python-backend stub imports it: this interpreter's environment (server_env puts its
    bin first on PATH), PYTHONPATH ignored as the stub ignores it."""
    probe = subprocess.run([sys.executable, "-E", "-c", "import numpy; print(numpy.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode:
        raise KitError(f"numpy is not importable in {sys.prefix}, whose packages the embedded Triton's python-backend "
                       f"stub imports: {sys.executable} -m pip install 'numpy<2'")
    return probe.stdout.strip()


def check_stub_numpy(version: str) -> None:
    """nvidia-pytriton 0.7.0's stub passes tensors through numpy's 1.x interface: under numpy 2 its models get zeros
    and their outputs leave empty, with no error (docs/gpu.md#the-data-path-numpy-below-2)."""
    major = re.match(r"\d+", version)
    if major is None or int(major.group()) >= 2:
        raise KitError(f"numpy {version} is installed in {sys.prefix}, whose packages the embedded Triton's "
                       f"python-backend stub (nvidia-pytriton 0.7.0) imports, and under numpy 2 it hands models zeros "
                       f"and sends empty outputs: {sys.executable} -m pip install 'numpy<2'")


def prepare_backends(root: Path, dest: Path) -> Path:
    """backends/python with the stub matching this interpreter (the wheel ships one per Python version)."""
    check_stub_numpy(stub_numpy_version())
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "tritonserver" / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        raise KitError(f"nvidia-pytriton has no python-backend stub for Python {py}")
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in (root / "tritonserver" / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python_dir / item.name)
    shutil.copy2(stub, python_dir / f"{stub.name}.bin")
    wrapper = python_dir / stub.name
    wrapper.write_text(STUB_WRAPPER)
    wrapper.chmod(0o755)
    return dest


# Where the python backend looks for its stub: a wrapper that takes the allocator preloaded into tritonserver off
# (server_env) before it runs the real stub under the same name (the watchdog finds stubs by argv[0]). jemalloc
# made PyTorch's CPU forward passes slower (Large, batch 8: 75-99 ms with glibc's malloc, 110 ms with jemalloc's
# defaults, 134-152 ms with JEMALLOC_CONF); the stubs do not hold the server's large request buffers.
STUB_WRAPPER = f"""#!/bin/bash
if [ -n "${{{STUB_PRELOAD_ENV}+x}}" ]; then
  export LD_PRELOAD="${STUB_PRELOAD_ENV}"
  unset MALLOC_CONF {STUB_PRELOAD_ENV}
fi
exec -a "$0" "$0.bin" "$@"
"""


def jemalloc_library(allocator: str) -> Optional[str]:
    """The jemalloc shared library to preload for ``allocator`` (None: glibc's malloc)."""
    if allocator not in ALLOCATORS:
        raise KitError(f"unknown allocator {allocator!r}: one of {', '.join(ALLOCATORS)}")
    library = ctypes.util.find_library("jemalloc") if allocator != "glibc" else None
    if allocator == "jemalloc" and not library:
        raise KitError("jemalloc is not installed: `apt-get install libjemalloc2` (scripts/install_system_deps.sh), "
                       "or --allocator glibc")
    return library


def server_env(root: Path, jemalloc: Optional[str] = None) -> dict:
    env = dict(os.environ)
    if jemalloc:  # tritonserver: freed memory goes back to the system within a second (its stubs: STUB_WRAPPER)
        env[STUB_PRELOAD_ENV] = env.get("LD_PRELOAD", "")
        env["LD_PRELOAD"] = " ".join(filter(None, [jemalloc, env.get("LD_PRELOAD")]))
        env["MALLOC_CONF"] = JEMALLOC_CONF
    # The stub links libpython: the running interpreter's own copy must win over a system one of another patch
    # level (a mix breaks parts of the stdlib inside models). The venv's bin first makes the stub import the venv.
    libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs if d] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_ports(count: int) -> List[int]:
    """`count` distinct free loopback ports. Every socket stays bound until all are picked: a port closed before the
    next bind can come back from it (seen: the same port for HTTP and gRPC, and tritonserver refused to start)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _owner(name: str, prefix: str, sep: str) -> Optional[int]:
    head = name[len(prefix):].split(sep, 1)[0]
    return int(head) if name.startswith(prefix) and head.isdigit() else None


def remove_stale() -> List[Path]:
    """Work directories and shared-memory regions of servers whose owning process is gone (killed -9)."""
    stale = [d for d in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*")
             if (pid := _owner(d.name, WORKDIR_PREFIX, "-")) is not None and not pid_alive(pid)]
    stale += [f for f in SHM_DIR.glob(SHM_PREFIX + "*")
              if (pid := _owner(f.name, SHM_PREFIX, "_")) is not None and not pid_alive(pid)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return stale


def _die_with(parent: int):
    """preexec_fn: the server gets SIGTERM when its parent dies, however it dies (as PyTriton does)."""

    def preexec() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


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
        return cls(*free_ports(3))


def keep_log(path: Path) -> Optional[Path]:
    """Move the log at ``path`` to ``path``.1, shifting older ones (.1 to .2, ...; the one past LOG_KEEP is
    dropped): where it went, None when there was none."""
    if not path.is_file():
        return None
    for n in range(LOG_KEEP - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    kept = path.with_name(f"{path.name}.1")
    path.replace(kept)
    return kept


class ServerExited(KitError):
    """tritonserver exited before it was ready (a repository that failed to load, or a crash)."""


def _wait_unloaded(api: Triton, names: set, deadline: float) -> bool:
    """Poll the repository index until none of ``names`` is READY or UNLOADING; False at ``deadline``."""
    while any(m["name"] in names and m.get("state") in ("READY", "UNLOADING") for m in api.index()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def visible_gpus() -> int:
    """How many GPUs tritonserver will see: nvidia-smi's count, limited by CUDA_VISIBLE_DEVICES when set."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return count if visible is None else min(count, len([d for d in visible.split(",") if d.strip()]))


class LocalTriton:
    """``with LocalTriton(repo) as server:`` -- a ready tritonserver serving ``repo``; stopped on exit.

    ``address`` is where all three endpoints listen (127.0.0.1 unless told otherwise); ``admin_key`` guards the
    admin APIs (generated per start when not given). Models run under explicit model control, all loaded at start,
    so that they can be reloaded one by one and unloaded before the server stops. After the server died, ``stop()``
    then ``start()`` starts it again with the same ports, key and work directory (watchdog.Supervisor does).
    ``allocator`` and ``grpc_pool``: see GRPC_ALLOCATION_POOL; ``cuda_pool_mb``: see CUDA_POOL_MB (per visible GPU).
    """

    def __init__(self, repo: Path, ports: Optional[Ports] = None, log_path: Optional[Path] = None,
                 extra_args: Optional[List[str]] = None, verbose: int = 0, address: str = "127.0.0.1",
                 admin_key: Optional[str] = None, exit_timeout: int = EXIT_TIMEOUT_S, allocator: str = "auto",
                 grpc_pool: int = GRPC_ALLOCATION_POOL, cuda_pool_mb: int = CUDA_POOL_MB):
        self.repo = Path(repo).resolve()
        self.ports = ports or Ports()
        self.extra_args = list(extra_args or [])
        self.verbose = verbose
        self.address = address
        self.admin_key = admin_key or secrets.token_urlsafe(24)
        if any(c in self.admin_key for c in ",:= \n"):
            raise KitError("the admin key must not contain ',', ':', '=' or spaces (Triton's flag syntax)")
        self.exit_timeout = exit_timeout
        self.jemalloc = jemalloc_library(allocator)
        self.grpc_pool = grpc_pool
        self.cuda_pools = [f"--cuda-memory-pool-byte-size={gpu}:{cuda_pool_mb << 20}" for gpu in range(visible_gpus())]
        self._shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{next(_instances)}_"
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        self.log_path = Path(log_path) if log_path else self._workdir / "tritonserver.log"
        self.proc: Optional[subprocess.Popen] = None
        self._clients = threading.local()

    @property
    def api(self) -> Triton:
        """This server's HTTP endpoint, with the admin key (mnv3kit.triton); one client per thread: tritonclient's
        HTTP client runs on gevent, whose connections cannot cross threads (the watchdog has its own)."""
        if getattr(self._clients, "api", None) is None:
            self._clients.api = Triton(self.http_url, "http", self.admin_key, timeout=READY_TIMEOUT_S)
        return self._clients.api

    @property
    def host(self) -> str:
        """Where a client on this machine connects."""
        return "127.0.0.1" if self.address in ("0.0.0.0", "127.0.0.1") else self.address

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    def headers(self, protocol: str = "http") -> dict:
        return admin_headers(self.admin_key, protocol)

    def command(self, root: Path) -> List[str]:
        admin = f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}={self.admin_key}"
        return [str(root / "tritonserver" / "bin" / "tritonserver"),
                f"--model-repository={self.repo}",
                f"--backend-directory={self._workdir / 'backends'}",
                f"--http-address={self.address}", f"--grpc-address={self.address}",
                f"--metrics-address={self.address}",
                f"--http-port={self.ports.http}", f"--grpc-port={self.ports.grpc}",
                f"--metrics-port={self.ports.metrics}",
                f"--http-restricted-api={admin}", f"--grpc-restricted-protocol={admin}",
                "--model-control-mode=explicit", "--load-model=*",
                "--strict-readiness=true", "--exit-on-error=true", f"--exit-timeout-secs={self.exit_timeout}",
                "--allow-cpu-metrics=true", f"--grpc-infer-allocation-pool-size={self.grpc_pool}",
                # Python backend: start shared memory large enough for a max batch of 224x224 images; regions
                # named after this process, so that the next start can remove those of a killed one.
                "--backend-config=python,shm-default-byte-size=16777216",
                f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
                *self.cuda_pools, f"--log-verbose={self.verbose}", *self.extra_args]

    def start(self, timeout: float = READY_TIMEOUT_S) -> "LocalTriton":
        if not self.repo.is_dir():
            raise KitError(f"model repository {self.repo} does not exist: build it with "
                           f"`python build_repo.py --target local -o {self.repo}`")
        busy = [p for p in (self.ports.http, self.ports.grpc, self.ports.metrics) if port_in_use(p)]
        if busy:
            raise KitError(f"port(s) {busy} already in use (another Triton?): stop it or pass other ports")
        root = pytriton_root()
        remove_stale()
        backends = self._workdir / "backends"
        if not backends.is_dir():  # a start again keeps them: the stubs of the dead server may not be gone yet
            prepare_backends(root, backends)
        keep_log(self.log_path)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(root), stdout=log, stderr=subprocess.STDOUT,
                                     env=server_env(root, self.jemalloc), start_new_session=True,
                                     preexec_fn=_die_with(os.getpid()))
        log.close()
        self._clients = threading.local()  # connections to a server that died are no use
        self._wait_ready(timeout)
        self._private_regions()
        return self

    def _wait_ready(self, timeout: float) -> None:
        if self.api.wait_ready(timeout, alive=lambda: self.proc.poll() is None):
            return
        exited = self.proc.poll() is not None
        errors = self.error_lines()
        self.stop()
        if exited:
            raise ServerExited(f"tritonserver exited with code {self.proc.returncode} while loading {self.repo}:\n"
                               + "\n".join(errors[-15:]))
        raise KitError(f"tritonserver was not ready after {timeout:.0f}s; last log lines:\n" + "\n".join(errors[-15:]))

    def index(self) -> List[dict]:
        return self.api.index()

    def ready_models(self) -> List[str]:
        return self.api.ready_models()

    def version(self) -> str:
        return self.api.version()

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

    def write_admin_key(self, path: Optional[Path] = None) -> Path:
        """The key in a file only its owner can read (default: the server's work directory, removed at stop)."""
        path = Path(path) if path else self._workdir / "admin-key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        with os.fdopen(fd, "w") as f:
            f.write(self.admin_key + "\n")
        return path

    def reload(self, model: str) -> None:
        """Load ``model`` again with new instances; the loaded one serves until they are ready.

        A plain load of an unchanged model is a no-op, and a changed instance_group only swaps instances; a changed
        model parameter makes Triton load the whole model anew. Unloading first is no way out: in Triton 2.51 the
        unload of a model whose stub died never finishes while requests keep coming.
        """
        config = self.api.model_config_json(model)
        config.setdefault("parameters", {})["reload_stamp"] = {"string_value": str(time.time_ns())}
        self.api.load(model, config)  # returns once loaded
        self._private_regions()

    def load(self, model: str) -> None:
        """Load ``model`` from the repository as it is now. A loaded one keeps serving until the new one is ready."""
        self.api.load(model)  # returns once loaded
        self._private_regions()

    def unload(self, model: str, timeout: float = UNLOAD_TIMEOUT_S) -> None:
        """Unload ``model`` (Triton lets in-flight requests finish first) and wait until it is gone."""
        self.api.unload(model)
        if not _wait_unloaded(self.api, {model}, time.monotonic() + timeout):
            raise KitError(f"{model} still loaded {timeout:.0f}s after its unload")

    def _unload_all(self) -> None:
        """Unload every model (Triton lets in-flight requests finish first) and wait until none is left."""
        deadline = time.monotonic() + UNLOAD_TIMEOUT_S
        # a client of its own with short calls: whatever the caller's was doing when the stop came (a signal can
        # interrupt it anywhere) does not matter, and a busy server cannot hold the stop for a load's timeout
        api = Triton(self.http_url, "http", self.admin_key, timeout=STOP_CALL_TIMEOUT_S)
        try:
            names = api.ready_models()
            for name in names:
                api.unload(name)
            _wait_unloaded(api, set(names), deadline)
        except Exception:  # noqa: BLE001 - the server is going anyway; its own exit timeout covers the rest
            pass
        finally:
            api.close()

    def shm_regions(self) -> List[Path]:
        """This server's python-backend shared-memory regions (one per model instance)."""
        return sorted(SHM_DIR.glob(self._shm_prefix + "*"))

    def _private_regions(self) -> None:
        for region in self.shm_regions():
            try:
                region.chmod(PRIVATE_MODE)
            except FileNotFoundError:  # its model was unloaded meanwhile
                pass

    def stop(self) -> bool:
        """Stop the server and its stubs. True when it stopped by itself (exit code 0) and left nothing behind."""
        if self.proc is None:
            return True
        clean = True
        if self.proc.poll() is None:
            self._unload_all()
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the stubs are children of the server: stop them all
                self.proc.wait(timeout=self.exit_timeout + 10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                clean = False
            except ProcessLookupError:
                pass
        clean = clean and self.proc.returncode == 0
        try:  # stubs outliving the server (killed -9) would otherwise linger
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        leftovers = self.shm_regions()
        for region in leftovers:
            region.unlink(missing_ok=True)
        return clean and not leftovers

    def close(self) -> bool:
        clean = self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)
        return clean

    def __enter__(self) -> "LocalTriton":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
