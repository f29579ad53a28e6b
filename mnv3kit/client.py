"""Classify images through Triton (HTTP or gRPC) with the kit's preprocessing and Triton's classification extension."""

import queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import KitError
from .preprocess import ImageError, is_image_file, preprocess_file
from .spec import ADMIN_KEY_ENV, INPUT_DIMS
from .triton import Restricted, Triton

INPUT_TYPES = {"TYPE_FP32": "FP32", "TYPE_UINT8": "UINT8"}  # normalized floats, or pixels the model normalizes
SEND_MODES = ("auto", "bytes", "tensor")  # bytes: the files themselves, to a model with an encoded-image input


class ServerUnreachable(KitError):
    exit_code = 3


class ModelUnavailable(KitError):
    exit_code = 4


class ContractMismatch(KitError):
    exit_code = 5


class InferenceFailed(KitError):
    exit_code = 6


class TimedOut(KitError):
    exit_code = 7


EXIT_CODES = {0: "every image classified", 1: "some images could not be read (the others were classified)",
              2: "bad arguments", 3: "server unreachable, or it went away midway", 4: "model unknown or not ready",
              5: "the model's input/output contract is not the kit's",
              6: "the server failed or refused an inference request (refused: overloaded, retry later)",
              7: "no answer within --timeout", 141: "output closed early (e.g. piped into head)"}
# Triton's answers when its queue policy sheds a request (status UNAVAILABLE, like a refused connection)
OVERLOADED = ("Exceeds maximum queue size", "Request timeout expired")


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
            paths += sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p))
        else:
            paths.append(item)
    return paths


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
        self.triton = Triton(url, protocol, admin_key, timeout, concurrency)
        self.url, self.client, self.module = self.triton.url, self.triton.client, self.triton.module
        if protocol == "http":
            import gevent

            # A failed async request is re-raised by get_result and reported once, as one line; gevent's hub
            # would also print each one's traceback.
            hub = gevent.get_hub()
            hub.NOT_ERROR = tuple({*hub.NOT_ERROR, Exception, gevent.Timeout})
        self._check_server()
        self._read_contract()

    # -- server and model checks -------------------------------------------------------------------------------
    def _call(self, method: str, *args, **kwargs):
        if self.protocol == "grpc":  # the HTTP client got its timeouts at construction
            kwargs.setdefault("client_timeout", self.timeout)
        try:
            return getattr(self.client, method)(*args, **kwargs)
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
            return InferenceFailed(f"the server refused the request, overloaded ({text.splitlines()[0]}): "
                                   f"retry later, or send fewer requests at once")
        if isinstance(exc, (OSError, ConnectionError)) or "UNAVAILABLE" in status or "failed to connect" in text.lower():
            return ServerUnreachable(self._unreachable())
        if isinstance(exc, InferenceServerException):
            return InferenceFailed(f"inference on {self.model!r} failed: {text.splitlines()[0]}")
        return InferenceFailed(f"inference on {self.model!r} failed: {type(exc).__name__}: {text.splitlines()[0]}")

    def _unreachable(self) -> str:
        return (f"Triton server unreachable at {self.url} over {self.protocol}, or it stopped answering (is it "
                f"running? `make serve` starts the embedded one, `docker compose up triton` NVIDIA's; -u HOST:PORT "
                f"picks another)")

    def _check_server(self) -> None:
        if not self._call("is_server_live"):  # a timeout or a refused connection: the documented exit code
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

    def infer_many(self, batches: Sequence[np.ndarray]) -> Iterator[Tuple[np.ndarray, List[Dict[int, str]]]]:
        """All batches in flight at once (async API of either protocol); each result yielded, in submission order,
        as soon as it and the ones before it arrived."""
        if self.protocol == "http":
            pending = []
            for b in batches:
                inputs, outputs = self._request(b)
                pending.append(self._call("async_infer", self.model, inputs, outputs=outputs))
            for p in pending:
                try:
                    result = p.get_result(timeout=self.timeout)
                except Exception as exc:  # noqa: BLE001 - mapped to the documented exit codes
                    raise self.failure(exc) from None
                yield self._parse(result)
            return
        done: "queue.Queue" = queue.Queue()
        for i, b in enumerate(batches):
            inputs, outputs = self._request(b)
            # tritonclient calls back with keywords: callback(result=..., error=...)
            self._call("async_infer", self.model, inputs, lambda result, error, i=i: done.put((i, result, error)),
                       outputs=outputs)
        arrived, next_i = {}, 0
        while next_i < len(batches):
            try:
                i, result, error = done.get(timeout=self.timeout + 5)
            except queue.Empty:
                raise TimedOut(f"no answer from {self.url} within --timeout {self.timeout:g}s (grpc)") from None
            if error is not None:
                raise self.failure(error)
            arrived[i] = result
            while next_i in arrived:
                yield self._parse(arrived.pop(next_i))
                next_i += 1

    def close(self) -> None:
        self.client.close()


def classify(classifier: TritonClassifier, paths: Sequence[Path], batch_size: int, topk: int,
             use_async: bool = False) -> Iterator[Union[Classified, Unreadable]]:
    """Every path gets a record, in order: Classified, or Unreadable with the reason (the rest still run). Records
    come as soon as their batch (and every batch before it) is answered: a failure midway keeps what came before."""
    if batch_size < 1:
        raise KitError("--batch-size must be >= 1")
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
    for slot, result in _answers(classifier, good, batch_size, use_async):
        if isinstance(result, InferenceFailed):
            records[slot] = Unreadable(str(paths[slot]), f"{paths[slot]}: {result}")
        else:
            row_logits, names = result
            row_probs = softmax(row_logits)
            order = np.argsort(-row_probs, kind="stable")[:k]
            top = [(names.get(int(i), f"class_{i}"), int(i), float(row_probs[i]), float(row_logits[i])) for i in order]
            records[slot] = Classified(str(paths[slot]), top, row_logits.tolist())
        yield from flush()


def _answers(classifier: TritonClassifier, good: Sequence[Tuple[int, np.ndarray]], batch_size: int,
             use_async: bool) -> Iterator[Tuple[int, object]]:
    """(slot, (logits row, labels) or InferenceFailed) per image, batch by batch as the answers come."""
    if classifier.encoded:  # one request per file, a window's requests in flight together (the server batches them)
        window = max(1, len(good)) if use_async else batch_size
        for start in range(0, len(good), window):
            chunk = good[start:start + window]
            for (slot, _), result in zip(chunk, _infer_encoded(classifier, [x for _, x in chunk])):
                yield slot, result if isinstance(result, InferenceFailed) else (result[0][0], result[1][0])
        return
    chunks = [good[i:i + batch_size] for i in range(0, len(good), batch_size)]
    batches = [np.stack([x for _, x in chunk]) for chunk in chunks]
    outputs = classifier.infer_many(batches) if use_async else (classifier.infer(b) for b in batches)
    for chunk, (logits, labels) in zip(chunks, outputs):
        for (slot, _), row_logits, names in zip(chunk, logits, labels):
            yield slot, (row_logits, names)


def read_encoded(path: Path) -> np.ndarray:
    """A file's bytes as one UINT8 [1, n] batch item; the server decodes it and judges whether it is an image."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}")
    return np.frombuffer(path.read_bytes(), dtype=np.uint8)[None]


def _infer_encoded(classifier: TritonClassifier, items: Sequence[np.ndarray]) -> list:
    """One request per file, all in flight at once; when one fails, each is retried alone so that the error lands
    on its own file: a list of (logits, labels) or InferenceFailed, one per item."""
    try:
        return list(classifier.infer_many(items))
    except InferenceFailed:
        results = []
        for item in items:
            try:
                results.append(classifier.infer(item))
            except InferenceFailed as exc:
                results.append(exc)
        return results
