"""Triton python-backend model of the kit's --target local repositories.

Copied verbatim into <model>/<version>/model.py. It serves the same contract as the native backends
(input [N,3,224,224] FP32 -> logits [N,classes] FP32) by running the artifact beside it: model.pt with
TorchScript or model.onnx with ONNX Runtime (config parameters `artifact` and `runtime`). Triton's dynamic
batcher hands execute() several requests; they run as ONE forward pass and the result is split back.
Self-contained on purpose: it runs inside Triton's stub process, which need not have the kit installed.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        artifact = Path(args["model_repository"]) / args["model_version"] / params["artifact"]
        on_gpu = args["model_instance_kind"] == "GPU"
        device_id = int(args["model_instance_device_id"])
        runtime = params["runtime"]
        if runtime == "torch":
            import torch

            self._torch = torch
            self.device = torch.device(f"cuda:{device_id}" if on_gpu else "cpu")
            self.module = torch.jit.load(str(artifact), map_location=self.device).eval()
            self.forward = self._forward_torch
        elif runtime == "onnxruntime":
            import onnxruntime as ort

            providers = ["CPUExecutionProvider"]
            if on_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
            self.session = ort.InferenceSession(str(artifact), providers=providers)
            self.forward = self._forward_onnx
        else:
            raise pb_utils.TritonModelException(f"unknown runtime parameter {runtime!r} (torch or onnxruntime)")

    def _forward_torch(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def _forward_onnx(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            logits = self.forward(np.ascontiguousarray(batch, dtype=np.float32))
        except Exception as exc:  # noqa: BLE001 - the error goes back to every client in the batch
            error = pb_utils.TritonError(f"inference failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        bounds = np.cumsum([0] + sizes)
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, logits[a:b])])
                for a, b in zip(bounds[:-1], bounds[1:])]
