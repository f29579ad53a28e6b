"""Render every config.pbtxt (and the TensorRT build script) from the Jinja2 templates in mnv3kit/templates/ (package data)."""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import jinja2

from .backend.serving import YIELD_MODES
from .errors import KitError
from .spec import (COMPILED_ARTIFACT, DEFAULT_VERSION, INPUT_DIMS, LABELS_FILE, MEAN, ONNX, ONNX_PLATFORM,
                   OPENVINO_BACKEND, OPENVINO_MODELS, PLAN_INFO_FILE, PT, PYTHON_BACKEND, RUNTIMES, STD,
                   TENSORRT_PLATFORM, TORCHSCRIPT_PLATFORM, TRT, U8, ModelSpec)

TARGETS = ("ngc", "local")
ONNX_ACCELERATORS = ("none", "tensorrt")
GPU_DECODE = ("gated", "on", "off")  # --gpu-decode
OPENVINO_PRECISIONS = ("fp32", "bf16")
TORCH_MODELS = (PT, U8)  # what --runtime applies to
CLASSIFIER_TEMPLATE = "classifier.pbtxt.j2"
# The load-time parity check's default factor on GPU instances (FP16; TF32 is cuDNN's default for FP32
# convolutions). Measured: Large, FP16, compiled, H200, three builds: max |logit difference| 0.121-0.138 at max
# |logit| 27.8 (4.4-5.0e-3 relative) against eager FP32 on the CPU; 0.02 leaves a 4x margin and still refuses wrong
# weights or kernels.
GPU_PARITY_TOLERANCE = 0.02
ORT_TRT_WORKSPACE_BYTES = 1 << 30  # the TensorRT execution provider's builder workspace (--onnx-accelerator tensorrt)


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: Tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        """``latest[:N]``, ``all`` or ``specific:1,2``."""
        kind, _, arg = text.partition(":")
        try:
            if kind == "latest":
                return cls("latest", int(arg or 1))
            if kind == "all" and not arg:
                return cls("all")
            if kind == "specific" and arg:
                return cls("specific", versions=tuple(int(v) for v in arg.split(",")))
        except ValueError:
            pass
        raise KitError(f"bad version policy {text!r}: use latest[:N], all, or specific:1,2")


@dataclass(frozen=True)
class Instances:
    kind: str = "KIND_GPU"
    count: int = 1
    gpus: Tuple[int, ...] = ()


# The queue bound when none is given: this many full batches of single-image requests per instance. Enough to keep
# every instance busy between two batches, small enough that an overloaded server refuses at once (UNAVAILABLE)
# instead of queueing for minutes and holding every queued request's input in memory.
QUEUE_BATCHES = 4
# A request still queued after 5 s is refused: a backstop behind the size bound, long enough for a small CPU
# machine loading a new model version beside the serving one. A request may ask for a shorter one, not a longer one.
QUEUE_TIMEOUT_US = 5_000_000


@dataclass(frozen=True)
class Batching:
    enabled: bool = True
    preferred: Tuple[int, ...] = (4, 8)
    queue_delay_us: int = 100
    max_queue_size: Optional[int] = None  # requests; None: QUEUE_BATCHES x max_batch_size x instances; 0: unbounded
    queue_timeout_us: int = QUEUE_TIMEOUT_US  # 0: no timeout
    yield_core: str = "auto"  # CPU python-backend models under overload: auto | always | never (serving.py)


@dataclass(frozen=True)
class GpuOptions:
    """How the local target's torch models run on KIND_GPU instances (ignored on CPU)."""

    precision: str = "fp32"  # fp32 | fp16 (computed in half, logits returned as FP32)
    channels_last: bool = False
    cuda_graph_batches: Tuple[int, ...] = ()  # capture one CUDA graph per size; a batch runs padded to the next
    compile_cache: str = "/tmp/mnv3kit-compile-cache"  # TorchInductor/Triton kernel caches of --runtime compiled
    parity_tolerance: float = GPU_PARITY_TOLERANCE  # load-time check of a GPU torch model (FP16, TF32, compiled)
    onnx_accelerator: str = "none"  # ngc: ONNX Runtime's TensorRT execution provider
    decode: str = "gated"  # the local image ensemble's JPEG decode on GPU instances: gated | on | off


@dataclass(frozen=True)
class ConfigOptions:
    """Everything a config depends on besides the model itself; build_repo.py's flags fill it."""

    target: str = "ngc"
    max_batch_size: int = 8
    num_classes: int = 5
    version: int = DEFAULT_VERSION
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    instances: Instances = field(default_factory=Instances)
    batching: Batching = field(default_factory=Batching)
    gpu: GpuOptions = field(default_factory=GpuOptions)
    runtime: str = "torchscript"  # of the torch models: torchscript | compiled (python backend, TorchInductor)
    cpu_parity_tolerance: float = 1e-4  # the build's --parity-tolerance, checked again at load on CPU instances
    openvino_precision: str = "fp32"  # of the OpenVINO model: fp32 | bf16 (behind the build's accuracy gate)


@dataclass(frozen=True)
class PlanOptions:
    opt_batch: int = 4
    max_batch: int = 8
    fp16: bool = False
    workspace_mb: int = 1600  # the seed's --workspace=1600


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("mnv3kit", "templates"),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug, not an empty string
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def python_backend(model: ModelSpec, opts: "ConfigOptions") -> bool:
    """Served by the python backend: everything on the local target, the compiled torch models anywhere."""
    return opts.target == "local" or (model in TORCH_MODELS and opts.runtime == "compiled")


def queue_size(opts: "ConfigOptions") -> int:
    if opts.batching.max_queue_size is not None:
        return opts.batching.max_queue_size
    return QUEUE_BATCHES * opts.max_batch_size * opts.instances.count


def instance_queue_size(opts: "ConfigOptions") -> int:
    """The share of queue_size() one python-backend instance keeps (each bounds its own queue)."""
    return -(-queue_size(opts) // opts.instances.count)


def warmup_batches(opts: "ConfigOptions") -> List[int]:
    """The batch sizes model_warmup runs at load: 1 and the max batch."""
    return sorted({1, opts.max_batch_size})


def artifact_of(model: ModelSpec, opts: "ConfigOptions") -> str:
    return COMPILED_ARTIFACT if model in TORCH_MODELS and opts.runtime == "compiled" else model.artifact


def python_runtime(model: ModelSpec, opts: "ConfigOptions") -> str:
    """The `runtime` parameter model.py reads: torch (TorchScript), compiled, onnxruntime or openvino."""
    if model == ONNX:
        return "onnxruntime"
    if model in OPENVINO_MODELS:
        return "openvino"
    return "compiled" if opts.runtime == "compiled" else "torch"


def _python_parameters(model: ModelSpec, opts: "ConfigOptions") -> dict:
    """What 1/model.py (mnv3kit/backend/classifier_model.py) reads: the artifact, how to run it, and for torch its GPU options."""
    runtime = python_runtime(model, opts)
    params = {"artifact": artifact_of(model, opts), "runtime": runtime}
    if opts.batching.enabled:  # the queue bound, kept by model.py (queue_policy.pbtxt.j2 says why)
        params.update(max_queue_size=str(instance_queue_size(opts)), queue_timeout_us=str(opts.batching.queue_timeout_us))
        if opts.instances.kind == "KIND_CPU":
            params["yield_core"] = opts.batching.yield_core
    if runtime == "openvino":
        params["precision"] = opts.openvino_precision
    elif runtime != "onnxruntime":
        on_gpu = opts.instances.kind == "KIND_GPU"
        params.update(precision=opts.gpu.precision, channels_last=str(opts.gpu.channels_last).lower(),
                      cuda_graph_batches=",".join(map(str, opts.gpu.cuda_graph_batches)),
                      parity_tolerance=str(opts.gpu.parity_tolerance if on_gpu else opts.cpu_parity_tolerance))
        if runtime == "compiled":
            params["compile_cache"] = opts.gpu.compile_cache
        if on_gpu:  # inputs already in GPU memory (CUDA shared memory, a GPU ensemble step) skip the host copy
            params["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"
    if model.input_dtype == "TYPE_UINT8" and runtime != "openvino":  # normalized by the runner (an IR: in its graph)
        params.update(mean=",".join(map(str, MEAN)), std=",".join(map(str, STD)))
    return params


def serving_blocks(model: ModelSpec, opts: "ConfigOptions") -> dict:
    """What sets one classifier config apart: its platform (native backends) or backend, string parameters, execution
    accelerator and CUDA graphs; the rest of classifier.pbtxt.j2 is the same for every model."""
    blocks = {"platform": "", "backend": "", "parameters": {}, "accelerator": None, "cuda_graph_batches": ()}
    if python_backend(model, opts):
        return {**blocks, "backend": PYTHON_BACKEND, "parameters": _python_parameters(model, opts)}
    if model in OPENVINO_MODELS:
        # Triton's OpenVINO backend (24.10) takes no FP32 switch: HINT_BF16 is its only precision parameter, and
        # OpenVINO computes in BF16 by default on a CPU that has it; the build's accuracy gate covers that case.
        parameters = {"PERFORMANCE_HINT": "LATENCY"}
        if opts.openvino_precision == "bf16":
            parameters["HINT_BF16"] = "YES"
        return {**blocks, "backend": OPENVINO_BACKEND, "parameters": parameters}
    blocks["platform"] = model.platform
    if model.platform == TORCHSCRIPT_PLATFORM:
        blocks["parameters"] = {"INFERENCE_MODE": "true"}
    elif model.platform == ONNX_PLATFORM and opts.gpu.onnx_accelerator == "tensorrt":
        # ONNX Runtime hands the graph to its TensorRT execution provider (built at load, on the serving GPU)
        blocks["accelerator"] = {"name": "tensorrt", "parameters": {
            "precision_mode": opts.gpu.precision.upper(), "max_workspace_size_bytes": str(ORT_TRT_WORKSPACE_BYTES)}}
    elif model.platform == TENSORRT_PLATFORM:
        # the TensorRT backend captures one CUDA graph per listed batch size and pads a batch up to the next one
        blocks["cuda_graph_batches"] = opts.gpu.cuda_graph_batches
    return blocks


def check_config_options(opts: "ConfigOptions") -> None:
    if opts.target not in TARGETS:
        raise KitError(f"unknown target {opts.target!r}: choose one of {', '.join(TARGETS)}")
    if opts.gpu.precision not in ("fp32", "fp16"):
        raise KitError(f"precision must be fp32 or fp16, got {opts.gpu.precision!r}")
    if opts.runtime not in RUNTIMES:
        raise KitError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {opts.runtime!r}")
    if opts.runtime == "compiled" and opts.instances.kind != "KIND_GPU":
        raise KitError("--runtime compiled needs --instance-kind KIND_GPU: TorchInductor's C++ build on a CPU takes "
                       "minutes per batch size (280 s measured on 2 cores) and ONNX Runtime is the faster CPU runtime; "
                       "use --runtime torchscript or --models onnx on CPU")
    if opts.openvino_precision not in OPENVINO_PRECISIONS:
        raise KitError(f"--openvino-precision must be one of {', '.join(OPENVINO_PRECISIONS)}")
    if opts.gpu.onnx_accelerator not in ONNX_ACCELERATORS:
        raise KitError(f"--onnx-accelerator must be one of {', '.join(ONNX_ACCELERATORS)}")
    if opts.batching.yield_core not in YIELD_MODES:
        raise KitError(f"--yield-core must be one of {', '.join(YIELD_MODES)}, got {opts.batching.yield_core!r}")
    if opts.gpu.decode not in GPU_DECODE:
        raise KitError(f"--gpu-decode must be one of {', '.join(GPU_DECODE)}")
    bad = [b for b in opts.gpu.cuda_graph_batches if not 1 <= b <= opts.max_batch_size]
    if bad:
        raise KitError(f"--cuda-graph-batches {bad} must lie in 1..max_batch_size ({opts.max_batch_size})")


def render_config(model: ModelSpec, opts: ConfigOptions) -> str:
    check_config_options(opts)
    if not python_backend(model, opts) and model.input_dtype != "TYPE_FP32" and model not in OPENVINO_MODELS:
        raise KitError(f"{model.name} is served by the python backend only: --target local or --runtime compiled")
    bad = [b for b in opts.batching.preferred if not 1 <= b <= opts.max_batch_size]
    if opts.batching.enabled and bad:
        raise KitError(f"preferred batch sizes {bad} must lie in 1..max_batch_size ({opts.max_batch_size})")
    if opts.batching.queue_timeout_us < 0 or (opts.batching.max_queue_size or 0) < 0:
        raise KitError("the queue size and timeout must be >= 0 (0: no bound)")
    # OpenVINO runs on CPUs only (Triton's OpenVINO backend and the python backend's runner alike)
    instances = Instances("KIND_CPU", opts.instances.count) if model in OPENVINO_MODELS else opts.instances
    return _env().get_template(CLASSIFIER_TEMPLATE).render(
        template=CLASSIFIER_TEMPLATE, model=model, max_batch_size=opts.max_batch_size, num_classes=opts.num_classes,
        input_dims=INPUT_DIMS, labels_file=LABELS_FILE, version_policy=opts.version_policy, instance=instances,
        batching=opts.batching, queue_size=queue_size(opts), queue_in_model=python_backend(model, opts),
        warmup_batches=warmup_batches(opts), **serving_blocks(model, opts),
    )


def trt_shapes(profile_batches: Tuple[int, int, int]) -> dict:
    dims = "x".join(str(d) for d in INPUT_DIMS)
    return {k: f"{b}x{dims}" for k, b in zip(("min", "opt", "max"), profile_batches)}


def render_plan_script(plan: PlanOptions, version: int = DEFAULT_VERSION) -> str:
    profile = {"min": 1, "opt": plan.opt_batch, "max": plan.max_batch}
    return _env().get_template("build_plan.sh.j2").render(
        model=TRT, onnx_model=ONNX.name, onnx_artifact=ONNX.artifact, version=version,
        plan_info_file=PLAN_INFO_FILE, shapes=trt_shapes((1, plan.opt_batch, plan.max_batch)),
        profile=profile, fp16=plan.fp16, workspace_mb=plan.workspace_mb,
    )


def check_plan_options(plan: PlanOptions, max_batch_size: Optional[int] = None) -> None:
    if not 1 <= plan.opt_batch <= plan.max_batch:
        raise KitError(f"--opt-batch {plan.opt_batch} must lie in 1..--max-batch ({plan.max_batch})")
    if max_batch_size is not None and plan.max_batch < max_batch_size:
        raise KitError(f"the TensorRT profile max ({plan.max_batch}) is below max_batch_size ({max_batch_size})")
