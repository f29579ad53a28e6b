"""Open-loop load for reliability measurements: requests sent at a fixed rate whatever the answers, over gRPC.

A closed loop (perf_analyzer's concurrency mode) slows down with the server and never overloads it; real clients do
not wait for each other. Used by perf/overload.py (shedding at twice the capacity) and perf/fault_recovery.py (stub kill,
model update under load). The requests carry photographs and every answer is checked against logits computed
in-process from the repository's artifact (mnv3kit.measure.soak's targets); each request's send time, answer time,
error and wrong answer are kept.
"""

import queue
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import KitError
from ..spec import MODELS_BY_NAME, OVERLOADED, ModelSpec
from .soak import Target, check_answer, targets


@dataclass
class Outcome:
    sent: float  # time.monotonic()
    done: float
    error: Optional[str] = None
    wrong: Optional[str] = None  # why an answer was wrong (beyond the tolerance of every accepted reference)

    @property
    def latency_ms(self) -> float:
        return (self.done - self.sent) * 1000

    @property
    def rejected(self) -> bool:
        return self.error is not None and any(r in self.error for r in OVERLOADED)


# Triton's gRPC inference method (inference.GRPCInferenceService, whose messages tritonclient.grpc.service_pb2 holds)
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def rpc_error(exc) -> str:
    """A gRPC error as tritonclient words it: "[StatusCode.X] details"."""
    return f"[{exc.code()}] {exc.details()}"


def model_infer(url: str):
    """(channel, ModelInfer callable) taking requests serialized beforehand. tritonclient's infer() and async_infer()
    build and serialize each request anew: on 2 cores, at 150 requests/s of 602 KB (Small, ONNX), the open loop took
    0.16 cores that way and 0.10-0.12 with the bytes made once, cores the server sharing the host does not get."""
    import grpc
    from tritonclient.grpc import service_pb2

    channel = grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1),
                                                  ("grpc.max_receive_message_length", -1)])
    return channel, channel.unary_unary(MODEL_INFER, response_deserializer=service_pb2.ModelInferResponse.FromString)


class Requests:
    """Batch-1 requests of ``target``'s photographs in turn (ModelInferRequest messages, serialized once), and the
    check of their answers against the target's in-process reference (or any of ``alternatives``': e.g. the weights
    a rebuild under load swaps in)."""

    def __init__(self, target: Target, alternatives: Sequence[Target] = ()):
        from tritonclient.grpc import service_pb2
        from tritonclient.utils import np_to_triton_dtype

        self.target, self.accepted = target, (target, *alternatives)
        self.messages = []
        for row in range(len(target.reference)):
            x = target.make([row])
            request = service_pb2.ModelInferRequest(model_name=target.name)
            request.inputs.add(name=target.input_name, datatype=np_to_triton_dtype(x.dtype), shape=x.shape)
            request.outputs.add(name=target.output_name)
            request.raw_input_contents.append(x.tobytes())
            self.messages.append(request.SerializeToString())

    def message(self, n: int) -> bytes:
        """The nth request (photograph n modulo their count)."""
        return self.messages[n % len(self.messages)]

    def check(self, n: int, response) -> Optional[str]:
        """Why the nth request's answer (a ModelInferResponse) is wrong, or None."""
        from tritonclient.grpc import InferResult

        logits = InferResult(response).as_numpy(self.target.output_name)
        row = [n % len(self.messages)]
        why = [check_answer(t, row, logits) for t in self.accepted]
        return None if None in why else why[0]


def model_target(repo: Path, model: str) -> Tuple[ModelSpec, Target]:
    """(spec, soak Target) of one served model of a --target local repository; KitError if it has none."""
    spec = MODELS_BY_NAME.get(model)
    if spec is None or not (repo / model / "config.pbtxt").is_file():
        raise KitError(f"{repo} has no model {model!r}")
    with tempfile.TemporaryDirectory(prefix="mnv3kit-target-") as work:
        (target,) = targets(repo, [model], Path(work))
    return spec, target


def closed_loop(url: str, clients: int, seconds: float, message: Callable[[int], bytes],
                check: Callable[[int, object], Optional[str]]) -> Tuple[int, int, Dict[str, int]]:
    """``clients`` threads sending message(n) back to back for ``seconds``, each answer checked: (answers, wrong
    answers, failed requests by the first words of their error)."""
    import grpc

    stop = time.monotonic() + seconds
    answers, wrong, errors = [0] * clients, [0] * clients, [Counter() for _ in range(clients)]

    def worker(i):
        channel, infer = model_infer(url)
        n = i
        while time.monotonic() < stop:
            try:
                response = infer(message(n), timeout=60)
                answers[i] += 1
                wrong[i] += check(n, response) is not None
            except grpc.RpcError as exc:
                errors[i][rpc_error(exc)[:90]] += 1
            n += clients
        channel.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(answers), sum(wrong), dict(sum(errors, Counter()))


def capacity(url: str, target: Target, seconds: float, concurrency: int) -> Tuple[float, int]:
    """Answers per second of a closed loop: `concurrency` clients sending batch-1 requests back to back; and how
    many of those answers were wrong. KitError if a request failed: the rate would not be the server's capacity."""
    requests = Requests(target)
    start = time.monotonic()
    answers, wrong, errors = closed_loop(url, concurrency, seconds, requests.message, requests.check)
    rate = answers / (time.monotonic() - start)
    if errors:
        raise KitError(f"{target.name}: {sum(errors.values())} requests failed while measuring its capacity "
                       f"({'; '.join(errors)}); is the server overloaded or its queue bound below {concurrency}?")
    return rate, wrong


class OpenLoop:
    """Batch-1 requests for one served model (a soak Target: inputs and reference logits) at ``url`` (gRPC), each
    with its own timeout, every answer checked."""

    def __init__(self, url: str, target: Target, timeout_s: float = 30.0, alternatives: Sequence[Target] = ()):
        self.channel, self.infer = model_infer(url)
        self.timeout_s = timeout_s
        self.requests = Requests(target, alternatives)

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
            future = self.infer.future(self.requests.message(sent), timeout=self.timeout_s)
            future.add_done_callback(lambda f, t0=t0, n=sent: done.put(self._outcome(f, t0, n)))
            sent += 1
        return [done.get(timeout=self.timeout_s + 30) for _ in range(sent)]

    def _outcome(self, future, t0: float, n: int) -> Outcome:
        import grpc

        try:
            response = future.result()
        except grpc.RpcError as exc:
            return Outcome(t0, time.monotonic(), rpc_error(exc))
        return Outcome(t0, time.monotonic(), wrong=self.requests.check(n, response))

    def close(self) -> None:
        self.channel.close()


@contextmanager
def background_load(url: str, target: Target, rate: float, timeout_s: float = 60.0,
                    alternatives: Sequence[Target] = ()) -> Iterator[List[Outcome]]:
    """Open-loop load in a thread while the with block runs; the yielded list holds every outcome at its end."""
    stop, outcomes = threading.Event(), []
    load = OpenLoop(url, target, timeout_s=timeout_s, alternatives=alternatives)
    thread = threading.Thread(target=lambda: outcomes.extend(load.run(rate, float("inf"), stop)))
    thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        thread.join()
        load.close()


def summarize(outcomes: List[Outcome], duration_s: float) -> dict:
    """Counts (ok: right answers; wrong: answers beyond the tolerance; rejected: shed by the queue policy; failed:
    any other error) and latencies."""
    ok = [o.latency_ms for o in outcomes if o.error is None and o.wrong is None]
    wrong = [o for o in outcomes if o.wrong is not None]
    rejected = [o.latency_ms for o in outcomes if o.rejected]
    failed = [o for o in outcomes if o.error is not None and not o.rejected]

    def pct(values, q):
        return round(float(np.percentile(values, q)), 1) if values else None

    return {"sent": len(outcomes), "rate": round(len(outcomes) / duration_s, 1), "ok": len(ok),
            "wrong": len(wrong), "rejected": len(rejected), "failed": len(failed),
            "rejected_pct": round(100 * len(rejected) / max(1, len(outcomes)), 1),
            "ok_p50_ms": pct(ok, 50), "ok_p99_ms": pct(ok, 99), "rejected_p99_ms": pct(rejected, 99),
            "errors": sorted({o.error.splitlines()[0][:160] for o in failed})[:5],
            "wrong_examples": sorted({o.wrong for o in wrong})[:5]}
