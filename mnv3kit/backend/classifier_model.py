"""Triton python-backend model of the kit's python-backend repositories (--target local, or --runtime compiled).

Copied verbatim into <model>/<version>/model.py. It serves the same contract as the native backends
(input [N,3,224,224] -> logits [N,classes] FP32) by running the artifact beside it (config parameters `artifact`
and `runtime`): model.pt with TorchScript, model.pt2 (a torch.export program) compiled by TorchInductor,
model.onnx with ONNX Runtime, or model.xml (OpenVINO's IR) with OpenVINO's CPU runtime. execute() hands the requests to the model's queue (mnv3kit_serving.py beside this file) and
returns at once; its worker runs the waiting requests as ONE forward pass and splits the result back. A UINT8 input (raw pixels) is normalized on the serving device with the
config's `mean`/`std`.
On GPU instances the torch runner can compute in FP16, use channels_last, and replay one CUDA graph per batch size
in `cuda_graph_batches` (a batch runs padded to the next captured size): eager PyTorch is launch-bound at ~2.7 ms
per call on an H100/H200 whatever the batch, a replayed graph is not. Inputs that Triton already holds in GPU memory
(CUDA shared memory, or an ensemble step on the GPU) are taken as they are (DLPack), with no trip through the host.
Before serving, a torch runner checks itself against the build's eager FP32 logits on real photographs
(parity.npz beside the artifact): a model that does not pass does not load.
Self-contained on purpose: it runs inside Triton's stub process, which need not have the kit installed; the
kit's benchmarks import TorchRunner from here so that served and raw numbers run the same code.
"""

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by the kit's benchmarks
    pb_utils = None

try:  # in a model repository: the copy beside this file (the stub puts the version directory on sys.path)
    from mnv3kit_serving import RequestQueue, read_config
except ModuleNotFoundError:  # imported by the kit itself (in-process benchmarks)
    from mnv3kit.backend.serving import RequestQueue, read_config

PARITY_FILE = "parity.npz"  # pixels (uint8 NCHW), mean, std, logits (eager FP32 at build time)
COMPILED_SUFFIX = ".pt2"
# A host batch larger than this is copied into pinned memory by several threads: one thread copies ~10 GB/s, and a
# UINT8 batch of 64 (9.6 MB) or an FP32 one (38.5 MB) would otherwise keep the GPU waiting.
STAGE_SPLIT_BYTES, STAGE_THREADS = 4 << 20, 4
FALLBACK = "build with --runtime torchscript (TorchScript replayed as CUDA graphs) to serve without TorchInductor"


class RunnerError(RuntimeError):
    """The runner cannot serve as configured; the message names the cause and the fallback."""


def _log(message: str) -> None:
    if pb_utils is not None:
        pb_utils.Logger.log_info(message)
    else:
        print(message, flush=True)


def _floats(text: str) -> Optional[Tuple[float, ...]]:
    return tuple(float(v) for v in text.split(",")) if text else None


def allowed_difference(reference: np.ndarray, tolerance: float) -> float:
    """Max |logit difference| allowed against ``reference``: tolerance x max(1, max |logit|) (the build's parity rule)."""
    return tolerance * max(1.0, float(np.abs(reference).max()))


def physical_cores() -> int:
    """The cores this process may run on, the hyperthreads of a core counted once (ONNX Runtime's default thread
    count is the physical cores: counting logical CPUs would give a "smaller" session more threads on SMT hosts)."""
    cpus = os.sched_getaffinity(0)
    try:
        return len({Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip()
                    for cpu in cpus})
    except OSError:  # no sysfs topology: every CPU a core
        return len(cpus)


def cpu_threads(config: dict, params: Dict[str, str]) -> int:
    """Threads for each CPU instance of a model (Triton's config as initialize() gets it): the model's ``threads``
    parameter when set; else, with several CPU instances, the cores this process may run on shared among them; else 0
    (the runtime's default: one thread per core). Each instance is a process of its own, and a runtime left to its
    default starts one thread per core in each: N instances would run N threads on every core, which wait for each
    other at every parallel step of a forward pass."""
    if int(params.get("threads", "0") or 0) > 0:
        return int(params["threads"])
    instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])
                    if group.get("kind", "KIND_CPU") == "KIND_CPU")
    return max(1, physical_cores() // instances) if instances > 1 else 0


def bucket_sizes(max_batch: int) -> list:
    """Powers of two below max_batch, and max_batch."""
    return [b for b in (2 ** i for i in range(max_batch.bit_length())) if b < max_batch] + [max_batch]


class TorchRunner:
    """A torch model on CPU or GPU, called with host arrays and/or GPU tensors (one per request).

    ``source``: a path to model.pt (TorchScript: frozen; on a CPU also optimized for inference with oneDNN) or model.pt2 (a torch.export program, compiled
    with TorchInductor per batch size in ``graph_batches``), or an nn.Module run eagerly (benchmarks' anchor).
    ``threads``: torch's threads on a CPU (0: torch's default, one per core), set on the thread that makes the runner.
    """

    def __init__(self, source, device: str = "cpu", precision: str = "fp32", channels_last: bool = False,
                 graph_batches: Sequence[int] = (), mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, uint8_input: bool = False,
                 compile_cache: Optional[str] = None, max_batch: int = 0, threads: int = 0):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        self.dtype = torch.float16 if precision == "fp16" and on_gpu else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.stage_pool = None
        if on_gpu:
            # Each instance has its own stub process: make its GPU the current device, or torch.cuda.graph() would
            # capture on a stream of GPU 0 while an instance on another GPU (instance_group gpus: [0, 1]) runs.
            torch.cuda.set_device(self.device)
            # cuDNN's autotuner only with CUDA graphs (a few fixed shapes, tuned at capture): without them a
            # dynamic batcher forms every size up to max batch, each tuned on first sight. Measured without graphs
            # on an H100 (Large FP16, TorchScript, perf/torchscript_gpu_shapes.py): steady 2,156 vs 1,780 img/s
            # at batch 8 and 9,671 vs 8,002 at 64 with it off. The CPU side is a few copies per batch: torch's
            # default of one thread per core, in every instance's process, would only contend.
            torch.backends.cudnn.benchmark = bool(graph_batches)
            torch.set_num_threads(1)
            from concurrent.futures import ThreadPoolExecutor

            self.stage_pool = ThreadPoolExecutor(STAGE_THREADS, thread_name_prefix="stage")
        elif threads:
            torch.set_num_threads(threads)
        self.compiled = isinstance(source, (str, Path)) and str(source).endswith(COMPILED_SUFFIX)
        self.runtime = "compiled" if self.compiled else "torchscript" if isinstance(source, (str, Path)) else "eager"
        self.module = self._load(source)
        self.threads = torch.get_num_threads()  # of the thread that made the runner, which runs it
        # oneDNN's ReLU/HSwish (optimize_for_inference in _load) turn NaN inputs into finite logits
        self.clamps_nan = self.runtime == "torchscript" and not on_gpu
        self.uint8_input = uint8_input
        if uint8_input:  # (x / 255 - mean) / std  ==  x * scale + shift
            m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
            self.scale = (1.0 / (255.0 * s)).to(self.device, self.dtype)
            self.shift = (-m / s).to(self.device, self.dtype)
        self.sizes = sorted(set(graph_batches))  # the batch sizes a call is padded to (compiled, or captured)
        if on_gpu and not self.sizes and max_batch:
            # cuDNN 9 chooses its kernels per input shape, and for FP16 on an H100 that costs ~1.5 s per new batch
            # size (FP32 ~0.1 s; eager torch alike, 6-40 ms with cuDNN off: perf/torchscript_gpu_shapes.py), and
            # TorchInductor compiles per new shape for seconds, both of which a dynamic batcher would meet on
            # clients' requests: calls are padded to powers of two, each run (compiled) at load.
            self.sizes = bucket_sizes(max_batch)
        if self.compiled:
            self.module = self._compile(self.module, compile_cache)
        self.graphs: Dict[int, tuple] = {}
        if on_gpu and graph_batches:
            for batch in self.sizes:
                self._capture(batch)
        elif self.compiled or on_gpu:
            for batch in self.sizes:  # compile every size now, not on a client's request
                self._run(self._zeros(batch))

    def _load(self, source):
        torch = self.torch
        if isinstance(source, torch.fx.GraphModule):  # an exported program's module: traced in eval mode already,
            module = source                            # and torch 2.11 refuses eval() on it
        elif not isinstance(source, (str, Path)):
            module = source.eval()
        elif self.compiled:
            module = torch.export.load(str(source)).module()
        else:
            module = torch.jit.load(str(source), map_location=self.device).eval()
        module = module.to(self.device).to(dtype=self.dtype, memory_format=self.memory_format)
        if self.runtime == "torchscript":
            module = torch.jit.freeze(module)  # BatchNorm folded into the convolutions
            if self.device.type == "cpu":
                # oneDNN convolutions on oneDNN tensors: measured on a 2-core EPYC (Large) 2.7 x the plain model's
                # img/s at batch 8, 1.7 x at batch 1, max |logit difference| 6e-6 of max |logit|. Not on a GPU:
                # measured on an H200 it halves throughput at batch 64 (3.89 vs 1.99 ms per replay).
                module = torch.jit.optimize_for_inference(module)
        return module

    def adapt(self, overloaded: bool, yielding: bool) -> None:
        """While the model's queue refuses requests (overload) and yields a core, compute on one thread fewer on a
        CPU: taking requests in (gRPC, tritonserver, the stub) and refusing them needs a core, and an OpenMP team that
        shares its cores with them waits at every barrier for a preempted thread. Measured on 2 cores (Small,
        perf/overload.py at 2 x capacity, perf/results/overload-20261205-2005): 149-154 answers/s with both threads,
        335-346 yielding one."""
        if self.device.type == "cpu" and self.threads > 1:
            self.torch.set_num_threads(self.threads - 1 if yielding else self.threads)

    def _compile(self, module, cache: Optional[str]):
        """The network alone is compiled (the UINT8 normalization stays outside), so the FP32 and UINT8 models share
        one set of kernels, and TorchInductor's cache serves the second from the first."""
        torch = self.torch
        if cache:  # TorchInductor's and Triton's on-disk caches: a restart reuses the kernels compiled before
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache) / "inductor")
            os.environ["TRITON_CACHE_DIR"] = str(Path(cache) / "triton")
        torch._dynamo.config.cache_size_limit = max(8, 2 * len(self.sizes))  # one graph per batch size
        return torch.compile(module, dynamic=False if self.sizes else None)

    def _forward(self, x):
        x = x.to(self.dtype)
        if self.uint8_input:
            x = x * self.scale + self.shift
        return self.module(x.contiguous(memory_format=self.memory_format)).float()

    def _zeros(self, batch: int, pinned: bool = False):
        dtype = self.torch.uint8 if self.uint8_input else self.torch.float32
        device = "cpu" if pinned else self.device
        return self.torch.zeros((batch, 3, 224, 224), dtype=dtype, device=device, pin_memory=pinned)

    def _run(self, x):
        try:
            with self.torch.no_grad():
                return self._forward(x)
        except Exception as exc:  # noqa: BLE001 - TorchInductor/Triton failures surface here
            if not self.compiled:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunnerError(f"TorchInductor could not compile the model for batch {x.shape[0]} on "
                              f"{self.device} ({type(exc).__name__}: {first}); {FALLBACK}") from exc

    def _capture(self, batch: int) -> None:
        torch = self.torch
        static_in = self._zeros(batch)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # compile / let the TorchScript executor optimize, before the capture
                self._run(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            static_out = self._forward(static_in)
        self.graphs[batch] = (graph, static_in, self._zeros(batch, pinned=True), static_out)

    def _stage(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Copy a host part into pinned memory, in slices on the stage threads when it is large."""
        if src.nbytes < STAGE_SPLIT_BYTES or len(src) < 2:
            np.copyto(dst, src)
            return
        bounds = np.linspace(0, len(src), min(STAGE_THREADS, len(src)) + 1).astype(int)
        list(self.stage_pool.map(lambda ab: np.copyto(dst[ab[0]:ab[1]], src[ab[0]:ab[1]]),
                                 zip(bounds[:-1], bounds[1:])))

    def __call__(self, *parts) -> np.ndarray:
        """Logits of the parts stacked in order; each part is a host array or a tensor on this device."""
        torch = self.torch
        n = sum(int(p.shape[0]) for p in parts)
        size = next((b for b in self.sizes if b >= n), None)
        if size not in self.graphs:
            tensors = [torch.from_numpy(p) if isinstance(p, np.ndarray) else p for p in parts]
            x = tensors[0] if len(tensors) == 1 else torch.cat([t.to(self.device) for t in tensors])
            if size is not None and size > n:  # pad to a compiled (CPU) or warmed (GPU) size
                x = torch.cat([x.to(self.device), torch.zeros((size - n, *x.shape[1:]), dtype=x.dtype,
                                                              device=self.device)])
            return self._run(x.to(self.device))[:n].cpu().numpy()
        graph, static_in, pinned, static_out = self.graphs[size]
        start = 0
        with torch.no_grad():
            for part in parts:
                stop = start + part.shape[0]
                if isinstance(part, np.ndarray):  # pinned staging: the host-to-device copy runs at full speed
                    self._stage(part, pinned[start:stop].numpy())
                    static_in[start:stop].copy_(pinned[start:stop], non_blocking=True)
                else:
                    static_in[start:stop].copy_(part)
                start = stop
            graph.replay()
            return static_out[:n].cpu().numpy()

    def check_parity(self, path: Path, tolerance: float) -> str:
        """Compare with the build's eager FP32 logits on its parity photographs; raise RunnerError if they differ."""
        data = np.load(path)
        pixels, reference = data["pixels"], data["logits"]
        n = min(len(pixels), max(self.sizes or [len(pixels)]))
        x = pixels[:n]
        if not self.uint8_input:  # exactly mnv3kit.preprocess.normalize
            x = (x.astype(np.float32) / 255.0 - data["mean"].reshape(3, 1, 1)) / data["std"].reshape(3, 1, 1)
        out, reference = self(np.ascontiguousarray(x)), reference[:n]
        diff, limit = float(np.abs(out - reference).max()), allowed_difference(reference, tolerance)
        same_top1 = bool((out.argmax(1) == reference.argmax(1)).all())
        summary = (f"{self.runtime} {str(self.dtype).replace('torch.', '')} on {self.device}: max |logit difference| {diff:.3e} "
                   f"vs the build's eager FP32 on {n} photographs (limit {limit:.1e}), top-1 "
                   f"{'same' if same_top1 else 'DIFFERS'}")
        if not (diff <= limit and same_top1):
            raise RunnerError(f"parity gate failed: {summary}; serve in fp32 or {FALLBACK}")
        return summary


class OnnxRunner:
    clamps_nan = False  # NaN inputs give NaN logits, which logit_responses refuses

    def __init__(self, path: str, input_name: str, device_id: Optional[int] = None, threads: int = 0):
        """``threads``: intra-op threads on the CPU (0: one per physical core)."""
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device_id is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        self.ort, self.path, self.providers = ort, path, providers
        self.on_cpu = providers == ["CPUExecutionProvider"]
        self.threads = threads or physical_cores()
        self.full = self.session = self._session(self.threads)
        self.busy = self.lean = None  # sessions for an overload, made at the first: without spinning, one thread fewer
        self.input_name = input_name

    def _session(self, threads: int, spin: bool = True):
        """A session on `threads` threads. Always given: left at 0, ONNX Runtime starts one thread per physical
        core of the host and pins each to its core, outside the CPU set of a container, a Kubernetes pod or
        taskset, where it then competes with whatever runs on those cores.

        Its threads spin while they wait between the parallel parts of a run (spin False: they sleep), and here not
        after a run: a spinning thread holds a core that tritonserver and the stub need to take requests in. Measured
        on 2 cores with the client on them (perf/results/onnx-spin-20261206): stopping the spin when a run ends raised
        the capacity from 221-266 to 341-373 requests/s (Small) and concurrency 8 from 124.6 to 150.2 img/s (Large);
        not spinning at all cost a fifth at concurrency 1 but answered most at 2 x capacity (186-217 answers/s vs
        169-185 stopping, 140-187 spinning). With the client on other cores (a Xeon), these sessions answered as
        many as spinning ones did, on 0.15 core less."""
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return self.ort.InferenceSession(self.path, options, providers=self.providers)

    def adapt(self, overloaded: bool, yielding: bool) -> None:
        """As TorchRunner.adapt, and while overloaded on every core, a session whose threads do not spin (see
        _session). ONNX Runtime fixes both per session: the others are made at the first overload."""
        if not self.on_cpu:
            return
        if yielding and self.threads > 1:
            self.lean = self.lean or self._session(self.threads - 1)
            self.session = self.lean
        elif overloaded:
            self.busy = self.busy or self._session(self.threads, spin=False)
            self.session = self.busy
        else:
            self.session = self.full

    def __call__(self, *parts: np.ndarray) -> np.ndarray:
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self.session.run(None, {self.input_name: batch})[0]


class OpenVinoRunner:
    """model.xml on OpenVINO's CPU plugin: compiled once, one infer request, called from one thread, with batches of
    the IR's input type (FP32 normalized, or UINT8 pixels for an IR that normalizes).

    The precision is always set: OpenVINO's own default on a CPU with BF16 (AVX512_BF16 or AMX) is BF16, which would
    not serve the FP32 model the build checked. LATENCY is one stream over every core: on 2 cores the fastest for
    batches 1-8 (two streams halve each batch's threads and gain nothing back)."""

    clamps_nan = True  # its CPU kernels' ReLU/HSwish turn NaN inputs into finite logits

    def __init__(self, path: str, precision: str = "fp32", threads: int = 0):
        import openvino as ov

        if precision not in ("fp32", "bf16"):
            raise RunnerError(f"OpenVINO precision must be fp32 or bf16, got {precision!r}")
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise RunnerError("precision bf16, but this CPU has no BF16 (neither AVX512_BF16 nor AMX): rebuild with "
                              "--openvino-precision fp32")
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self.compiled = core.compile_model(path, "CPU", config)
        self.full = self.request = self.compiled.create_infer_request()
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.input_dtype = self.compiled.input(0).get_element_type().to_dtype()
        self.core, self.path, self.config, self.lean = core, path, config, None

    def adapt(self, overloaded: bool, yielding: bool) -> None:
        """As TorchRunner.adapt; OpenVINO fixes its threads when it compiles, so a second compiled model (made at the
        first yield) computes then."""
        if yielding and self.lean is None and self.threads > 1:
            lean = self.core.compile_model(self.path, "CPU",
                                           {**self.config, "INFERENCE_NUM_THREADS": str(self.threads - 1)})
            self.lean = lean.create_infer_request()
        self.request = self.lean if yielding and self.lean is not None else self.full

    def __call__(self, *parts: np.ndarray) -> np.ndarray:
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        # share_inputs: the C-contiguous batch is read in place; the result is copied out of the request
        return self.request.infer([np.ascontiguousarray(batch, self.input_dtype)], share_inputs=True)[0].copy()


def make_runner(version_dir: Path, config: dict, params: Dict[str, str], on_gpu: bool, device_id: int,
                uint8_input: bool, input_name: str, label: str):
    """TorchRunner (checked against the build's logits in version_dir's parity.npz), OnnxRunner or OpenVinoRunner,
    for the artifact in ``version_dir`` as the serving model's config and its parameters say (its max batch, its
    CPU threads: cpu_threads); ``label`` names the model in messages."""
    max_batch, threads = int(config.get("max_batch_size", 0)), cpu_threads(config, params)
    artifact = str(version_dir / params["artifact"])
    runtime = params["runtime"]
    error = pb_utils.TritonModelException if pb_utils else RuntimeError
    try:
        if runtime in ("torch", "compiled"):
            runner = TorchRunner(
                artifact, f"cuda:{device_id}" if on_gpu else "cpu", params.get("precision", "fp32"),
                params.get("channels_last") == "true",
                [int(b) for b in params.get("cuda_graph_batches", "").split(",") if b],
                _floats(params.get("mean", "")), _floats(params.get("std", "")), uint8_input,
                params.get("compile_cache") or None, max_batch, threads)
            if (version_dir / PARITY_FILE).is_file():
                summary = runner.check_parity(version_dir / PARITY_FILE, float(params["parity_tolerance"]))
                _log(f"{label}: {summary}")
        elif runtime == "onnxruntime" and not uint8_input:
            runner = OnnxRunner(artifact, input_name, device_id if on_gpu else None, threads)
        elif runtime == "openvino" and not on_gpu:
            runner = OpenVinoRunner(artifact, params.get("precision", "fp32"), threads)
        else:
            raise RunnerError(f"unsupported runtime {runtime!r} for a {'uint8' if uint8_input else 'float32'} input")
    except RunnerError as exc:
        raise error(f"{label}: {exc}") from None
    if not on_gpu:
        _log(f"{label}: CPU threads {runner.threads}")
    return runner


def logit_responses(output_name: str, logits: np.ndarray, sizes, finite=None) -> list:
    """One response per request of ``sizes`` rows, in order. NaN/Inf in a request's input come back as non-finite
    logits, which Triton would label as a class: that request alone gets an error (checking the few logits costs
    nothing); ``finite``: per request, False where its input was found non-finite already."""
    bounds = np.cumsum([0, *sizes])
    finite = finite or [True] * len(sizes)
    return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(output_name, logits[a:b])])
            if ok and np.isfinite(logits[a:b]).all() else pb_utils.InferenceResponse(output_tensors=[], error=(
                pb_utils.TritonError("input contains NaN or Inf values (its logits are not finite)",
                                     pb_utils.TritonError.INVALID_ARG)))  # the client's input: 400
            for ok, a, b in zip(finite, bounds[:-1], bounds[1:])]


class TritonPythonModel:
    def initialize(self, args):
        config, params, self.input_name, self.output_name = read_config(args)
        self.input_dtype = np.uint8 if config["input"][0]["data_type"] == "TYPE_UINT8" else np.float32
        self._take_streams = {}  # device -> the CUDA stream that copies GPU inputs out of their requests
        version_dir = Path(args["model_repository"]) / args["model_version"]

        def runner():
            forward = make_runner(version_dir, config, params, args["model_instance_kind"] == "GPU",
                                  int(args["model_instance_device_id"]), self.input_dtype == np.uint8,
                                  self.input_name, args.get("model_instance_name", config["name"]))
            # a runner whose kernels turn NaN inputs into finite logits gets its FP32 inputs checked: a sum is finite
            # exactly when no element is NaN or Inf (barring overflow of huge values)
            self.check_inputs = self.input_dtype == np.float32 and forward.clamps_nan
            return forward

        if pb_utils is None:  # in-process benchmarks: the runner alone, on this thread
            self.forward = runner()
            return

        def setup():
            self.forward = runner()

        # Torch keeps an OpenMP thread team per thread that calls it, and two teams on a 2-core CPU doubled a
        # batch-1 forward pass (13 -> 25 ms, Large): the runner is made, checked and run on the worker thread alone.
        self.queue = RequestQueue(
            args.get("model_instance_name", config["name"]), self._respond, self._take,
            int(config.get("max_batch_size", 0)) or 1, int(params.get("max_queue_size", "0") or 0),
            int(params.get("queue_timeout_us", "0") or 0), setup, _log,
            lambda *state: self.forward.adapt(*state), params.get("yield_core", "auto"))

    def _take(self, request):
        """This request's input, copied: Triton frees the request's tensors when execute() returns."""
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor.is_cpu():
            x = np.array(tensor.as_numpy(), dtype=self.input_dtype)
            return x, x.shape[0]
        import torch
        from torch.utils.dlpack import from_dlpack  # in GPU memory already: no copy through the host

        source = from_dlpack(tensor.to_dlpack())
        # copied on a stream of its own, and only that stream waited for (the copy is done before Triton frees the
        # source): the worker's stream may be busy with a batch, which the next requests need not wait for
        stream = self._take_streams.get(source.device)
        if stream is None:
            stream = self._take_streams[source.device] = torch.cuda.Stream(source.device)
        with torch.cuda.stream(stream):
            x = source.clone()
        stream.synchronize()
        return x, x.shape[0]

    def execute(self, requests):
        # the worker answers admitted requests through their response senders; refusals go back from here
        return self.queue.submit(requests)

    def _respond(self, parts):
        logits = self.forward(*parts)
        finite = [bool(np.isfinite(p.sum())) for p in parts] if self.check_inputs else None
        return logit_responses(self.output_name, logits, [p.shape[0] for p in parts], finite)

    def finalize(self):
        self.queue.close()
