"""Classify images through Triton (HTTP or gRPC) with the kit's preprocessing and Triton's classification extension."""

import queue
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import KitError
from .preprocess import ImageError, image_files, preprocess_file
from .spec import ADMIN_KEY_ENV, DEFAULT_URLS, INPUT_DIMS, OVERLOADED, PROTOCOLS
from .triton import Restricted, Triton

INPUT_TYPES = {"TYPE_FP32": "FP32", "TYPE_UINT8": "UINT8"}  # normalized floats, or pixels the model normalizes
SEND_MODES = ("auto", "bytes", "tensor")  # bytes: the files themselves, to a model with an encoded-image input
# Requests in flight at once with --async: below the kit's default max_queue_size (32), so that a folder of images
# does not overflow the model's queue.
MAX_IN_FLIGHT = 16


class ServerUnreachable(KitError):
    exit_code = 3


class ModelUnavailable(KitError):
    exit_code = 4


class ContractMismatch(KitError):
    exit_code = 5


class InferenceFailed(KitError):
    exit_code = 6


class Overloaded(InferenceFailed):
    """The server shed the request (queue full or timed out in it): about the load, not about the request."""


class TimedOut(KitError):
    exit_code = 7


EXIT_CODES = {0: "every image classified", 1: "some images could not be read (the others were classified)",
              2: "bad arguments", 3: "server unreachable, or it went away midway", 4: "model unknown or not ready",
              5: "the model's input/output contract is not the kit's",
              6: "the server failed or refused an inference request (refused: overloaded, retry later)",
              7: "no answer within --timeout", 141: "output closed early (e.g. piped into head)"}


@dataclass
class Classified:
    path: str
    top: List[Tuple[str, int, float, float]]  # label, class index, probability, logit
    logits: List[float] = field(repr=False)


@dataclass
class Unreadable:
    path: str
    error: str


def expand_inputs(items: Sequence[Union[str, Path]]) -> List[Path]:
    """Files as given (tried even without an image extension); folders -> their image files, recursively, sorted."""
    paths: List[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            paths += image_files(item)
        else:
            paths.append(item)
    return paths


def server_address(url: Optional[str], protocol: str) -> str:
    """HOST:PORT for tritonclient, which refuses schemes: -u may start with http:// or grpc:// (the protocol, which
    must agree with -i) and end with a slash."""
    if url is None:
        return DEFAULT_URLS[protocol]
    scheme, sep, address = url.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme not in PROTOCOLS:
            raise KitError(f"-u {url}: {scheme}:// is not supported (this client speaks plain HTTP or gRPC, no TLS): "
                           f"give HOST:PORT, e.g. {DEFAULT_URLS[protocol]}")
        if scheme != protocol:
            raise KitError(f"-u {url} is a {scheme} address but -i is {protocol}: pass -i {scheme}, or the "
                           f"server's {protocol} HOST:PORT")
    else:
        address = url
    address = address.rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or any(c.isspace() or c == "/" for c in address) or not port.isdigit() or not 0 < int(port) < 65536:
        raise KitError(f"-u {url}: expected HOST:PORT, e.g. {DEFAULT_URLS[protocol]} ({protocol}:// before it is "
                       f"accepted)")
    return address


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class TritonClassifier:
    """One model on one server; checks reachability, readiness and the tensor contract up front."""

    def __init__(self, url: Optional[str] = None, protocol: str = "http", model: str = "mobilenetv3_pt",
                 timeout: float = 60.0, concurrency: int = 1, send: str = "auto",
                 admin_key: Optional[str] = None):
        if send not in SEND_MODES:
            raise KitError(f"send mode must be one of {', '.join(SEND_MODES)}")
        self.send = send
        self.protocol, self.model, self.timeout = protocol, model, timeout
        # only the repository index (an admin API) needs the key
        self.triton = Triton(server_address(url, protocol), protocol, admin_key, timeout, concurrency)
        self.url, self.client, self.module = self.triton.url, self.triton.client, self.triton.module
        self._hub = None
        if protocol == "http":
            import gevent

            # A failed async request is re-raised by get_result and reported once, as one line; gevent's hub
            # would also print each one's traceback. Restored by close(): the hub is the thread's, not ours.
            self._hub = gevent.get_hub()
            self._not_error = self._hub.NOT_ERROR
            self._hub.NOT_ERROR = tuple({*self._not_error, Exception, gevent.Timeout})
        self._check_server()
        self._read_contract()

    # -- server and model checks -------------------------------------------------------------------------------
    def _send(self, method: str, *args, **kwargs):
        if self.protocol == "grpc":  # the HTTP client got its timeouts at construction
            kwargs.setdefault("client_timeout", self.timeout)
        return getattr(self.client, method)(*args, **kwargs)

    def _call(self, method: str, *args, **kwargs):
        try:
            return self._send(method, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one of the documented exit codes
            raise self.failure(exc) from None

    def failure(self, exc: BaseException) -> KitError:
        """The documented error for a failed call: timeout, overload, lost server, or the server's own message."""
        from tritonclient.utils import InferenceServerException

        text = str(exc) or type(exc).__name__
        status = str(exc.status()) if isinstance(exc, InferenceServerException) else ""
        if (isinstance(exc, TimeoutError) or "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in text
                or type(exc).__name__ == "Timeout" or "failed to obtain inference response" in text):
            return TimedOut(f"no answer from {self.url} within --timeout {self.timeout:g}s ({self.protocol})")
        if any(marker in text for marker in OVERLOADED):
            return Overloaded(f"the server refused a request, overloaded ({text.splitlines()[0]}): send fewer "
                              f"requests at once (--max-in-flight, -b)")
        if isinstance(exc, (OSError, ConnectionError)) or "UNAVAILABLE" in status or "failed to connect" in text.lower():
            return ServerUnreachable(self._unreachable())
        if isinstance(exc, InferenceServerException):
            return InferenceFailed(f"inference on {self.model!r} failed: {text.splitlines()[0]}")
        return InferenceFailed(f"inference on {self.model!r} failed: {type(exc).__name__}: {text.splitlines()[0]}")

    def _unreachable(self) -> str:
        return (f"Triton server unreachable at {self.url} over {self.protocol}, or it stopped answering (is it "
                f"running? `make serve` starts the embedded one, `docker compose up triton` (or "
                f"`docker-compose up triton`) NVIDIA's; -u HOST:PORT picks another)")

    def _other_port(self, answers: str) -> str:
        """The error for a port that answers the other protocol (HTTP and gRPC listen on different ports)."""
        other = "grpc" if self.protocol == "http" else "http"
        port = self.url.rpartition(":")[2]
        default = DEFAULT_URLS[self.protocol].rpartition(":")[2]
        return (f"{self.url} does not answer {self.protocol} ({answers}): is {port} Triton's {other} port? use "
                f"-i {other}, or the server's {self.protocol} port (Triton's default {default})")

    def _check_server(self) -> None:
        """Something answers the protocol at the URL; a timeout, a refused connection or a port of the other
        protocol is the documented exit code."""
        from http.client import HTTPException

        try:
            live = self._send("is_server_live")
        except HTTPException:  # an HTTP client reading gRPC's HTTP/2 frames
            raise ServerUnreachable(self._other_port("the answer is not HTTP/1.1")) from None
        except Exception as exc:  # noqa: BLE001 - mapped to the documented exit codes
            if self.protocol == "grpc" and "Socket closed" in str(exc):  # an HTTP/1.1 listener drops gRPC's preface
                raise ServerUnreachable(self._other_port("it closed the connection")) from None
            raise self.failure(exc) from None
        if not live:
            raise ServerUnreachable(self._unreachable())

    def ready_models(self) -> Optional[List[str]]:
        """Names of the ready models; None when the server restricts its repository index and no key was given."""
        try:
            return self.triton.ready_models()
        except Restricted:
            return None
        except Exception as exc:  # noqa: BLE001 - mapped to the documented exit codes
            raise self.failure(exc) from None

    def _read_contract(self) -> None:
        try:
            ready = self._call("is_model_ready", self.model)
        except InferenceFailed:  # the server's answer for an unknown model
            ready = False
        if not ready:
            names = self.ready_models()
            listed = (f"ready models: {', '.join(names) or 'none'} (pick one with -m)" if names is not None else
                      f"the server lists its models only with its admin key (${ADMIN_KEY_ENV})")
            raise ModelUnavailable(f"model {self.model!r} is not ready on {self.url}; {listed}")
        try:
            config = self.triton.model_config_json(self.model)
        except Exception as exc:  # noqa: BLE001
            raise self.failure(exc) from None
        inputs, outputs = config.get("input", []), config.get("output", [])
        if len(inputs) != 1 or len(outputs) != 1:
            raise ContractMismatch(f"model {self.model!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
                                   f"the kit's classifiers have one of each")
        inp, out = inputs[0], outputs[0]
        dims = tuple(int(d) for d in inp.get("dims", []))
        # UINT8 [-1]: one encoded file per batch item (an image ensemble such as mobilenetv3_image)
        self.encoded = inp.get("data_type") == "TYPE_UINT8" and dims == (-1,)
        if self.send != "auto" and self.encoded != (self.send == "bytes"):
            raise ContractMismatch(f"model {self.model!r} takes {'encoded image bytes' if self.encoded else 'tensors'}"
                                   f" ({inp.get('name')} {inp.get('data_type')} {list(dims)}), not {self.send}")
        if not self.encoded and (inp.get("data_type") not in INPUT_TYPES or dims != INPUT_DIMS):
            raise ContractMismatch(f"model {self.model!r} expects {inp.get('name')} {inp.get('data_type')} "
                                   f"{list(dims)}; this client sends FP32 or UINT8 {list(INPUT_DIMS)} images "
                                   f"or encoded image bytes (UINT8 [-1])")
        self.input_name, self.output_name = inp["name"], out["name"]
        self.datatype = INPUT_TYPES[inp["data_type"]]
        self.pixels = self.datatype == "UINT8"  # raw pixels, the model normalizes
        self.num_classes = int(out["dims"][-1])
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.has_labels = bool(out.get("label_filename"))

    # -- inference -------------------------------------------------------------------------------------------------
    def _request(self, batch: np.ndarray):
        inp = self.module.InferInput(self.input_name, list(batch.shape), self.datatype)
        extra = {"binary_data": True} if self.protocol == "http" else {}
        inp.set_data_from_numpy(batch, **extra)
        # class_count = every class: the server returns each logit with its label, softmax needs them all
        out = self.module.InferRequestedOutput(self.output_name, class_count=self.num_classes, **extra)
        return [inp], [out]

    def _parse(self, result) -> Tuple[np.ndarray, List[Dict[int, str]]]:
        rows = result.as_numpy(self.output_name)
        logits = np.zeros((rows.shape[0], self.num_classes), np.float32)
        labels: List[Dict[int, str]] = []
        for r, row in enumerate(rows):
            names = {}
            for entry in row:
                value, index, *label = entry.decode("utf-8").split(":", 2)
                logits[r, int(index)] = float(value)
                names[int(index)] = label[0] if label else f"class_{index}"
            labels.append(names)
        return logits, labels

    def infer(self, batch: np.ndarray) -> Tuple[np.ndarray, List[Dict[int, str]]]:
        inputs, outputs = self._request(batch)
        return self._parse(self._call("infer", self.model, inputs, outputs=outputs))

    def infer_many(self, batches: Sequence[np.ndarray], window: int = MAX_IN_FLIGHT,
                   keep_errors: bool = False) -> Iterator[Union[Tuple[np.ndarray, List[Dict[int, str]]], KitError]]:
        """Up to ``window`` batches in flight at once (async API of either protocol); each result yielded, in
        submission order, as soon as it and the ones before it arrived. A failed request raises its documented
        error, or with ``keep_errors`` is yielded in its place."""
        todo, pending = iter(batches), deque()

        def submit() -> None:
            batch = next(todo, None)
            if batch is None:
                return
            inputs, outputs = self._request(batch)
            if self.protocol == "http":
                pending.append(self._call("async_infer", self.model, inputs, outputs=outputs))
                return
            answer: "queue.Queue" = queue.Queue(maxsize=1)
            # tritonclient calls back with keywords: callback(result=..., error=...)
            self._call("async_infer", self.model, inputs, lambda result, error: answer.put((result, error)),
                       outputs=outputs)
            pending.append(answer)

        for _ in range(max(1, window)):
            submit()
        while pending:
            head = pending.popleft()
            try:
                if self.protocol == "http":
                    result = head.get_result(timeout=self.timeout)
                else:
                    result, error = head.get(timeout=self.timeout + 5)
                    if error is not None:
                        raise error
            except queue.Empty:
                raise TimedOut(f"no answer from {self.url} within --timeout {self.timeout:g}s (grpc)") from None
            except Exception as exc:  # noqa: BLE001 - mapped to the documented exit codes
                if not keep_errors:
                    raise self.failure(exc) from None
                result = self.failure(exc)
            submit()  # the next request goes out before this answer is handed on
            yield result if isinstance(result, KitError) else self._parse(result)

    def close(self) -> None:
        self.client.close()
        if self._hub is not None:
            self._hub.NOT_ERROR = self._not_error


def classify(classifier: TritonClassifier, paths: Sequence[Path], batch_size: int, topk: int,
             use_async: bool = False, max_in_flight: int = MAX_IN_FLIGHT) -> Iterator[Union[Classified, Unreadable]]:
    """Every path gets a record, in order: Classified, or Unreadable with the reason (the rest still run). Records
    come as soon as their batch (and every batch before it) is answered: a failure midway keeps what came before.
    ``use_async`` keeps up to ``max_in_flight`` requests in flight."""
    if batch_size < 1:
        raise KitError("--batch-size must be >= 1")
    if max_in_flight < 1:
        raise KitError("--max-in-flight must be >= 1")
    if classifier.max_batch_size and batch_size > classifier.max_batch_size:
        raise KitError(f"--batch-size {batch_size} exceeds the model's max_batch_size ({classifier.max_batch_size})")
    records: List[Union[Classified, Unreadable, None]] = [None] * len(paths)
    good: List[Tuple[int, np.ndarray]] = []
    for slot, path in enumerate(paths):
        try:
            good.append((slot, read_encoded(path) if classifier.encoded else
                         preprocess_file(path, pixels=classifier.pixels)))
        except ImageError as exc:
            records[slot] = Unreadable(str(path), str(exc))
    k = max(1, min(topk, classifier.num_classes))
    ready = 0  # records[:ready] were yielded

    def flush():
        nonlocal ready
        while ready < len(records) and records[ready] is not None:
            yield records[ready]
            ready += 1

    yield from flush()
    for slot, result in _answers(classifier, good, batch_size, max_in_flight if use_async else None):
        if isinstance(result, InferenceFailed):
            records[slot] = Unreadable(str(paths[slot]), f"{paths[slot]}: {result}")
        else:
            row_logits, names = result
            row_probs = softmax(row_logits)
            # ranked by logit: probabilities far below the top one are all 0.0 in float32
            order = np.argsort(-row_logits, kind="stable")[:k]
            top = [(names.get(int(i), f"class_{i}"), int(i), float(row_probs[i]), float(row_logits[i])) for i in order]
            records[slot] = Classified(str(paths[slot]), top, row_logits.tolist())
        yield from flush()


def _answers(classifier: TritonClassifier, good: Sequence[Tuple[int, np.ndarray]], batch_size: int,
             window: Optional[int]) -> Iterator[Tuple[int, object]]:
    """(slot, (logits row, labels) or InferenceFailed) per image, batch by batch as the answers come; ``window``:
    requests in flight at once (None: one at a time)."""
    if classifier.encoded:  # one request per file, a window's requests in flight together (the server batches them)
        results = classifier.infer_many([x for _, x in good], window or batch_size, keep_errors=True)
        for (slot, _), result in zip(good, results):
            # the server refused this file (not an image, ...); overload, a lost server or a timeout ends the run
            if isinstance(result, (Overloaded, ServerUnreachable, TimedOut)):
                raise result
            yield slot, result if isinstance(result, InferenceFailed) else (result[0][0], result[1][0])
        return
    chunks = [good[i:i + batch_size] for i in range(0, len(good), batch_size)]
    batches = [np.stack([x for _, x in chunk]) for chunk in chunks]
    outputs = classifier.infer_many(batches, window) if window else (classifier.infer(b) for b in batches)
    for chunk, (logits, labels) in zip(chunks, outputs):
        for (slot, _), row_logits, names in zip(chunk, logits, labels):
            yield slot, (row_logits, names)


def read_encoded(path: Path) -> np.ndarray:
    """A file's bytes as one UINT8 [1, n] batch item; the server decodes it and judges whether it is an image."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}")
    return np.frombuffer(path.read_bytes(), dtype=np.uint8)[None]
