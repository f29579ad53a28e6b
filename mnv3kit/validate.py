"""`build_repo.py --check`: every config parsed by Triton's own ModelConfig schema, every artifact against it."""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from .ensemble import IMAGE_MODELS, check_ensemble, check_preprocess
from .errors import KitError
from .repository import read_manifest, sha256
from .spec import (COMPILED_ARTIFACT, ENSEMBLE_PLATFORM, INPUT_DIMS, MANIFEST_FILE, MODELS, MODELS_BY_NAME, ONNX,
                   PLAN_INFO_FILE, PT, PYTHON_BACKEND, TENSORRT_PLATFORM, TRT)
from .trt_build import HOW_TO_BUILD, import_tensorrt, inspect_plan

ModelConfig = model_config_pb2.ModelConfig
ARTIFACT_BY_PLATFORM = {spec.platform: spec.artifact for spec in MODELS}


@dataclass
class Report:
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    models: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_config(path: Path) -> ModelConfig:
    """Parse with Triton's schema; unknown fields and bad enum values are errors."""
    try:
        return text_format.Parse(path.read_text(), ModelConfig())
    except text_format.ParseError as exc:
        raise KitError(f"{path}: {exc}") from None


def artifact_name(config: ModelConfig) -> Optional[str]:
    if config.backend == PYTHON_BACKEND:
        param = config.parameters.get("artifact")
        return param.string_value if param else None
    return ARTIFACT_BY_PLATFORM.get(config.platform)


def _check_torch(path: Path, max_batch: int, classes: int) -> Optional[str]:
    """model.pt (TorchScript) or model.pt2 (torch.export program, run eagerly here) at max batch on the CPU."""
    import torch

    kind = "the torch.export program" if path.name == COMPILED_ARTIFACT else "TorchScript"
    try:
        if path.name == COMPILED_ARTIFACT:
            module = torch.export.load(str(path)).module()
        else:
            module = torch.jit.load(str(path), map_location="cpu").eval()
        with torch.inference_mode():
            out = module(torch.zeros((max_batch, *INPUT_DIMS)))
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{path}: {kind} does not run on [{max_batch},{','.join(map(str, INPUT_DIMS))}]: {first}"
    if tuple(out.shape) != (max_batch, classes):
        return f"{path}: output shape {tuple(out.shape)}, config promises ({max_batch}, {classes})"
    return None


def _check_onnx(path: Path, config: ModelConfig, max_batch: int, classes: int) -> List[str]:
    import onnx
    import onnxruntime as ort

    problems = []
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001
        return [f"{path}: not a readable ONNX model: {exc}"]
    expected = {"input": (config.input[0].name, INPUT_DIMS), "output": (config.output[0].name, (classes,))}
    for kind, values in (("input", graph.input), ("output", graph.output)):
        name, dims = expected[kind]
        match = [v for v in values if v.name == name]
        if len(values) != 1 or not match:
            problems.append(f"{path}: graph {kind}s are {[v.name for v in values]}, config expects [{name!r}]")
            continue
        tensor = match[0].type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"{path}: {kind} {name!r} is {onnx.TensorProto.DataType.Name(tensor.elem_type)}, not FLOAT")
        shape = tensor.shape.dim
        if not shape or shape[0].HasField("dim_value"):
            problems.append(f"{path}: {kind} {name!r} has a fixed batch dimension; Triton batching needs it dynamic")
        rest = tuple(d.dim_value for d in shape[1:])
        if rest != tuple(dims):
            problems.append(f"{path}: {kind} {name!r} dims {rest}, config says {tuple(dims)}")
    if problems:
        return problems
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {expected["input"][0]: np.zeros((max_batch, *INPUT_DIMS), np.float32)})[0]
    if out.shape != (max_batch, classes):
        problems.append(f"{path}: output shape {out.shape} at batch {max_batch}, expected ({max_batch}, {classes})")
    return problems


def _check_plan(path: Path, config: ModelConfig, report: Report) -> None:
    if not (path.parent / PLAN_INFO_FILE).is_file():
        report.notes.append(f"{path}: no {PLAN_INFO_FILE} beside it (TensorRT version / compute capability unknown)")
    if import_tensorrt() is None:
        report.notes.append(f"{path}: not inspected, the TensorRT Python package is not importable here")
        return
    try:
        tensors = inspect_plan(path)
    except KitError as exc:
        report.problems.append(str(exc))
        return
    name_in, name_out = config.input[0].name, config.output[0].name
    if set(tensors) != {name_in, name_out}:
        report.problems.append(f"{path}: bindings {sorted(tensors)}, config expects {[name_in, name_out]}")
        return
    profile_max = tensors[name_in]["profile"][2][0]
    if profile_max < config.max_batch_size:
        report.problems.append(f"{path}: optimization profile max batch {profile_max} < max_batch_size "
                               f"{config.max_batch_size}: rebuild with --max-batch {config.max_batch_size}")


def _check_instances(config: ModelConfig, where: str, report: Report) -> None:
    for group in config.instance_group:
        if group.count < 1:  # proto3 cannot tell 0 from unset; Triton serves either as 1 instance per device
            report.problems.append(f"{where}: instance_group count {group.count}: Triton silently makes that 1 "
                                   f"instance; write the count you mean (build_repo.py --instance-count N)")
        if config.platform == TENSORRT_PLATFORM and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU:
            report.problems.append(f"{where}: KIND_CPU on a {TENSORRT_PLATFORM} model: TensorRT runs on GPUs only, "
                                   f"Triton cannot load it (use KIND_GPU)")


def _check_profile_max(model_dir: Path, max_batch_size: int, where: str, report: Report) -> None:
    """The TensorRT optimization profile the plan is (or will be) built with must cover max_batch_size."""
    maxima = {}
    script = model_dir / "build_plan.sh"
    if script.is_file():
        match = re.search(r"--maxShapes=[^:\s]+:(\d+)x", script.read_text())
        if match:
            maxima[script.name] = int(match.group(1))
    for info in sorted(model_dir.glob(f"*/{PLAN_INFO_FILE}")):
        try:
            maxima[f"{info.parent.name}/{info.name}"] = int(json.loads(info.read_text())["profile"]["max"])
        except (ValueError, KeyError, TypeError):
            report.problems.append(f"{model_dir.name}/{info.parent.name}/{info.name}: no readable profile max")
    for source, profile_max in maxima.items():
        if profile_max < max_batch_size:
            report.problems.append(f"{where}: max_batch_size {max_batch_size} is above the TensorRT profile max "
                                   f"{profile_max} of {model_dir.name}/{source}: Triton refuses the plan; rebuild "
                                   f"with build_repo.py --max-batch-size {max_batch_size}")


def _check_model(model_dir: Path, manifest: dict, report: Report, run_artifacts: bool) -> None:
    try:
        config = parse_config(model_dir / "config.pbtxt")
    except KitError as exc:
        report.problems.append(str(exc))
        return
    where = f"{model_dir.name}/config.pbtxt"
    if config.name != model_dir.name:
        report.problems.append(f"{where}: name {config.name!r} differs from its directory name {model_dir.name!r}")
    if config.name in IMAGE_MODELS:  # the image ensemble and its preprocessing step
        report.models.append(config.name)
        report.problems += (check_ensemble(model_dir.parent, config, parse_config) if config.platform == ENSEMBLE_PLATFORM
                            else check_preprocess(model_dir, config))
        return
    spec = MODELS_BY_NAME.get(config.name)
    if spec is None:
        report.problems.append(f"{where}: unknown model name {config.name!r} (expected one of {sorted(MODELS_BY_NAME)})")
        return
    report.models.append(config.name)
    if config.max_batch_size < 1:
        report.problems.append(f"{where}: max_batch_size must be >= 1 for batched serving")
    _check_instances(config, where, report)
    if config.platform == TENSORRT_PLATFORM:
        _check_profile_max(model_dir, config.max_batch_size, where, report)
    if len(config.input) != 1 or len(config.output) != 1:
        report.problems.append(f"{where}: expected exactly one input and one output")
        return
    inp, out = config.input[0], config.output[0]
    if (inp.name, out.name) != (spec.input_name, spec.output_name):
        report.problems.append(f"{where}: tensors {inp.name!r}->{out.name!r}, "
                               f"the kit's contract is {spec.input_name!r}->{spec.output_name!r}")
    if inp.data_type != model_config_pb2.DataType.Value(spec.input_dtype) or out.data_type != model_config_pb2.TYPE_FP32:
        report.problems.append(f"{where}: input must be {spec.input_dtype} and output TYPE_FP32")
    if tuple(inp.dims) != INPUT_DIMS:
        report.problems.append(f"{where}: input dims {list(inp.dims)}, expected {list(INPUT_DIMS)}")
    if len(out.dims) != 1 or out.dims[0] < 1:
        report.problems.append(f"{where}: output dims {list(out.dims)}, expected [num_classes]")
        return
    classes = out.dims[0]
    if not out.label_filename:
        report.problems.append(f"{where}: output has no label_filename (Triton's classification extension needs it)")
    elif not (model_dir / out.label_filename).is_file():
        report.problems.append(f"{model_dir.name}/{out.label_filename}: missing")
    else:
        labels = [x for x in (model_dir / out.label_filename).read_text().splitlines() if x.strip()]
        if len(labels) != classes:
            report.problems.append(f"{model_dir.name}/{out.label_filename}: {len(labels)} labels, output has {classes}")
    artifact = artifact_name(config)
    if artifact is None:
        report.problems.append(f"{where}: cannot tell the artifact (platform {config.platform!r}, backend {config.backend!r})")
        return
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        report.problems.append(f"{model_dir.name}: no numeric version directory (expected {model_dir.name}/1/)")
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") == "specific":
        for v in policy.specific.versions:
            if v not in versions:
                report.problems.append(f"{where}: version_policy names version {v}, which has no directory")
    for version in versions:
        vdir = model_dir / str(version)
        path = vdir / artifact
        if config.backend == PYTHON_BACKEND and not (vdir / "model.py").is_file():
            report.problems.append(f"{model_dir.name}/{version}/model.py: missing (python backend)")
        if not path.is_file():
            if artifact == TRT.artifact and manifest.get("tensorrt", {}).get("status") != "built":
                report.notes.append(f"{model_dir.name}/{version}/{artifact}: not built yet; {HOW_TO_BUILD}")
            else:
                report.problems.append(f"{model_dir.name}/{version}/{artifact}: missing")
            continue
        if not run_artifacts:
            continue
        if artifact in (PT.artifact, COMPILED_ARTIFACT):
            problem = _check_torch(path, config.max_batch_size, classes)
            report.problems += [problem] if problem else []
        elif artifact == ONNX.artifact:
            report.problems += _check_onnx(path, config, config.max_batch_size, classes)
        elif artifact == TRT.artifact:
            _check_plan(path, config, report)


def check_repository(repo: Path, run_artifacts: bool = True) -> Report:
    repo = Path(repo)
    report = Report()
    if not repo.is_dir():
        report.problems.append(f"{repo}: no such directory (build it with build_repo.py)")
        return report
    try:
        manifest = read_manifest(repo)
    except KitError as exc:
        report.problems.append(str(exc))
        manifest = {}
    model_dirs = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not model_dirs:
        report.problems.append(f"{repo}: no model directories")
    for model_dir in model_dirs:
        if not (model_dir / "config.pbtxt").is_file():
            report.problems.append(f"{model_dir.name}: no config.pbtxt")
            continue
        _check_model(model_dir, manifest, report, run_artifacts)
    for rel, digest in manifest.get("files", {}).items():
        path = repo / rel
        if not path.is_file():
            report.problems.append(f"{rel}: listed in {MANIFEST_FILE} but missing")
        elif sha256(path) != digest:
            report.problems.append(f"{rel}: sha256 differs from {MANIFEST_FILE} (changed after the build)")
    return report
