"""Health that tells the truth, and zero-downtime updates: reload a model whose python-backend stub died, load a
rebuilt repository.

Triton 2.51's python backend neither restarts a dead stub nor marks its model unready: /v2/health/ready and the
model's readiness keep answering 200 while every request fails with "Stub process '...' is not healthy" (after a 1 s
health check each). The watchdog compares, every interval, each READY model's live stub processes with its instance
count; a model short of stubs twice in a row is loaded anew through the repository API (explicit model control,
with the admin key; see LocalTriton.reload). Triton keeps reporting the model ready meanwhile: the only way to make it
say otherwise, unloading, never finishes for a model whose stub died while requests keep coming (measured).

A rebuilt repository (build_repo.py swaps the whole directory in with one rename, so its manifest.json is a new
file) is loaded model by model through the same API: Triton keeps the loaded version serving until the new one is
loaded and warmed up, then switches, so no request fails.
"""

import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

from tritonclient.utils import InferenceServerException

from .load import descendants
from .server import LocalTriton
from .spec import MANIFEST_FILE



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
        if model not in self._instances:
            config = self.server.api.model_config_json(model)
            self._instances[model] = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
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
