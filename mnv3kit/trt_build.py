"""TensorRT plan building (TensorRT 10 Python API, else the rendered trtexec script) and plan inspection.

Neither the TensorRT Python package nor trtexec can be installed on the kit's CI machines (NVIDIA's own index is
unreachable), so this module is written against TensorRT 10's documented API and exercised only where TensorRT
exists; everything around it (profile shapes, script rendering, the skip path) is tested for real.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from .errors import KitError
from .render import PlanOptions
from .spec import INPUT_DIMS, TRT

TRTEXEC_IN_NGC_IMAGE = "/usr/src/tensorrt/bin/trtexec"
HOW_TO_BUILD = ("build it where Triton runs: `docker compose run --rm trt-build` (Compose v1: docker-compose; "
                "NVIDIA's Triton image, its trtexec and GPU), or rerun build_repo.py on a machine with the TensorRT "
                "Python package or trtexec")


def import_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return None
    return tensorrt


def find_trtexec() -> Optional[str]:
    found = shutil.which("trtexec")
    if found:
        return found
    return TRTEXEC_IN_NGC_IMAGE if Path(TRTEXEC_IN_NGC_IMAGE).is_file() else None


def available_builder() -> Optional[str]:
    """'python' (TensorRT Python API), 'trtexec', or None."""
    if import_tensorrt() is not None:
        return "python"
    return "trtexec" if find_trtexec() else None


def compute_capability() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return "%d.%d" % torch.cuda.get_device_capability(0)
    except Exception:  # noqa: BLE001 - only informative
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False).stdout.split()
        if out:
            return out[0]
    return "unknown"


def build_plan_python(onnx_path: Path, plan_path: Path, plan: PlanOptions) -> dict:
    """Build with the TensorRT 10 Python API; returns the plan info recorded beside the plan."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise KitError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)
    if plan.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(TRT.input_name, (1, *INPUT_DIMS), (plan.opt_batch, *INPUT_DIMS), (plan.max_batch, *INPUT_DIMS))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise KitError("TensorRT failed to build the engine (see the TensorRT log lines above)")
    plan_path.write_bytes(bytes(serialized))
    return {"built_by": "tensorrt-python", "tensorrt_version": trt.__version__,
            "compute_capability": compute_capability(), "fp16": plan.fp16,
            "profile": {"min": 1, "opt": plan.opt_batch, "max": plan.max_batch}}


def build_plan_trtexec(script: Path, plan_info: Path) -> dict:
    """Run the rendered build_plan.sh (the same script the compose trt-build service runs)."""
    trtexec = find_trtexec()
    env = {**os.environ, "TRTEXEC": trtexec, "FORCE": "1"}
    proc = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise KitError(f"trtexec plan build failed: {last}")
    return json.loads(plan_info.read_text())


def inspect_plan(plan_path: Path) -> dict:
    """IO tensor names/modes and profile-0 shapes of a plan; needs the TensorRT Python package."""
    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise KitError(f"{plan_path} does not deserialize with TensorRT {trt.__version__} on this GPU: "
                       f"rebuild it where it is served ({HOW_TO_BUILD})")
    tensors = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        entry = {"input": engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                 "dtype": str(engine.get_tensor_dtype(name)), "shape": list(engine.get_tensor_shape(name))}
        if entry["input"]:
            entry["profile"] = [list(s) for s in engine.get_tensor_profile_shape(name, 0)]
        tensors[name] = entry
    return tensors
