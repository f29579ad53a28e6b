"""Load truth: sustained concurrent load on every served model of a repository, every answer checked.

Each concurrency level runs for a fixed time; every worker thread sends requests of mixed batch sizes to the models
in turn: real photographs (scikit-learn's, and views of them) as tensors for the classifiers and as encoded files for
the image ensemble, plus inputs that must be refused (NaN pixels; truncated, empty, non-image and bomb files). Each
answer is compared row by row with logits computed in-process from the repository's own artifacts (FP32 on the CPU:
model.pt, model.pt2 or model.onnx; a TensorRT plan against the repository's model.onnx), at the tolerance the
model's config checks at load. Requests are counted as ok, wrong (an answer beyond the tolerance, or an answer
where a refusal was due), refused as expected, rejected (the server shed load: UNAVAILABLE, queue full or timed out)
and failed (any other error); latency p50/p99/max and stalls (answers slower than STALL_FACTOR x the p50 of the
same model and level) per model and level; the server's memory over time; watchdog reloads.
"""

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .edge_images import BAD, make_edge_cases
from ..errors import KitError
from ..parity import TOLERANCE, allowed_difference, parity_pixels, sample_photos
from ..preprocess import decode_image, eval_pixels, normalize, pixels_of
from ..ensemble import image_classifier
from ..spec import COMPILED_ARTIFACT, ENSEMBLE, ENSEMBLE_PLATFORM, ONNX, OV, OVERLOADED, PREPROCESS, PT, TRT

STALL_FACTOR = 10
PHOTOS = 16  # distinct images: the photographs and mirrored / rotated / cropped views of them
# The image ensemble with nvJPEG decoding on a GPU: its chroma upsampling differs from Pillow's (libjpeg-turbo),
# which moved logits by up to 0.34 x max |logit| on an H200; garbage (NaN, another image's data) still lies far
# beyond this.
GPU_DECODE_TOLERANCE = 0.5
REFUSE_EVERY = 16  # one request in this many carries an input that must be refused


@dataclass
class Tally:
    ok: int = 0
    wrong: int = 0
    refused_as_expected: int = 0
    rejected: int = 0
    failed: int = 0
    images: int = 0
    latencies_ms: List[float] = field(default_factory=list)
    examples: List[str] = field(default_factory=list)  # the first few wrong or failed answers

    def note(self, text: str) -> None:
        if len(self.examples) < 3:
            self.examples.append(text)


@dataclass
class Target:
    """One served model: how to make a request of rows ``idx`` and what must come back."""

    name: str
    input_name: str
    output_name: str
    max_batch: int
    make: Callable[[Sequence[int]], np.ndarray]  # rows -> input tensor
    reference: np.ndarray  # logits per photo
    limit: float  # max |Δlogit| per answer
    bad: List[Tuple[np.ndarray, str]]  # (input, why) that must be refused
    config: Any  # its config.pbtxt (model_config_pb2.ModelConfig)


def _config(model_dir: Path):
    from ..validate import parse_config

    return parse_config(model_dir / "config.pbtxt")


def _version_dir(model_dir: Path) -> Path:
    versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise KitError(f"{model_dir}: no version directory")
    return versions[-1]


def reference_forward(repo: Path, model_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """FP32 logits on the CPU from the model's own artifact, for normalized FP32 input."""
    runner = artifact_runner(repo, model_dir)
    if getattr(runner, "input_dtype", np.float32) == np.uint8:  # an IR that normalizes in its graph: the pixels
        return lambda images: runner(pixels_of(images))
    return runner


def artifact_runner(repo: Path, model_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The runner of the model's own artifact on the CPU, taking the artifact's input: normalized FP32, or UINT8
    pixels for an OpenVINO IR that normalizes in its graph (its ``input_dtype``)."""
    from ..backend.classifier_model import OnnxRunner, OpenVinoRunner, TorchRunner

    vdir = _version_dir(model_dir)
    if (vdir / OV.artifact).is_file():  # at the precision it is served in: BF16 has its own accuracy gate
        params = _config(model_dir).parameters
        bf16 = params["precision"].string_value == "bf16" if "precision" in params else (
            "HINT_BF16" in params and params["HINT_BF16"].string_value.lower() == "yes")
        return OpenVinoRunner(str(vdir / OV.artifact), "bf16" if bf16 else "fp32")
    if (vdir / PT.artifact).is_file():
        return TorchRunner(str(vdir / PT.artifact))
    if (vdir / COMPILED_ARTIFACT).is_file():  # the exported program, run eagerly (compiling on a CPU takes minutes)
        import torch

        runner = TorchRunner(torch.export.load(str(vdir / COMPILED_ARTIFACT)).module())
        rows = max(2, _config(model_dir).max_batch_size)  # the program's batch dimension ends there (export.py)
        return lambda x: np.concatenate([runner(x[i:i + rows]) for i in range(0, len(x), rows)])
    onnx = vdir / ONNX.artifact
    if not onnx.is_file() and (vdir / TRT.artifact).is_file():
        onnx = _version_dir(repo / ONNX.name) / ONNX.artifact if (repo / ONNX.name).is_dir() else onnx
    if onnx.is_file():
        return OnnxRunner(str(onnx), "image")
    raise KitError(f"{model_dir.name}: no artifact to compute reference logits from (model.pt, model.pt2, model.onnx)")


BF16_TOLERANCE = 0.02  # BF16 keeps 8 bits of mantissa: the same IR's logits move with how a batch is split


def _tolerance(config) -> float:
    params = config.parameters
    if ("precision" in params and params["precision"].string_value == "bf16") or "HINT_BF16" in params:
        return BF16_TOLERANCE
    return float(params["parity_tolerance"].string_value) if "parity_tolerance" in params else TOLERANCE


def _pad(files: Sequence[bytes]) -> np.ndarray:
    """Files of one request as UINT8 rows of equal length (trailing zeros)."""
    width = max(len(f) for f in files)
    return np.stack([np.frombuffer(f.ljust(width, b"\0"), np.uint8) for f in files])


def _encoded(pixels: np.ndarray) -> List[bytes]:
    """The photos as JPEG files (quality 92) whose Pillow decode is what the reference sees."""
    import io

    from PIL import Image

    files = []
    for chw in pixels:
        out = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(out, "JPEG", quality=92)
        files.append(out.getvalue())
    return files


def targets(repo: Path, names: Optional[Sequence[str]], workdir: Path) -> List[Target]:
    """Every model of ``repo`` (or those named), with its inputs and reference logits."""
    from tritonclient.grpc import model_config_pb2

    photos = sample_photos()
    pixels = parity_pixels(photos, PHOTOS)
    floats = normalize(pixels)
    dirs = {p.name: p for p in sorted(repo.iterdir()) if (p / "config.pbtxt").is_file()}
    wanted = list(names) if names else [n for n in dirs if n != PREPROCESS]
    missing = [n for n in wanted if n not in dirs]
    if missing:
        raise KitError(f"{repo} has no model {', '.join(missing)} (it has {', '.join(dirs)})")
    nan = floats[:1].copy()
    nan[0, 0, 0, 0] = np.nan
    edge = make_edge_cases(photos[0], workdir / "edge")
    out, logits = [], {}

    def classifier_logits(name: str) -> Tuple[np.ndarray, float]:
        if name not in logits:
            config = _config(dirs[name])
            ref = reference_forward(repo, dirs[name])(floats)
            logits[name] = (ref, _tolerance(config))
        return logits[name]

    for name in wanted:
        config = _config(dirs[name])
        inp, outp = config.input[0], config.output[0]
        if name == ENSEMBLE:  # the ensemble, or the fused image model
            classifier = image_classifier(config)
            ref, tolerance = classifier_logits(classifier)
            files = _encoded(pixels)
            # the reference of a file is the classifier on the file's own Pillow decode (JPEG re-encoding moved it)
            decoded = normalize(np.stack([eval_pixels(decode_image(f)) for f in files]))
            ref = reference_forward(repo, dirs[classifier])(decoded)
            pre = _config(dirs[PREPROCESS]) if config.platform == ENSEMBLE_PLATFORM and PREPROCESS in dirs else config
            if (pre.instance_group
                    and pre.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
                    and pre.parameters["gpu_decode"].string_value != "off"):  # Pillow's pixels when off
                tolerance = max(tolerance, GPU_DECODE_TOLERANCE)
            bad = [(_pad([edge[k].read_bytes() or b"\0"]), why) for k, why in BAD.items() if k in edge and edge[k].is_file()]
            out.append(Target(name, inp.name, outp.name, max(1, min(config.max_batch_size, 4)),
                              lambda idx, files=files: _pad([files[i] for i in idx]), ref,
                              allowed_difference(ref, tolerance), bad, config))
            continue
        ref, tolerance = classifier_logits(name)
        uint8 = inp.data_type == model_config_pb2.TYPE_UINT8
        source = pixels if uint8 else floats
        bad = [] if uint8 else [(nan, "NaN pixels")]
        out.append(Target(name, inp.name, outp.name, max(1, config.max_batch_size),
                          lambda idx, source=source: np.ascontiguousarray(source[list(idx)]), ref,
                          allowed_difference(ref, tolerance), bad, config))
    return out


@dataclass
class SoakOptions:
    concurrency: Tuple[int, ...] = (1, 8, 32)
    seconds: float = 20.0  # per concurrency level
    seed: int = 0
    timeout_s: float = 120.0  # per request
    batch: Optional[int] = None  # rows per request; None: mixed, 1..max batch of the model
    refuse_every: int = REFUSE_EVERY  # one request in this many must be refused; 0: none


def check_answer(target: Target, idx: Sequence[int], logits: Optional[np.ndarray]) -> Optional[str]:
    """Why an answer is wrong, or None."""
    if logits is None or logits.shape != (len(idx), target.reference.shape[1]):
        return f"output shape {None if logits is None else logits.shape}"
    diff = np.abs(logits - target.reference[list(idx)]).max(axis=1)
    if not np.isfinite(logits).all() or (diff > target.limit).any():
        return f"max |Δlogit| {float(np.nanmax(diff)) if np.isfinite(diff).any() else float('nan'):.3g} > {target.limit:.3g}"
    return None


def _worker(url: str, targets_: List[Target], start: int, stop_at: float, seed: int, opts: SoakOptions,
            tallies: Dict[str, Tally], lock: threading.Lock) -> None:
    import tritonclient.grpc as grpc
    from tritonclient.utils import np_to_triton_dtype

    rng = np.random.default_rng(seed)
    client = grpc.InferenceServerClient(url)
    n, sent = start, {t.name: start for t in targets_}
    try:
        while time.monotonic() < stop_at:
            target = targets_[n % len(targets_)]
            n += 1
            sent[target.name] += 1
            refuse = target.bad and opts.refuse_every and sent[target.name] % opts.refuse_every == 0
            if refuse:
                x, why = target.bad[sent[target.name] // opts.refuse_every % len(target.bad)]
                idx = []
            else:
                rows = opts.batch or int(rng.integers(1, target.max_batch + 1))
                idx = rng.integers(0, len(target.reference), rows).tolist()
                x = target.make(idx)
            inp = grpc.InferInput(target.input_name, list(x.shape), np_to_triton_dtype(x.dtype))
            inp.set_data_from_numpy(x)
            t0 = time.perf_counter()
            error, logits = None, None
            try:
                result = client.infer(target.name, [inp], client_timeout=opts.timeout_s)
                logits = result.as_numpy(target.output_name)
            except Exception as exc:  # noqa: BLE001 - every error is classified below
                error = " ".join(str(exc).split())
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                tally = tallies[target.name]
                if error is not None and any(marker in error for marker in OVERLOADED):
                    tally.rejected += 1
                elif refuse:
                    if error is None:
                        tally.wrong += 1
                        tally.note(f"{why}: answered instead of refused")
                    elif "Socket closed" in error or "failed to connect" in error.lower():
                        tally.failed += 1
                        tally.note(f"{why}: {error[:200]}")
                    else:
                        tally.refused_as_expected += 1
                elif error is not None:
                    tally.failed += 1
                    tally.note(error[:200])
                else:
                    tally.latencies_ms.append(ms)
                    tally.images += len(idx)
                    why_wrong = check_answer(target, idx, logits)
                    if why_wrong:
                        tally.wrong += 1
                        tally.note(f"batch {len(idx)}: {why_wrong}")
                    else:
                        tally.ok += 1
    finally:
        client.close()


def _summary(model: str, level: int, tally: Tally, seconds: float) -> dict:
    lat = np.array(tally.latencies_ms) if tally.latencies_ms else np.array([np.nan])
    p50 = float(np.median(lat))
    return {"model": model, "concurrency": level, "ok": tally.ok, "wrong": tally.wrong,
            "refused_as_expected": tally.refused_as_expected, "rejected": tally.rejected, "failed": tally.failed,
            "img_per_s": tally.images / seconds, "p50_ms": p50, "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()), "stalls": int((lat > STALL_FACTOR * p50).sum()), "examples": tally.examples}


class MemorySampler(threading.Thread):
    """RSS of a process tree (MB) once a second; ``pid_of`` names the root (a restarted server is another)."""

    def __init__(self, pid_of: Optional[Callable[[], int]]):
        super().__init__(daemon=True, name="soak-rss")
        self.pid_of, self.samples, self._halt = pid_of, [], threading.Event()

    def run(self) -> None:
        from ..process import rss_mb

        start = time.monotonic()
        while self.pid_of and not self._halt.wait(1.0):
            try:
                self.samples.append((round(time.monotonic() - start, 1), round(rss_mb(self.pid_of()), 1)))
            except OSError:  # between a death and the restart
                continue

    def stop(self) -> List[Tuple[float, float]]:
        self._halt.set()
        self.join(5)
        return self.samples


def load_level(url: str, targets_: List[Target], level: int, opts: SoakOptions) -> List[dict]:
    """``level`` closed-loop workers for opts.seconds; one summary row per model."""
    tallies = {t.name: Tally() for t in targets_}
    lock = threading.Lock()
    stop_at = time.monotonic() + opts.seconds
    started = time.monotonic()
    workers = [threading.Thread(target=_worker, args=(url, targets_, i, stop_at, opts.seed * 1000 + level * 7 + i,
                                                       opts, tallies, lock), daemon=True)
               for i in range(level)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(opts.seconds + opts.timeout_s + 30)
    elapsed = time.monotonic() - started
    return [_summary(t.name, level, tallies[t.name], elapsed) for t in targets_]


def soak(url: str, targets_: List[Target], opts: SoakOptions, server_pid: Optional[Callable[[], int]] = None,
         progress: Callable[[str], None] = print) -> dict:
    """Run every level; the result's rows are per model and level. ``server_pid``: the server's pid, when it runs
    on this host (its memory is sampled)."""
    memory = MemorySampler(server_pid)
    memory.start()
    rows = []
    for level in opts.concurrency:
        for row in load_level(url, targets_, level, opts):
            rows.append(row)
            progress(f"c{level:<4} {row['model']:<22} ok {row['ok']:>6}  wrong {row['wrong']}  failed {row['failed']}  "
                     f"rejected {row['rejected']}  refused-as-due {row['refused_as_expected']}  "
                     f"{row['img_per_s']:8.1f} img/s  p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} "
                     f"max {row['max_ms']:.1f} ms  stalls {row['stalls']}")
    samples = memory.stop()
    return {"rows": rows, "rss_mb": samples, "wrong": sum(r["wrong"] for r in rows),
            "failed": sum(r["failed"] for r in rows), "stalls": sum(r["stalls"] for r in rows)}


def markdown(result: dict) -> str:
    head = ("| model | concurrency | ok | wrong | failed | rejected | refused as due | img/s | p50 ms | p99 ms | "
            "max ms | stalls |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {r['model']} | {r['concurrency']} | {r['ok']} | {r['wrong']} | {r['failed']} | {r['rejected']} "
                   f"| {r['refused_as_expected']} | {r['img_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                   f"{r['max_ms']:.1f} | {r['stalls']} |\n" for r in result["rows"])
    rss = result["rss_mb"]
    memory = (f"\nServer memory (RSS of the process tree): {rss[0][1]:.0f} MB at the start, max "
              f"{max(v for _, v in rss):.0f} MB, {rss[-1][1]:.0f} MB at the end.\n" if rss else "")
    events = result.get("watchdog_events")
    watchdog = "" if events is None else (f"Watchdog reloads during the run: {len(events)}; tritonserver restarts: "
                                          f"{result.get('server_restarts', 0)}.\n")
    examples = [f"- {r['model']} c{r['concurrency']}: {e}" for r in result["rows"] for e in r["examples"]]
    return head + body + memory + watchdog + ("\nFirst wrong or failed answers:\n" + "\n".join(examples) + "\n"
                                              if examples else "")


def write(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    (out / "soak.md").write_text(markdown(result))


def verdict(result: dict) -> int:
    """0: every answer right and nothing failed; 1 otherwise."""
    return 1 if result["wrong"] or result["failed"] else 0
