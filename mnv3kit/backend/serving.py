"""The request queue of the kit's python-backend models: execute() takes the requests' inputs and returns at once;
one worker thread runs them in batches and sends each answer through the request's response sender (the python
backend's default mode allows that since Triton 24.06; the embedded server is 24.10).

Why the bound is here and not in Triton's queue policy: execute() hands requests over at once, so they wait in this
queue and Triton's stays nearly empty; a policy there bounds nothing this one does not (measured as a backstop in
front of it, perf/results/overload-20261206-0540: no stalls, no effect on overload). With an execute() that computed
before returning, any `default_queue_policy` stalled Triton 2.51's dynamic batcher (core:
dynamic_batch_scheduler.cc, rate_limiter.cc): a policy turns payload prefetching off, a new request then wakes the
batcher only if an instance is waiting for work at that instant, and a client's next request that landed while the
instance was still inside execute() left the batcher asleep for its fixed 500 ms idle wait. The bound and the
timeout are kept here, answered with Triton's own words ("Exceeds maximum queue size", "Request timeout expired")
and status UNAVAILABLE, so clients tell them apart as from a policy. Refusals of a full queue go back as execute()'s
return value, one message for the batch: through one response sender each, on 2 cores at 870-920 requests/s, they
fell behind and requests waited seconds in tritonserver's unbounded queue before being refused
(perf/results/overload-20261205-2323). Returning from execute() at once also lets the instance take the next
requests while a batch computes, and several of them run as one batch (up to max_batch_size rows; a smaller batch
than the last one waits briefly for the rest, see GATHER).

Copied beside model.py as mnv3kit_serving.py (the stub puts the version directory on sys.path).
"""

import json
import os
import threading
import time
from collections import deque
from typing import Callable, Dict, List, Optional, Tuple

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by the kit's tests and benchmarks
    pb_utils = None

# A batch smaller than the last one waits up to this fraction of the last batch's compute time for the rest:
# closed-loop clients answered together send their next requests one by one, a few ms apart on a small CPU.
GATHER = 0.25
QUEUE_FULL = "Exceeds maximum queue size"  # Triton's own message for a queue policy's refusal
TIMED_OUT = "Request timeout expired"  # and for a request that waited past its timeout
OVERLOAD_HOLD_S = 1.0  # the queue counts as overloaded this long after its last refusal
# While overloaded, a CPU model computes on one core fewer (yield_core: always), on all (never), or on one fewer
# while other work than this server's keeps at least OUTSIDE_BUSY_CORES of its CPU set busy (auto), looked at every
# YIELD_CHECK_S: a load generator on the server's cores, not one on other cores or another host.
YIELD_MODES = ("auto", "always", "never")
OUTSIDE_BUSY_CORES = 0.25
YIELD_CHECK_S = 1.0


def read_config(args: dict) -> Tuple[dict, Dict[str, str], str, str]:
    """From Triton's initialize() args: the model's config, its string parameters, its input and output names."""
    config = json.loads(args["model_config"])
    params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    return config, params, config["input"][0]["name"], config["output"][0]["name"]


def error_response(message: str, code: Optional[int] = None):
    code = pb_utils.TritonError.INTERNAL if code is None else code
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


class CpuShare:
    """Cores of this process's CPU set kept busy by work outside the server (the parent tritonserver and its stubs)
    between two calls of ``outside()``: busy time of those CPUs in /proc/stat less the server's own CPU time."""

    def __init__(self, server_pid: int):
        self.cpus = {f"cpu{cpu}" for cpu in os.sched_getaffinity(0)}
        self.server_pid = server_pid
        self._last = self._sample()

    def _server_ticks(self) -> int:
        ticks, todo = 0, [self.server_pid]
        while todo:
            pid = todo.pop()
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
                for task in os.listdir(f"/proc/{pid}/task"):
                    todo += map(int, open(f"/proc/{pid}/task/{task}/children").read().split())
            except OSError:  # gone meanwhile
                continue
        return ticks

    def _sample(self) -> Tuple[float, int, int]:
        busy = 0
        with open("/proc/stat") as stat:
            for line in stat:
                name, *ticks = line.split()
                if name in self.cpus:  # user nice system idle iowait irq softirq: all but idle and iowait
                    busy += sum(int(t) for t in ticks[:7]) - int(ticks[3]) - int(ticks[4])
        return time.monotonic(), busy, self._server_ticks()

    def outside(self) -> float:
        (then, busy0, server0), self._last = self._last, self._sample()
        now, busy, server = self._last
        return max(0.0, (busy - busy0 - (server - server0)) / os.sysconf("SC_CLK_TCK") / max(now - then, 1e-3))


class _Item:
    __slots__ = ("inputs", "rows", "sender", "deadline")

    def __init__(self, inputs, rows: int, sender, deadline: float):
        self.inputs, self.rows, self.sender, self.deadline = inputs, rows, sender, deadline


class RequestQueue:
    """``submit(requests)`` from execute(); answers come from ``run(list of inputs) -> list of responses``.

    ``take(request) -> (inputs, rows)`` copies what the worker needs out of a request: Triton frees a request's
    tensors when execute() returns. ``max_queue``: requests waiting (not counting the batch that runs), 0 for no
    bound; ``timeout_us``: how long one may wait, 0 for no limit, or the request's own timeout when it sets one.
    The queue is overloaded while it refused a request within the last OVERLOAD_HOLD_S; when that changes, the
    worker logs it. ``adapt(overloaded, yielding)``, if given, tells the model before a batch when either changed:
    whether the queue is overloaded, and whether to compute on one core fewer (yielding) as ``yield_mode``
    (YIELD_MODES) says.
    """

    def __init__(self, name: str, run: Callable[[list], list], take: Callable, max_batch: int, max_queue: int,
                 timeout_us: int, setup: Optional[Callable[[], None]] = None,
                 log: Callable[[str], None] = print, adapt: Optional[Callable[[bool, bool], None]] = None,
                 yield_mode: str = "auto"):
        """``setup`` runs first, on the worker thread (what ``run`` needs made there); its exception is raised
        here."""
        if yield_mode not in YIELD_MODES:
            raise ValueError(f"{name}: yield_core must be one of {', '.join(YIELD_MODES)}, got {yield_mode!r}")
        self.name, self.run, self.take, self.log = name, run, take, log
        self.max_batch, self.max_queue, self.timeout_us = max(1, max_batch), max_queue, timeout_us
        self._items: deque = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._last_rows, self._last_compute_s = 1, 0.0  # of the batch that ran last
        self._refused_at, self._overloaded = -OVERLOAD_HOLD_S, False
        self.adapt, self.yield_mode, self._share, self._check_at = adapt, yield_mode, None, 0.0
        self._adapted = (False, False)  # (overloaded, yielding) as the model was last told
        self._set_up = threading.Event()
        self._setup_error: Optional[BaseException] = None
        self._worker = threading.Thread(target=self._loop, args=(setup,), name=f"{name}-worker", daemon=True)
        self._worker.start()
        self._set_up.wait()
        if self._setup_error is not None:
            raise self._setup_error

    def submit(self, requests) -> Optional[list]:
        """One execute()'s requests (a batch Triton formed, at most max_batch_size rows) are admitted together, or
        refused together when max_queue requests already wait: model_warmup's batch of single requests always fits.
        Returns what execute() returns: None (the worker answers), or the refusals, which go back to Triton in one
        message with execute()'s return instead of one round trip per request through a response sender."""
        with self._ready:
            full = self.max_queue and len(self._items) >= self.max_queue
        if full:
            self._refused_at = time.monotonic()
            return [error_response(f"{QUEUE_FULL} ({self.max_queue} requests wait in {self.name}'s queue); retry "
                                   f"later", pb_utils.TritonError.UNAVAILABLE) for _ in requests]
        for request in requests:
            sender = request.get_response_sender()
            try:
                inputs, rows = self.take(request)
            except Exception as exc:  # noqa: BLE001 - this request's input alone is at fault
                self._send(sender, error_response(str(exc), pb_utils.TritonError.INVALID_ARG))
                continue
            timeout_us = request.timeout() or self.timeout_us
            deadline = time.monotonic() + timeout_us / 1e6 if timeout_us else 0.0
            with self._ready:
                self._items.append(_Item(inputs, rows, sender, deadline))
                self._ready.notify()

    def _next_batch(self) -> Optional[List[_Item]]:
        """The oldest waiting requests, up to max_batch rows (at least one request); expired ones are answered."""
        with self._ready:
            while not self._items and not self._closed:
                self._ready.wait()
            if not self._items:
                return None
            # as many rows as the last batch had (at concurrency 1 that is one: no wait), or the window's end
            target, until = min(self._last_rows, self.max_batch), time.monotonic() + GATHER * self._last_compute_s
            while not self._closed and sum(item.rows for item in self._items) < target:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            batch, rows, expired, now = [], 0, [], time.monotonic()
            while self._items and (not batch or rows + self._items[0].rows <= self.max_batch):
                item = self._items.popleft()
                if item.deadline and now > item.deadline:
                    expired.append(item)
                    continue
                batch.append(item)
                rows += item.rows
        for item in expired:
            self._send(item.sender, error_response(f"{TIMED_OUT} in {self.name}'s queue; retry later",
                                                   pb_utils.TritonError.UNAVAILABLE))
        return batch

    def _loop(self, setup: Optional[Callable[[], None]]) -> None:
        try:
            if setup is not None:
                setup()
        except BaseException as exc:  # noqa: BLE001 - raised again by the constructor, in initialize()
            self._setup_error = exc
            return
        finally:
            self._set_up.set()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            started = time.monotonic()
            overloaded = started - self._refused_at < OVERLOAD_HOLD_S
            if overloaded != self._overloaded:
                self._overloaded = overloaded
                self.log(f"{self.name}: overloaded, refusing requests beyond {self.max_queue} waiting" if overloaded
                         else f"{self.name}: no longer overloaded (no refusal for {OVERLOAD_HOLD_S:g} s)")
            if self.adapt is not None:
                self._adapt(overloaded, started)
            try:
                responses = self.run([item.inputs for item in batch])
            except Exception as exc:  # noqa: BLE001 - the error goes back to every request of the batch
                responses = [error_response(f"inference failed: {exc}")] * len(batch)
            self._last_compute_s = time.monotonic() - started
            self._last_rows = sum(item.rows for item in batch)
            for item, response in zip(batch, responses):
                self._send(item.sender, response)

    def _adapt(self, overloaded: bool, now: float) -> None:
        """Tell the model of the overload, and to yield a core or take it back as yield_mode says."""
        yielding, why = self._adapted[1], ""
        if not overloaded or self.yield_mode != "auto":
            self._share = None
            yielding = overloaded and self.yield_mode == "always"
        else:
            try:
                if self._share is None:  # measured from the overload's start, while computing on every core
                    self._share, self._check_at = CpuShare(os.getppid()), now + YIELD_CHECK_S
                elif now >= self._check_at:
                    outside = self._share.outside()
                    self._check_at = now + YIELD_CHECK_S
                    # once yielding, until that falls below half the threshold: a yield moves CPU time between the two
                    yielding = outside >= (OUTSIDE_BUSY_CORES / 2 if yielding else OUTSIDE_BUSY_CORES)
                    why = f" ({outside:.2f} of the CPU set's cores busy outside the server)"
            except OSError as exc:  # /proc unreadable: keep every core
                self.log(f"{self.name}: could not read the CPU set's load: {exc}")
        if (overloaded, yielding) == self._adapted:
            return
        try:
            self.adapt(overloaded, yielding)
        except Exception as exc:  # noqa: BLE001 - the batch still runs as it would have
            self.log(f"{self.name}: could not adapt to the overload: {exc}")
            return
        if yielding != self._adapted[1]:
            self.log(f"{self.name}: computing on one core fewer{why}" if yielding else
                     f"{self.name}: computing on every core again{why}")
        self._adapted = (overloaded, yielding)

    def _send(self, sender, response) -> None:
        try:
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # noqa: BLE001 - e.g. the client is gone; the other answers still go out
            self.log(f"{self.name}: could not send a response: {exc}")

    def close(self) -> None:
        """Answer what is queued, then stop the worker."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._worker.join(timeout=30)
