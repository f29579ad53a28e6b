"""Open-loop load for reliability measurements: requests sent at a fixed rate whatever the answers, over gRPC.

A closed loop (perf_analyzer's concurrency mode) slows down with the server and never overloads it; real clients do
not wait for each other. Used by perf/overload.py (shedding at twice the capacity) and perf/fault_recovery.py (stub kill,
model update under load). Every request's send time, answer time and error are kept.
"""

import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np

from ..spec import INPUT_DIMS, OVERLOADED

# What Triton answers when the queue policy sheds a request (both with status UNAVAILABLE)


@dataclass
class Outcome:
    sent: float  # time.monotonic()
    done: float
    error: Optional[str] = None

    @property
    def latency_ms(self) -> float:
        return (self.done - self.sent) * 1000

    @property
    def rejected(self) -> bool:
        return self.error is not None and any(r in self.error for r in OVERLOADED)


def _input(grpcclient, spec, batch: int = 1, seed: int = 0):
    """One request's input for a kit model: normal noise as normalized floats, or random pixels."""
    rng = np.random.default_rng(seed)
    if spec.input_dtype == "TYPE_UINT8":
        data, datatype = rng.integers(0, 256, (batch, *INPUT_DIMS), dtype=np.uint8), "UINT8"
    else:
        data, datatype = rng.standard_normal((batch, *INPUT_DIMS)).astype(np.float32), "FP32"
    inp = grpcclient.InferInput(spec.input_name, list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    return inp


def capacity(url: str, spec, seconds: float, concurrency: int) -> float:
    """Answers per second of a closed loop: `concurrency` clients sending batch-1 requests back to back."""
    import tritonclient.grpc as grpcclient

    stop = time.monotonic() + seconds
    counts = [0] * concurrency

    def worker(i):
        client = grpcclient.InferenceServerClient(url)
        inp = _input(grpcclient, spec)
        while time.monotonic() < stop:
            client.infer(spec.name, [inp], client_timeout=60)
            counts[i] += 1
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start)


class OpenLoop:
    """Requests of ``batch`` images for one kit model (a ModelSpec) at ``url`` (gRPC), each with its own timeout."""

    def __init__(self, url: str, spec, batch: int = 1, timeout_s: float = 30.0):
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.model, self.timeout_s = spec.name, timeout_s
        self.inp = _input(grpcclient, spec, batch)
        self.out = grpcclient.InferRequestedOutput(spec.output_name)

    def run(self, rate: float, duration_s: float, stop: Optional[threading.Event] = None) -> List[Outcome]:
        """Send for duration_s (or until stop is set), then wait for every answer (each bounded by timeout_s)."""
        done: "queue.Queue[Outcome]" = queue.Queue()
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < duration_s and not (stop and stop.is_set()):
            due = start + sent / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            t0 = time.monotonic()

            def callback(result, error, t0=t0):
                done.put(Outcome(t0, time.monotonic(), None if error is None else str(error)))

            self.client.async_infer(self.model, [self.inp], callback, outputs=[self.out],
                                    client_timeout=self.timeout_s)
            sent += 1
        return [done.get(timeout=self.timeout_s + 30) for _ in range(sent)]

    def close(self) -> None:
        self.client.close()


@contextmanager
def background_load(url: str, spec, rate: float, timeout_s: float = 60.0) -> Iterator[List[Outcome]]:
    """Open-loop load in a thread while the with block runs; the yielded list holds every outcome at its end."""
    stop, outcomes = threading.Event(), []
    load = OpenLoop(url, spec, timeout_s=timeout_s)
    thread = threading.Thread(target=lambda: outcomes.extend(load.run(rate, float("inf"), stop)))
    thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        thread.join()
        load.close()


def summarize(outcomes: List[Outcome], duration_s: float) -> dict:
    ok = [o.latency_ms for o in outcomes if o.error is None]
    rejected = [o.latency_ms for o in outcomes if o.rejected]
    failed = [o for o in outcomes if o.error is not None and not o.rejected]

    def pct(values, q):
        return round(float(np.percentile(values, q)), 1) if values else None

    return {"sent": len(outcomes), "rate": round(len(outcomes) / duration_s, 1), "ok": len(ok),
            "rejected": len(rejected), "failed": len(failed),
            "rejected_pct": round(100 * len(rejected) / max(1, len(outcomes)), 1),
            "ok_p50_ms": pct(ok, 50), "ok_p99_ms": pct(ok, 99), "rejected_p99_ms": pct(rejected, 99),
            "errors": sorted({o.error.splitlines()[0][:160] for o in failed})[:5]}
