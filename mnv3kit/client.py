"""Classify images through Triton (HTTP or gRPC) with the kit's preprocessing and Triton's classification extension."""

import queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import KitError
from .preprocess import ImageError, is_image_file, preprocess_file
from .spec import INPUT_DIMS

PROTOCOLS = ("http", "grpc")
DEFAULT_URLS = {"http": "localhost:8000", "grpc": "localhost:8001"}
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


EXIT_CODES = {0: "every image classified", 1: "some images could not be read (the others were classified)",
              2: "bad arguments", 3: "server unreachable", 4: "model unknown or not ready",
              5: "the model's input/output contract is not the kit's", 6: "the server failed an inference request"}


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
                 timeout: float = 60.0, concurrency: int = 1, send: str = "auto"):
        if protocol not in PROTOCOLS:
            raise KitError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if send not in SEND_MODES:
            raise KitError(f"send mode must be one of {', '.join(SEND_MODES)}")
        self.send = send
        self.protocol, self.model, self.timeout = protocol, model, timeout
        self.url = url or DEFAULT_URLS[protocol]
        if protocol == "http":
            import tritonclient.http as module

            self.client = module.InferenceServerClient(self.url, concurrency=max(1, concurrency),
                                                       connection_timeout=timeout, network_timeout=timeout)
        else:
            import tritonclient.grpc as module

            self.client = module.InferenceServerClient(self.url)
        self.module = module
        self._check_server()
        self._read_contract()

    # -- server and model checks -------------------------------------------------------------------------------
    def _call(self, method: str, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        if self.protocol == "grpc":  # the HTTP client got its timeouts at construction
            kwargs.setdefault("client_timeout", self.timeout)
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except InferenceServerException as exc:
            if "UNAVAILABLE" in str(exc.status()) or "failed to connect" in str(exc).lower():
                raise ServerUnreachable(self._unreachable()) from None
            raise
        except (OSError, ConnectionError):
            raise ServerUnreachable(self._unreachable()) from None

    def _unreachable(self) -> str:
        return (f"Triton server unreachable at {self.url} over {self.protocol} (is it running? `make serve` "
                f"starts the embedded one, `docker compose up triton` NVIDIA's; -u HOST:PORT picks another)")

    def _check_server(self) -> None:
        if not self._call("is_server_live"):
            raise ServerUnreachable(self._unreachable())

    def ready_models(self) -> List[str]:
        index = self._call("get_model_repository_index", **({"as_json": True} if self.protocol == "grpc" else {}))
        entries = index.get("models", []) if isinstance(index, dict) else index
        return sorted({m["name"] for m in entries if m.get("state") == "READY"})

    def _read_contract(self) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            ready = self._call("is_model_ready", self.model)
        except InferenceServerException:
            ready = False
        if not ready:
            raise ModelUnavailable(f"model {self.model!r} is not ready on {self.url}; ready models: "
                                   f"{', '.join(self.ready_models()) or 'none'} (pick one with -m)")
        config = self._call("get_model_config", self.model, **({"as_json": True} if self.protocol == "grpc" else {}))
        config = config.get("config", config)
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
        from tritonclient.utils import InferenceServerException

        inputs, outputs = self._request(batch)
        try:
            result = self._call("infer", self.model, inputs, outputs=outputs)
        except InferenceServerException as exc:
            raise InferenceFailed(f"inference on {self.model!r} failed: {exc}") from None
        return self._parse(result)

    def infer_many(self, batches: Sequence[np.ndarray]) -> Iterator[Tuple[np.ndarray, List[Dict[int, str]]]]:
        """All batches in flight at once (async API of either protocol); results in submission order."""
        from tritonclient.utils import InferenceServerException

        try:
            if self.protocol == "http":
                pending = []
                for b in batches:
                    inputs, outputs = self._request(b)
                    pending.append(self.client.async_infer(self.model, inputs, outputs=outputs))
                results = [p.get_result() for p in pending]
            else:
                done: "queue.Queue" = queue.Queue()
                for i, b in enumerate(batches):
                    inputs, outputs = self._request(b)
                    # tritonclient calls back with keywords: callback(result=..., error=...)
                    self.client.async_infer(self.model, inputs,
                                            lambda result, error, i=i: done.put((i, result, error)),
                                            outputs=outputs, client_timeout=self.timeout)
                collected = {}
                for _ in batches:
                    i, res, err = done.get(timeout=self.timeout + 5)
                    if err is not None:
                        raise err
                    collected[i] = res
                results = [collected[i] for i in range(len(batches))]
        except (InferenceServerException, queue.Empty, OSError) as exc:
            raise InferenceFailed(f"inference on {self.model!r} failed: {exc or 'timed out'}") from None
        return (self._parse(r) for r in results)

    def close(self) -> None:
        self.client.close()


def classify(classifier: TritonClassifier, paths: Sequence[Path], batch_size: int, topk: int,
             use_async: bool = False) -> List[Union[Classified, Unreadable]]:
    """Every path gets a record, in order: Classified, or Unreadable with the reason (the rest still run)."""
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
    if classifier.encoded:  # one request per file, a chunk's requests in flight together (the server batches them)
        window = max(1, len(good)) if use_async else batch_size
        windows = [good[i:i + window] for i in range(0, len(good), window)]
        chunks, outputs = _per_image(windows, [_infer_encoded(classifier, [x for _, x in w]) for w in windows],
                                     records, paths)
    else:
        chunks = [good[i:i + batch_size] for i in range(0, len(good), batch_size)]
        batches = [np.stack([x for _, x in chunk]) for chunk in chunks]
        outputs = classifier.infer_many(batches) if use_async else (classifier.infer(b) for b in batches)
    k = max(1, min(topk, classifier.num_classes))
    for chunk, (logits, labels) in zip(chunks, outputs):
        for (slot, _), row_logits, row_probs, names in zip(chunk, logits, softmax(logits), labels):
            order = np.argsort(-row_probs, kind="stable")[:k]
            top = [(names.get(int(i), f"class_{i}"), int(i), float(row_probs[i]), float(row_logits[i])) for i in order]
            records[slot] = Classified(str(paths[slot]), top, row_logits.tolist())
    return records  # type: ignore[return-value]


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


def _per_image(chunks, outputs, records, paths):
    """Flatten per-file results into one-image chunks; failed files become Unreadable records."""
    pairs = []
    for chunk, results in zip(chunks, outputs):
        for (slot, _), result in zip(chunk, results):
            if isinstance(result, InferenceFailed):
                records[slot] = Unreadable(str(paths[slot]), f"{paths[slot]}: {result}")
            else:
                pairs.append(([(slot, None)], result))
    return [c for c, _ in pairs], [r for _, r in pairs]
