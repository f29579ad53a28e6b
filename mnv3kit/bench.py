"""In-process latency of every artifact of a built repository, per batch size: the original project's trtexec table.

Each model runs the code that serves it, minus Triton. A python-backend model (--target local) is the repository's
own model.py (a copy of mnv3kit/backend/classifier_model.py) initialized from its config.pbtxt as Triton would, so its runner,
parameters (precision, CUDA graphs, UINT8 input) and threads are the served ones; a native-backend model
(--target ngc) runs model.pt with mnv3kit/backend/classifier_model.py's TorchRunner, model.onnx with its OnnxRunner, and
model.plan with the TensorRT 10 Python API (torch tensors as buffers). Every call goes from a host array to a host
array, as a served request does (on a GPU: H2D copy + compute + D2H copy, like trtexec's "Latency"). After warm-up
calls, like trtexec's --iterations/--duration, a batch size runs at least --iters calls AND at least --seconds
seconds. TensorRT cannot be installed on the kit's CPU machines: that runner is written against TensorRT 10's
documented API and used only where the package and a GPU exist (NVIDIA's image has trtexec instead:
perf/trtexec_latency.sh).
"""

import importlib.util
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from . import versions
from .backend.classifier_model import OnnxRunner, OpenVinoRunner, TorchRunner
from .errors import KitError
from .report import hardware, hardware_line, markdown_table, model_order, now, short_name
from .repository import read_manifest
from .spec import ENSEMBLE_PLATFORM, INPUT_DIMS, ONNX, OV, PT, TRT
from .trt_build import HOW_TO_BUILD, import_tensorrt
from .validate import ModelConfig, artifact_name, parse_config

DEVICES = ("auto", "cpu", "cuda")
TRTEXEC_HINT = "inside NVIDIA's Triton image run perf/trtexec_latency.sh on the plan instead"
MARKDOWN_FILE = "engine_latency.md"
JSON_FILE = "engine_latency.json"

Forward = Callable[[np.ndarray], np.ndarray]


@dataclass
class Artifact:
    model: str  # Triton model name
    path: Path
    version: str
    config: ModelConfig


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
        if name is None:  # the image ensemble and its preprocessing: no classifier artifact
            what = "an ensemble" if config.platform == ENSEMBLE_PLATFORM else f"a {config.backend} backend model"
            skipped.append(f"{config.name}: {what} without a classifier artifact, not timed in-process "
                           f"(perf/bench_image.py measures the image path)")
            continue
        if name not in (PT.artifact, ONNX.artifact, TRT.artifact, OV.artifact):
            skipped.append(f"{config.name}: no in-process runner for its artifact {name!r}")
            continue
        path = config_path.parent / version / name
        if not path.is_file():
            hint = f"; {HOW_TO_BUILD}" if name == TRT.artifact else ""
            skipped.append(f"{config.name}: {version}/{name} not built{hint}")
            continue
        artifacts.append(Artifact(config.name, path, version, config))
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


class TensorRTRunner:
    """TensorRT 10: deserialize, one execution context, torch-owned buffers (pinned host, device), execute_async_v3.
    Called like the python backend's runners: host array in, host array out."""

    def __init__(self, path: Path, input_name: str):
        import torch

        trt = import_tensorrt()
        self.torch, self.trt = torch, trt
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise KitError(f"{path} does not deserialize with TensorRT {trt.__version__} on this GPU: "
                           f"rebuild it here ({HOW_TO_BUILD})")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.input_name = input_name
        self.batch = None
        self.buffers: Dict[str, tuple] = {}  # name -> (device, pinned host); TensorRT holds their raw addresses

    def _bind(self, batch: int) -> None:
        torch, trt, engine, context = self.torch, self.trt, self.engine, self.context
        if not context.set_input_shape(self.input_name, (batch, *INPUT_DIMS)):
            raise KitError(f"the plan's optimization profile does not accept batch {batch}")
        self.buffers = {}
        for name in (engine.get_tensor_name(i) for i in range(engine.num_io_tensors)):
            if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise KitError(f"plan tensor {name!r} is {engine.get_tensor_dtype(name)}, the kit's contract is FP32")
            shape = tuple(context.get_tensor_shape(name))
            self.buffers[name] = (torch.empty(shape, device="cuda:0"), torch.empty(shape).pin_memory())
            context.set_tensor_address(name, self.buffers[name][0].data_ptr())
        self.batch = batch

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        if batch.shape[0] != self.batch:
            self._bind(batch.shape[0])
        outputs = [name for name in self.buffers if name != self.input_name]
        device_in, host_in = self.buffers[self.input_name]
        host_in.copy_(torch.from_numpy(batch))
        with torch.cuda.stream(self.stream):
            device_in.copy_(host_in, non_blocking=True)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise KitError("TensorRT execute_async_v3 failed")
            for name in outputs:
                self.buffers[name][1].copy_(self.buffers[name][0], non_blocking=True)
        self.stream.synchronize()
        return self.buffers[outputs[0]][1].numpy()


def served_forward(artifact: Artifact, device: str) -> Forward:
    """The repository's own python-backend model.py, initialized as Triton would for one instance of this config."""
    path = artifact.path.parent / "model.py"
    spec = importlib.util.spec_from_file_location(f"served_{artifact.model}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:  # a model.py from before the kit made it importable outside Triton
        raise KitError(f"{path} cannot run outside Triton ({exc}): rebuild the repository with build_repo.py") from None
    model = module.TritonPythonModel()
    model.initialize(initialize_args(artifact.config, artifact.path.parent.parent, artifact.version, device))
    return model.forward


def initialize_args(config: ModelConfig, model_dir: Path, version, device: str) -> dict:
    """What Triton hands a python-backend model's initialize() for one instance of ``config`` on ``device`` (cpu,
    cuda or cuda:N): the config as JSON with every field, empty parameter strings included."""
    try:  # protobuf >= 5.26 renamed the flag (the GPU host's Python has it; tritonclient 2.51 pins < 5 here)
        as_json = json_format.MessageToDict(config, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)
    except TypeError:
        as_json = json_format.MessageToDict(config, preserving_proto_field_name=True,
                                            including_default_value_fields=True)
    for param in as_json.get("parameters", {}).values():
        param.setdefault("string_value", "")
    return {"model_config": json.dumps(as_json), "model_repository": str(model_dir), "model_version": str(version),
            "model_instance_kind": "GPU" if device.startswith("cuda") else "CPU",
            "model_instance_device_id": device.partition(":")[2] or "0",
            "model_instance_name": f"{config.name}_in_process"}


def make_forward(artifact: Artifact, device: str) -> Tuple[Optional[Forward], Optional[str]]:
    """(forward, None) or (None, why it is skipped) for the resolved device (cpu/cuda)."""
    if artifact.config.backend == "python":
        return served_forward(artifact, device), None
    if artifact.path.name == PT.artifact:
        return TorchRunner(str(artifact.path), "cuda:0" if device == "cuda" else "cpu"), None
    if artifact.path.name == ONNX.artifact:  # without its CUDA provider, onnxruntime stays on CPU (Device column)
        return OnnxRunner(str(artifact.path), artifact.config.input[0].name, 0 if device == "cuda" else None), None
    if artifact.path.name == OV.artifact:  # Triton's OpenVINO backend: BF16 when the config's HINT_BF16 says so
        bf16 = artifact.config.parameters["HINT_BF16"].string_value.lower() == "yes" \
            if "HINT_BF16" in artifact.config.parameters else False
        return OpenVinoRunner(str(artifact.path), "bf16" if bf16 else "fp32"), None
    if import_tensorrt() is None:
        return None, f"{artifact.model}: the TensorRT Python package is not importable here; {TRTEXEC_HINT}"
    if device != "cuda":
        return None, f"{artifact.model}: a TensorRT plan runs on a CUDA GPU only (this run is on cpu)"
    return TensorRTRunner(artifact.path, artifact.config.input[0].name), None


def describe(forward: Forward) -> Tuple[str, str]:
    """(runtime, device) of a runner, as the table shows them. By class name: a repository's model.py is its own
    module, not mnv3kit.backend.classifier_model."""
    kind = type(forward).__name__
    if kind == "TorchRunner":
        return "TorchScript", gpu_name() if forward.device.type == "cuda" else "cpu"
    if kind == "OnnxRunner":
        return "ONNX Runtime", gpu_name() if "CUDAExecutionProvider" in forward.session.get_providers() else "cpu"
    if kind == "OpenVinoRunner":
        return "OpenVINO", "cpu"
    return "TensorRT", gpu_name()


def sample_input(config: ModelConfig, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if config.input[0].data_type == model_config_pb2.TYPE_UINT8:  # raw pixels, normalized inside the model
        return rng.integers(0, 256, (batch, *INPUT_DIMS), dtype=np.uint8)
    return rng.standard_normal((batch, *INPUT_DIMS), dtype=np.float32)


def measure(call: Callable[[], object], warmup: int, iters: int, seconds: float = 0.0,
            sync: Callable[[], object] = lambda: None, gap_s: float = 0.0) -> List[float]:
    """Milliseconds per call, at least ``iters`` calls and ``seconds`` of timed calls, after ``warmup`` calls.

    ``sync`` (e.g. torch.cuda.synchronize) ends each timed call where the call itself returns before the device is
    done; ``gap_s`` idles before each call, as requests at concurrency 1 leave a GPU (which may clock down)."""
    for _ in range(warmup):  # also pays TorchScript's profiling runs and cuDNN/TensorRT autotuning
        call()
    sync()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < seconds:
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure_loop(call: Callable[[], object], warmup: int, iters: int,
                 sync: Callable[[], object] = lambda: None) -> float:
    """Mean milliseconds per call of ``iters`` back-to-back calls, synchronized once before and after: the rate of
    queued device work (per-call timing would add a host round trip to each)."""
    for _ in range(warmup):
        call()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    sync()
    return (time.perf_counter() - start) * 1e3 / iters


def summarize(model: str, runtime: str, device: str, batch: int, times: Sequence[float]) -> Row:
    t = np.asarray(times)
    return Row(model, runtime, device, batch, len(t), float(t.min()), float(t.max()), float(t.mean()),
               float(np.median(t)), float(np.percentile(t, 99)), batch * 1e3 / float(t.mean()))


def run(repo: Path, batch_sizes: Optional[Sequence[int]], device: str, warmup: int, iters: int, seconds: float,
        progress: Callable[[str], None]) -> dict:
    host = hardware()  # before measuring: our own load must not count as the host's
    manifest, artifacts, skipped = discover(repo)
    device = resolve_device(device)
    for a in artifacts:
        too_big = [b for b in (batch_sizes or []) if b > a.config.max_batch_size]
        if too_big:
            raise KitError(f"batch size {too_big[0]} exceeds max_batch_size {a.config.max_batch_size} of {a.model} "
                           f"(its config.pbtxt)")
    rows: List[Row] = []
    for artifact in artifacts:
        forward, why = make_forward(artifact, device)
        if forward is None:
            skipped.append(why)
            continue
        runtime, where = describe(forward)
        for batch in batch_sizes or range(1, artifact.config.max_batch_size + 1):
            progress(f"{artifact.model} ({runtime}, {where}) batch {batch}")
            x = sample_input(artifact.config, batch)
            times = measure(lambda: forward(x), warmup, iters, seconds)
            rows.append(summarize(artifact.model, runtime, where, batch, times))
    if not rows:
        raise KitError(f"nothing measured in {repo}: " + "; ".join(skipped))
    return {"date": now(), "repo": str(repo), "arch": manifest.get("arch"), "hardware": host,
            "versions": versions("torch", "onnxruntime", "tensorrt"), "settings": {"device": device, "warmup": warmup, "iters": iters,
                                                 "seconds": seconds},
            "rows": [asdict(r) for r in rows], "skipped": skipped}


def render(result: dict) -> str:
    s, v = result["settings"], result["versions"]
    lines = [f"# Engine latency (in-process, no server): MobileNetV3 {result.get('arch') or '?'}", "",
             f"- Date: {result['date']}",
             f"- Repository: {result['repo']}",
             f"- Hardware: {hardware_line(result['hardware'])}",
             f"- Software: torch {v['torch']}, onnxruntime {v['onnxruntime']}, "
             f"TensorRT {v['tensorrt'] or 'not installed'}",
             "- Code: the served model's own (python backend: the repository's model.py, initialized from its "
             "config.pbtxt); host array in -> host array out, as a request (on a GPU: with both copies, like "
             "trtexec's Latency)",
             f"- Timing: {s['warmup']} warm-up calls, then at least {s['iters']} calls and {s['seconds']} s per batch "
             f"size, one call at a time; throughput = batch / mean latency", ""]
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
