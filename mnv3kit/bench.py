"""In-process latency of every artifact of a built repository, per batch size: the seed's trtexec table.

Each artifact runs the way the served model runs it, minus Triton: model.pt with TorchScript, model.onnx with ONNX
Runtime, model.plan with the TensorRT 10 Python API (torch tensors as buffers). After warm-up, each call is timed
from host input to host output; like trtexec's --iterations/--duration, a batch size runs at least --iters calls
AND at least --seconds seconds. TensorRT cannot be installed on the kit's CPU machines: that runner is written against
TensorRT 10's documented API and used only where the package and a GPU exist (NVIDIA's image has trtexec instead:
perf/trtexec_latency.sh).
"""

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import KitError
from .perf import hardware, hardware_line, markdown_table, model_order, now, short_name
from .repository import read_manifest
from .spec import INPUT_DIMS, ONNX, PT, TRT
from .trt_build import HOW_TO_BUILD, import_tensorrt
from .validate import artifact_name, parse_config

DEVICES = ("auto", "cpu", "cuda")
RUNTIME_BY_ARTIFACT = {PT.artifact: "TorchScript", ONNX.artifact: "ONNX Runtime", TRT.artifact: "TensorRT"}
TRTEXEC_HINT = "inside NVIDIA's Triton image run perf/trtexec_latency.sh on the plan instead"
MARKDOWN_FILE = "engine_latency.md"
JSON_FILE = "engine_latency.json"


@dataclass
class Artifact:
    model: str  # Triton model name
    path: Path
    runtime: str  # TorchScript / ONNX Runtime / TensorRT
    input_name: str
    max_batch_size: int


@dataclass
class Row:
    model: str
    runtime: str
    device: str
    batch: int
    iters: int
    min_ms: float
    max_ms: float
    mean_ms: float
    median_ms: float
    p99_ms: float
    throughput: float  # images per second at this batch size, one call at a time


Call = Callable[[], None]


def discover(repo: Path) -> Tuple[dict, List[Artifact], List[str]]:
    """Artifacts of the repository's built version (manifest) with their configs; skipped ones with why."""
    repo = Path(repo)
    if not repo.is_dir():
        raise KitError(f"{repo}: no such model repository (build one with build_repo.py)")
    manifest = read_manifest(repo)
    version = str(manifest.get("version", 1))
    artifacts, skipped = [], []
    for config_path in sorted(repo.glob("*/config.pbtxt")):
        config = parse_config(config_path)
        name = artifact_name(config)
        if name not in RUNTIME_BY_ARTIFACT:
            skipped.append(f"{config.name}: no in-process runner for its artifact {name!r}")
            continue
        path = config_path.parent / version / name
        if not path.is_file():
            hint = f"; {HOW_TO_BUILD}" if name == TRT.artifact else ""
            skipped.append(f"{config.name}: {version}/{name} not built{hint}")
            continue
        artifacts.append(Artifact(config.name, path, RUNTIME_BY_ARTIFACT[name], config.input[0].name,
                                  config.max_batch_size))
    artifacts.sort(key=lambda a: (model_order(a.model), a.model))
    return manifest, artifacts, skipped


def resolve_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise KitError("--device cuda: torch sees no CUDA device here (use --device cpu or auto)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def gpu_name() -> str:
    import torch

    return f"cuda:0 {torch.cuda.get_device_name(0)}"


# Every runner times host array in -> host array out, as the served model does and as trtexec's "Latency" does: on
# a GPU that is H2D copy + compute + D2H copy; on a CPU the copies vanish.

class TorchScriptRunner:
    def __init__(self, artifact: Artifact, device: str):
        import torch

        self.torch = torch
        self.dev = torch.device("cuda:0" if device == "cuda" else "cpu")
        self.device = gpu_name() if device == "cuda" else "cpu"
        self.module = torch.jit.load(str(artifact.path), map_location=self.dev).eval()

    def prepare(self, batch: int) -> Call:
        torch, module, dev = self.torch, self.module, self.dev
        x = torch.randn(batch, *INPUT_DIMS)

        def call() -> None:
            with torch.inference_mode():
                module(x.to(dev)).cpu()  # .cpu() also waits for the GPU

        return call


class OnnxRunner:
    def __init__(self, artifact: Artifact, device: str):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(artifact.path), providers=providers)
        self.input_name = artifact.input_name
        self.device = gpu_name() if device == "cuda" else "cpu"

    def prepare(self, batch: int) -> Call:
        x = np.random.default_rng(0).standard_normal((batch, *INPUT_DIMS), dtype=np.float32)
        session, feed = self.session, {self.input_name: x}

        def call() -> None:
            session.run(None, feed)

        return call


class TensorRTRunner:
    """TensorRT 10: deserialize, one execution context, torch-owned buffers (pinned host, device), execute_async_v3."""

    def __init__(self, artifact: Artifact, device: str):
        import torch

        trt = import_tensorrt()
        self.torch, self.trt = torch, trt
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(artifact.path.read_bytes())
        if self.engine is None:
            raise KitError(f"{artifact.path} does not deserialize with TensorRT {trt.__version__} on this GPU: "
                           f"rebuild it here ({HOW_TO_BUILD})")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = artifact.input_name
        self.device = gpu_name()

    def prepare(self, batch: int) -> Call:
        torch, trt, engine, context, stream = self.torch, self.trt, self.engine, self.context, self.stream
        if not context.set_input_shape(self.input_name, (batch, *INPUT_DIMS)):
            raise KitError(f"the plan's optimization profile does not accept batch {batch}")
        # (destination, source) pairs; the closure below keeps these tensors alive while TensorRT holds their addresses
        copies_in, copies_out = [], []
        for name in self.names:
            if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise KitError(f"plan tensor {name!r} is {engine.get_tensor_dtype(name)}, the kit's contract is FP32")
            shape = tuple(context.get_tensor_shape(name))
            on_device = torch.empty(shape, device="cuda:0")
            on_host = torch.randn(shape).pin_memory()  # pinned, as trtexec's and Triton's host buffers
            context.set_tensor_address(name, on_device.data_ptr())
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                copies_in.append((on_device, on_host))
            else:
                copies_out.append((on_host, on_device))

        def call() -> None:
            with torch.cuda.stream(stream):
                for dst, src in copies_in:
                    dst.copy_(src, non_blocking=True)
                if not context.execute_async_v3(stream.cuda_stream):
                    raise KitError("TensorRT execute_async_v3 failed")
                for dst, src in copies_out:
                    dst.copy_(src, non_blocking=True)
            stream.synchronize()

        return call


def runner_for(artifact: Artifact, device: str):
    """(runner, None) or (None, why it is skipped) for the resolved device (cpu/cuda)."""
    kind = artifact.path.name
    if kind == PT.artifact:
        return TorchScriptRunner(artifact, device), None
    if kind == ONNX.artifact:
        import onnxruntime as ort

        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return OnnxRunner(artifact, "cpu"), None  # still a row, labelled cpu: this onnxruntime is CPU-only
        return OnnxRunner(artifact, device), None
    if import_tensorrt() is None:
        return None, f"{artifact.model}: the TensorRT Python package is not importable here; {TRTEXEC_HINT}"
    if device != "cuda":
        return None, f"{artifact.model}: a TensorRT plan runs on a CUDA GPU only (this run is on cpu)"
    return TensorRTRunner(artifact, device), None


def measure(call: Call, warmup: int, iters: int, seconds: float) -> List[float]:
    """Milliseconds per call, at least ``iters`` calls and ``seconds`` of timed calls, after ``warmup`` calls."""
    for _ in range(warmup):  # also pays TorchScript's profiling runs and cuDNN/TensorRT autotuning
        call()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def summarize(artifact: Artifact, device: str, batch: int, times: Sequence[float]) -> Row:
    t = np.asarray(times)
    return Row(artifact.model, artifact.runtime, device, batch, len(t), float(t.min()), float(t.max()),
               float(t.mean()), float(np.median(t)), float(np.percentile(t, 99)), batch * 1e3 / float(t.mean()))


def run(repo: Path, batch_sizes: Optional[Sequence[int]], device: str, warmup: int, iters: int, seconds: float,
        progress: Callable[[str], None]) -> dict:
    host = hardware()  # before measuring: our own load must not count as the host's
    manifest, artifacts, skipped = discover(repo)
    device = resolve_device(device)
    for a in artifacts:
        too_big = [b for b in (batch_sizes or []) if b > a.max_batch_size]
        if too_big:
            raise KitError(f"batch size {too_big[0]} exceeds max_batch_size {a.max_batch_size} of {a.model} "
                           f"(its config.pbtxt)")
    rows: List[Row] = []
    for artifact in artifacts:
        runner, why = runner_for(artifact, device)
        if runner is None:
            skipped.append(why)
            continue
        for batch in batch_sizes or range(1, artifact.max_batch_size + 1):
            progress(f"{artifact.model} ({artifact.runtime}, {runner.device}) batch {batch}")
            rows.append(summarize(artifact, runner.device, batch, measure(runner.prepare(batch), warmup, iters,
                                                                          seconds)))
    if not rows:
        raise KitError(f"nothing measured in {repo}: " + "; ".join(skipped))
    return {"date": now(), "repo": str(repo), "arch": manifest.get("arch"), "hardware": host,
            "versions": versions(), "settings": {"device": device, "warmup": warmup, "iters": iters,
                                                 "seconds": seconds},
            "rows": [asdict(r) for r in rows], "skipped": skipped}


def versions() -> Dict[str, Optional[str]]:
    import onnxruntime
    import torch

    trt = import_tensorrt()
    return {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "tensorrt": trt.__version__ if trt else None, "torch_threads": torch.get_num_threads()}


def render(result: dict) -> str:
    s, v = result["settings"], result["versions"]
    lines = [f"# Engine latency (in-process, no server): MobileNetV3 {result.get('arch') or '?'}", "",
             f"- Date: {result['date']}",
             f"- Repository: {result['repo']}",
             f"- Hardware: {hardware_line(result['hardware'])}",
             f"- Software: torch {v['torch']}, onnxruntime {v['onnxruntime']}, "
             f"TensorRT {v['tensorrt'] or 'not installed'}; CPU threads: torch {v['torch_threads']}, "
             f"ONNX Runtime its default (one per core), as in the served model",
             f"- Timing: {s['warmup']} warm-up calls, then at least {s['iters']} calls and {s['seconds']} s per batch "
             f"size, one call at a time, host array in -> host array out (on a GPU: with both copies, like trtexec's "
             f"Latency); throughput = batch / mean latency", ""]
    headers = ["Artifact", "Runtime", "Device", "Batch", "min (ms)", "max (ms)", "mean (ms)", "median (ms)",
               "p99 (ms)", "Throughput (img/s)"]
    stats = ("min_ms", "max_ms", "mean_ms", "median_ms", "p99_ms")
    table = [[short_name(r["model"]), r["runtime"], r["device"], r["batch"], *(f"{r[k]:.2f}" for k in stats),
              f"{r['throughput']:.1f}"] for r in result["rows"]]
    lines.append(markdown_table(headers, table))
    if result["skipped"]:
        lines += ["", "Not measured:"] + [f"- {why}" for why in result["skipped"]]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> List[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKDOWN_FILE).write_text(render(result))
    (out / JSON_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return [out / MARKDOWN_FILE, out / JSON_FILE]
