"""Keeping the embedded Triton serving: reload a model whose python-backend stub died, load a rebuilt repository
(Watchdog), start a tritonserver that died again (Supervisor, which runs the Watchdog too).

Triton 2.51's python backend neither restarts a dead stub nor marks its model unready: /v2/health/ready and the
model's readiness keep answering 200 while every request fails with "Stub process '...' is not healthy" (after a 1 s
health check each). The watchdog compares, every interval, each READY python-backend model's live stub processes
with its instance count (an ensemble, or any model of another backend, runs no stub and is left alone); a model
short of stubs twice in a row is loaded anew through the repository API (explicit model control, with the admin
key; see LocalTriton.reload). Triton keeps reporting the model ready meanwhile: the only way to make it say
otherwise, unloading, never finishes for a model whose stub died while requests keep coming (measured).

A rebuilt repository (build_repo.py swaps the whole directory in with one rename, so its manifest.json is a new
file) is loaded model by model through the same API: Triton keeps the loaded version serving until the new one is
loaded and warmed up, then switches, so no request fails.
"""

import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional

from tritonclient.utils import InferenceServerException

from .errors import KitError
from .process import descendants
from .server import READY_TIMEOUT_S, LocalTriton, ServerExited, keep_log
from .spec import MANIFEST_FILE, PYTHON_BACKEND

RESTART_WINDOW_S = 600.0  # Supervisor's restarts count the deaths within this many seconds
POLL_S = 0.5  # how often the Supervisor looks whether tritonserver is still running


def stub_count(config: dict) -> int:
    """The stub processes a model's config makes Triton run: one per python-backend instance (instance_group count,
    per listed GPU for KIND_GPU); 0 for an ensemble or a model of any other backend."""
    if config.get("backend") != PYTHON_BACKEND:
        return 0
    return sum(int(group.get("count", 1)) * max(1, len(group.get("gpus", [])))
               for group in config.get("instance_group", []))


def live_stubs(server: LocalTriton) -> Dict[str, int]:
    """Live (not zombie) stub processes per model directory name, from the server's process tree."""
    counts: Dict[str, int] = {}
    for pid in descendants(server.proc.pid)[1:]:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if state == "Z" or not args or not args[0].endswith(b"triton_python_backend_stub"):
            continue
        for arg in args[1:]:  # the model's 1/model.py, under the repository
            path = Path(arg.decode(errors="replace"))
            if path.name == "model.py" and server.repo in path.parents:
                model = path.relative_to(server.repo).parts[0]
                counts[model] = counts.get(model, 0) + 1
                break
    return counts


class Watchdog(threading.Thread):
    """``Watchdog(server).start()``: checks every ``interval`` seconds until ``stop()``; ``events`` records each
    recovery (model, seconds from detection to READY again, whether it succeeded)."""

    def __init__(self, server: LocalTriton, interval: float = 0.5, log: Callable[[str], None] = print):
        super().__init__(name="mnv3kit-watchdog", daemon=True)
        self.server, self.interval, self.log = server, interval, log
        self._halt = threading.Event()
        self._instances: Dict[str, int] = {}
        self._stamp = self._repository_stamp()
        self.events: List[dict] = []

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        self.join(timeout)  # a reload in progress is left to the server's own shutdown

    def instances(self, model: str) -> int:
        """The stub processes ``model`` runs when healthy (stub_count of the config the server runs)."""
        if model not in self._instances:
            self._instances[model] = stub_count(self.server.api.model_config_json(model))
        return self._instances[model]

    def broken(self) -> List[str]:
        ready = [m["name"] for m in self.server.index() if m.get("state") == "READY"]
        stubs = live_stubs(self.server)
        return [m for m in ready if stubs.get(m, 0) < self.instances(m)]

    def run(self) -> None:
        suspects: set = set()
        while not self._halt.wait(self.interval):
            try:
                self.follow_repository()
                now = set(self.broken())
            except (InferenceServerException, OSError, ValueError):
                continue  # the server is stopping or busy; the next round tells
            for model in sorted(now & suspects):  # short of stubs twice in a row: not a reload in progress
                self.recover(model)
            suspects = now - suspects

    def _repository_stamp(self):
        try:
            stat = (self.server.repo / MANIFEST_FILE).stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def follow_repository(self) -> None:
        stamp = self._repository_stamp()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        models = sorted(p.parent.name for p in self.server.repo.glob("*/config.pbtxt"))
        started = time.monotonic()
        self.log(f"watchdog: {self.server.repo} was rebuilt; loading {', '.join(models)} (the loaded versions "
                 f"serve until then)")
        for model in models:
            self.server.load(model)
        self._instances.clear()
        seconds = time.monotonic() - started
        self.events.append({"model": ",".join(models), "event": "update", "seconds": round(seconds, 2), "ok": True})
        self.log(f"watchdog: {self.server.repo}: new build serving after {seconds:.1f}s")

    def recover(self, model: str) -> None:
        started = time.monotonic()
        self.log(f"watchdog: {model}: a backend stub process died; reloading the model")
        ok = True
        try:
            self.server.reload(model)
        except Exception as exc:  # noqa: BLE001 - reported; the next round tries again
            ok = False
            self.log(f"watchdog: {model}: reload failed: {exc}")
        seconds = time.monotonic() - started
        self.events.append({"model": model, "event": "stub died", "seconds": round(seconds, 2), "ok": ok})
        if ok:
            self.log(f"watchdog: {model}: ready again after {seconds:.1f}s")


class Supervisor:
    """``Supervisor(server).start()``, then ``run()`` until ``stop()``: keeps a LocalTriton serving.

    A Watchdog runs beside the server (``watchdog=False``: none). A tritonserver that dies, while serving or while
    loading after a restart, is started again in place (same ports, admin key and work directory; the dead one's
    log kept, see server.keep_log), at most ``restarts`` times within ``window_s`` seconds; one death more raises
    KitError with its last error lines. A first start that fails raises, as LocalTriton.start does. ``log`` gets
    one line per event.
    """

    def __init__(self, server: LocalTriton, restarts: int = 3, window_s: float = RESTART_WINDOW_S,
                 watchdog: bool = True, timeout: float = READY_TIMEOUT_S, log: Callable[[str], None] = print):
        self.server, self.restarts, self.window_s, self.timeout, self.log = server, restarts, window_s, timeout, log
        self.with_watchdog = watchdog
        self.watchdog: Optional[Watchdog] = None
        self.deaths: Deque[float] = deque()  # monotonic times of the deaths within window_s
        self._halt = threading.Event()
        self._lock = threading.Lock()  # stop() never closes the server in the middle of a restart

    def start(self) -> LocalTriton:
        self.server.start(self.timeout)
        self._watch()
        return self.server

    def run(self) -> None:
        """Until stop(): start the server again whenever it has died."""
        while not self._halt.wait(POLL_S):
            with self._lock:
                if not self._halt.is_set() and self.server.proc.poll() is not None:
                    self.restart()

    def restart(self) -> None:
        """Start the dead server again; one that dies again before it is ready is one more death."""
        while True:
            died = f"tritonserver exited with code {self.server.proc.returncode}"
            errors = self.server.error_lines()
            now = time.monotonic()
            self.deaths.append(now)
            while self.deaths[0] < now - self.window_s:
                self.deaths.popleft()
            window = f"{self.window_s / 60:g} minutes"
            if len(self.deaths) > self.restarts:
                raise KitError(f"{died}, {len(self.deaths)} time(s) in {window} (--restarts {self.restarts}):\n"
                               + "\n".join(errors[-15:]))
            self._unwatch()
            self.server.stop()
            kept = keep_log(self.server.log_path)
            self.log(f"{died}; starting it again ({len(self.deaths)} of --restarts {self.restarts} in {window}). "
                     f"Its log is kept in {kept}; its last lines:\n" + "\n".join(errors[-5:]))
            try:
                self.server.start(self.timeout)
            except ServerExited:
                continue
            self.log(f"tritonserver ready again (log {self.server.log_path})")
            self._watch()
            return

    def stop(self) -> bool:
        """Stop the watchdog and the server (LocalTriton.close): True when it stopped cleanly."""
        self._halt.set()
        with self._lock:
            self._unwatch()
            return self.server.close()

    def _watch(self) -> None:
        if self.with_watchdog:
            self.watchdog = Watchdog(self.server, log=self.log)
            self.watchdog.start()

    def _unwatch(self) -> None:
        if self.watchdog:
            self.watchdog.stop()
            self.watchdog = None
