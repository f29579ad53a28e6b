"""Triton python-backend model of the kit's --target local repositories.

Copied verbatim into <model>/<version>/model.py. It serves the same contract as the native backends
(input [N,3,224,224] -> logits [N,classes] FP32) by running the artifact beside it: model.pt with
TorchScript or model.onnx with ONNX Runtime (config parameters `artifact` and `runtime`). Triton's dynamic
batcher hands execute() several requests; they run as ONE forward pass and the result is split back.
A UINT8 input (raw pixels) is normalized on the serving device with the config's `mean`/`std`.
On GPU instances the torch runner can compute in FP16, use channels_last, and replay one CUDA graph per batch
size in `cuda_graph_batches` (a batch runs padded to the next captured size): eager PyTorch is launch-bound at
~2.7 ms per call on an H100/H200 whatever the batch, a replayed graph is not.
Self-contained on purpose: it runs inside Triton's stub process, which need not have the kit installed; the
kit's raw GPU benchmark imports TorchRunner from here so that served and raw numbers run the same code.
"""

import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by the kit's raw benchmark
    pb_utils = None


def _floats(text: str) -> Optional[Tuple[float, ...]]:
    return tuple(float(v) for v in text.split(",")) if text else None


class TorchRunner:
    """TorchScript on CPU or GPU; on GPU optionally FP16, channels_last and CUDA graphs per batch size."""

    def __init__(self, path: str, device: str = "cpu", precision: str = "fp32", channels_last: bool = False,
                 graph_batches: Sequence[int] = (), mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, uint8_input: bool = False):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        self.dtype = torch.float16 if precision == "fp16" and on_gpu else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if on_gpu:
            # cuDNN's autotuner suits CUDA graphs (fixed shapes per graph). The CPU side is one memcpy per batch:
            # torch's default of one thread per core, in every instance's process, would only contend.
            torch.backends.cudnn.benchmark = True
            torch.set_num_threads(1)
        module = torch.jit.load(path, map_location=self.device).eval()
        module = module.to(dtype=self.dtype, memory_format=self.memory_format)
        if on_gpu:  # fold BatchNorm into the convolutions, drop training-only branches
            module = torch.jit.optimize_for_inference(torch.jit.freeze(module))
        self.module = module
        self.uint8_input = uint8_input
        if uint8_input:  # (x / 255 - mean) / std  ==  x * scale + shift
            m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
            self.scale = (1.0 / (255.0 * s)).to(self.device, self.dtype)
            self.shift = (-m / s).to(self.device, self.dtype)
        self.graphs: Dict[int, tuple] = {}
        if on_gpu:
            for batch in sorted(set(graph_batches)):
                self._capture(batch)

    def _forward(self, x):
        x = x.to(self.dtype)
        if self.uint8_input:
            x = x * self.scale + self.shift
        return self.module(x.contiguous(memory_format=self.memory_format)).float()

    def _capture(self, batch: int) -> None:
        torch = self.torch
        in_dtype = torch.uint8 if self.uint8_input else torch.float32
        static_in = torch.zeros((batch, 3, 224, 224), dtype=in_dtype, device=self.device)
        pinned = torch.zeros(static_in.shape, dtype=in_dtype, pin_memory=True)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(3):  # let the TorchScript executor profile and optimize before the capture
                self._forward(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            static_out = self._forward(static_in)
        self.graphs[batch] = (graph, static_in, pinned, static_out)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        n = batch.shape[0]
        host = torch.from_numpy(batch)
        size = next((b for b in sorted(self.graphs) if b >= n), None)
        with torch.no_grad():
            if size is None:
                return self._forward(host.to(self.device)).cpu().numpy()
            graph, static_in, pinned, static_out = self.graphs[size]
            pinned[:n].copy_(host)  # pinned staging: the host-to-device copy runs at full speed
            static_in[:n].copy_(pinned[:n], non_blocking=True)
            graph.replay()
            return static_out[:n].cpu().numpy()


class OnnxRunner:
    def __init__(self, path: str, input_name: str, device_id: Optional[int] = None):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device_id is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        self.session = ort.InferenceSession(path, providers=providers)
        self.input_name = input_name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        uint8_input = config["input"][0]["data_type"] == "TYPE_UINT8"
        self.input_dtype = np.uint8 if uint8_input else np.float32
        artifact = str(Path(args["model_repository"]) / args["model_version"] / params["artifact"])
        on_gpu = args["model_instance_kind"] == "GPU"
        device_id = int(args["model_instance_device_id"])
        runtime = params["runtime"]
        if runtime == "torch":
            self.forward = TorchRunner(
                artifact, f"cuda:{device_id}" if on_gpu else "cpu", params.get("precision", "fp32"),
                params.get("channels_last") == "true",
                [int(b) for b in params.get("cuda_graph_batches", "").split(",") if b],
                _floats(params.get("mean", "")), _floats(params.get("std", "")), uint8_input)
        elif runtime == "onnxruntime" and not uint8_input:
            self.forward = OnnxRunner(artifact, self.input_name, device_id if on_gpu else None)
        else:
            raise pb_utils.TritonModelException(f"unsupported runtime {runtime!r} for a {self.input_dtype} input")

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        # NaN/Inf in one request would come back as NaN logits labelled as a class: refuse that request alone
        finite = [bool(np.isfinite(a).all()) for a in arrays]
        served = iter(self._infer([a for a, ok in zip(arrays, finite) if ok]) if any(finite) else ())
        return [next(served) if ok else pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError("input contains NaN or Inf values"))
                for ok in finite]

    def _infer(self, arrays):
        sizes = [a.shape[0] for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            logits = self.forward(np.ascontiguousarray(batch, dtype=self.input_dtype))
        except Exception as exc:  # noqa: BLE001 - the error goes back to every client in the batch
            error = pb_utils.TritonError(f"inference failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in arrays]
        bounds = np.cumsum([0] + sizes)
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, logits[a:b])])
                for a, b in zip(bounds[:-1], bounds[1:])]
