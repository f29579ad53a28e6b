"""`build_repo.py --check`: every config parsed by Triton's own ModelConfig schema, every artifact against it.

Each finding carries the file it is about and, in a config.pbtxt, its line (the protobuf parser's for a syntax or
schema error, the offending field's for a finding made after parsing), so CI can show it where it is."""

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from .backend import PYTHON_MODEL_FILES
from .ensemble import IMAGE_MODELS, check_ensemble, check_preprocess
from .errors import KitError
from .repository import read_manifest, sha256
from .spec import (COMPILED_ARTIFACT, ENSEMBLE_PLATFORM, INPUT_DIMS, MANIFEST_FILE, MODELS, MODELS_BY_NAME, ONNX,
                   OV, PLAN_INFO_FILE, PT, PYTHON_BACKEND, TENSORRT_PLATFORM, TRT)
from .trt_build import HOW_TO_BUILD, import_tensorrt, inspect_plan

ModelConfig = model_config_pb2.ModelConfig
ARTIFACT_BY_PLATFORM = {spec.platform: spec.artifact for spec in (*MODELS, OV)}  # OV's: its backend's name


FORMATS = ("text", "json", "github")  # --format: the lines below, one JSON list of records, GitHub annotations
CONFIG = "config.pbtxt"


@dataclass(frozen=True)
class Finding:
    text: str  # the line --check prints: where, then what
    file: str = ""  # relative to the repository; "" for the repository itself
    line: Optional[int] = None  # 1-based, in `file`
    severity: str = "error"  # error | notice


@dataclass
class Report:
    findings: List[Finding] = field(default_factory=list)
    models: List[str] = field(default_factory=list)

    def error(self, text: str, file: str = "", line: Optional[int] = None) -> None:
        self.findings.append(Finding(text, file, line))

    def note(self, text: str, file: str = "") -> None:
        self.findings.append(Finding(text, file, severity="notice"))

    @property
    def problems(self) -> List[str]:
        return [f.text for f in self.findings if f.severity == "error"]

    @property
    def notes(self) -> List[str]:
        return [f.text for f in self.findings if f.severity == "notice"]

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_config(path: Path) -> ModelConfig:
    """Parse with Triton's schema; unknown fields and bad enum values are errors."""
    try:
        return text_format.Parse(path.read_text(), ModelConfig())
    except text_format.ParseError as exc:
        raise KitError(f"{path}: {exc}") from None


def queue_bound(config: ModelConfig) -> Tuple[int, int]:
    """(max_queue_size, timeout µs) of a config: Triton's queue policy for the native backends, the parameters the
    kit's python-backend models keep it in (mnv3kit/backend/serving.py says why)."""
    if config.backend == PYTHON_BACKEND:
        params = {k: v.string_value for k, v in config.parameters.items()}
        return int(params.get("max_queue_size") or 0), int(params.get("queue_timeout_us") or 0)
    policy = config.dynamic_batching.default_queue_policy
    return policy.max_queue_size, policy.default_timeout_microseconds


def _find_line(text: str, *needles: str, after: str = "") -> Optional[int]:
    """The 1-based line that holds every needle outside a comment, searching from the first line holding `after`."""
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    start = next((i for i, line in enumerate(lines) if after in line), 0)
    return next((i + 1 for i in range(start, len(lines)) if all(n in lines[i] for n in needles)), None)


def line_of(text: str, *needles: str, after: str = "") -> int:
    """The line of the field a finding is about, as far as its needles tell; else line 1."""
    return _find_line(text, *needles, after=after) or 1


def _line_of_message(text: str, message: str) -> int:
    """For findings made elsewhere (the image ensemble's checks): the line of the first name the message quotes
    ('name', or the model of `step N (model)`) that the config holds as a string; else line 1."""
    names = re.findall(r"'([^']+)'", message) + re.findall(r"step \d+ \(([^()\s]+)\)", message)
    return next(filter(None, (_find_line(text, f'"{name}"') for name in names)), 1)


def artifact_name(config: ModelConfig) -> Optional[str]:
    if config.backend == PYTHON_BACKEND:
        param = config.parameters.get("artifact")
        return param.string_value if param else None
    return ARTIFACT_BY_PLATFORM.get(config.platform or config.backend)


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


def _check_plan(path: Path, rel: str, config: ModelConfig, report: Report) -> None:
    if not (path.parent / PLAN_INFO_FILE).is_file():
        report.note(f"{path}: no {PLAN_INFO_FILE} beside it (TensorRT version / compute capability unknown)", rel)
    if import_tensorrt() is None:
        report.note(f"{path}: not inspected, the TensorRT Python package is not importable here", rel)
        return
    try:
        tensors = inspect_plan(path)
    except KitError as exc:
        report.error(str(exc), rel)
        return
    name_in, name_out = config.input[0].name, config.output[0].name
    if set(tensors) != {name_in, name_out}:
        report.error(f"{path}: bindings {sorted(tensors)}, config expects {[name_in, name_out]}", rel)
        return
    profile_max = tensors[name_in]["profile"][2][0]
    if profile_max < config.max_batch_size:
        report.error(f"{path}: optimization profile max batch {profile_max} < max_batch_size "
                     f"{config.max_batch_size}: rebuild with --max-batch {config.max_batch_size}", rel)


def _check_instances(config: ModelConfig, where: str, text: str, report: Report) -> None:
    for group in config.instance_group:
        if group.count < 1:  # proto3 cannot tell 0 from unset; Triton serves either as 1 instance per device
            report.error(f"{where}: instance_group count {group.count}: Triton silently makes that 1 instance; write "
                         f"the count you mean (build_repo.py --instance-count N)", where,
                         line_of(text, "count", after="instance_group"))
        if config.platform == TENSORRT_PLATFORM and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU:
            report.error(f"{where}: KIND_CPU on a {TENSORRT_PLATFORM} model: TensorRT runs on GPUs only, Triton cannot "
                         f"load it (use KIND_GPU)", where, line_of(text, "KIND_CPU", after="instance_group"))


def _check_profile_max(model_dir: Path, max_batch_size: int, where: str, line: int, report: Report) -> None:
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
            rel = f"{model_dir.name}/{info.parent.name}/{info.name}"
            report.error(f"{rel}: no readable profile max", rel)
    for source, profile_max in maxima.items():
        if profile_max < max_batch_size:
            report.error(f"{where}: max_batch_size {max_batch_size} is above the TensorRT profile max {profile_max} "
                         f"of {model_dir.name}/{source}: Triton refuses the plan; rebuild with build_repo.py "
                         f"--max-batch-size {max_batch_size}", where, line)


def _parse_config_at(path: Path, where: str, report: Report) -> Tuple[Optional[ModelConfig], str]:
    """The config and its text; (None, "") when it does not parse, the parser's finding and line added to the report."""
    try:
        text = path.read_text()
        return text_format.Parse(text, ModelConfig()), text
    except text_format.ParseError as exc:
        report.error(f"{path}: {exc}", where, exc.GetLine())
    except UnicodeDecodeError as exc:
        report.error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", where, 1)
    return None, ""


def _add_image_model_findings(problems: List[str], model_dir: Path, config: ModelConfig, text: str,
                              report: Report) -> None:
    """The image ensemble's checks (mnv3kit/ensemble.py) answer `where: what` lines: file and line are read back."""
    for problem in problems:
        where, _, message = problem.partition(": ")
        first, _, rest = where.partition("/")
        rel = f"{model_dir.name}/{rest if first in (model_dir.name, config.name) and rest else CONFIG}"
        report.error(problem, rel, _line_of_message(text, message) if rel.endswith(CONFIG) else None)


def _check_model(model_dir: Path, manifest: dict, report: Report, run_artifacts: bool) -> None:
    where = f"{model_dir.name}/{CONFIG}"
    config, text = _parse_config_at(model_dir / CONFIG, where, report)
    if config is None:
        return

    def error(message: str, *needles: str, after: str = "") -> None:
        report.error(f"{where}: {message}", where, line_of(text, *needles, after=after))

    if config.name != model_dir.name:
        error(f"name {config.name!r} differs from its directory name {model_dir.name!r}", "name", f'"{config.name}"')
    if config.name in IMAGE_MODELS:  # the image ensemble and its preprocessing step
        report.models.append(config.name)
        problems = (check_ensemble(model_dir.parent, config, parse_config) if config.platform == ENSEMBLE_PLATFORM
                    else check_preprocess(model_dir, config))
        _add_image_model_findings(problems, model_dir, config, text, report)
        return
    spec = MODELS_BY_NAME.get(config.name)
    if spec is None:
        error(f"unknown model name {config.name!r} (expected one of {sorted(MODELS_BY_NAME)})", "name",
              f'"{config.name}"')
        return
    report.models.append(config.name)
    if config.max_batch_size < 1:
        error("max_batch_size must be >= 1 for batched serving", "max_batch_size")
    _check_instances(config, where, text, report)
    if config.platform == TENSORRT_PLATFORM:
        _check_profile_max(model_dir, config.max_batch_size, where, line_of(text, "max_batch_size"), report)
    if len(config.input) != 1 or len(config.output) != 1:
        error("expected exactly one input and one output", "input")
        return
    inp, out = config.input[0], config.output[0]
    at_in, at_out = f'"{inp.name}"', f'"{out.name}"'
    if (inp.name, out.name) != (spec.input_name, spec.output_name):
        error(f"tensors {inp.name!r}->{out.name!r}, the kit's contract is {spec.input_name!r}->{spec.output_name!r}",
              at_in if inp.name != spec.input_name else at_out, after="input")
    if inp.data_type != model_config_pb2.DataType.Value(spec.input_dtype):
        error(f"input must be {spec.input_dtype} and output TYPE_FP32", "data_type", after=at_in)
    elif out.data_type != model_config_pb2.TYPE_FP32:
        error(f"input must be {spec.input_dtype} and output TYPE_FP32", "data_type", after=at_out)
    if tuple(inp.dims) != INPUT_DIMS:
        error(f"input dims {list(inp.dims)}, expected {list(INPUT_DIMS)}", "dims", after=at_in)
    if len(out.dims) != 1 or out.dims[0] < 1:
        error(f"output dims {list(out.dims)}, expected [num_classes]", "dims", after=at_out)
        return
    classes = out.dims[0]
    labels_rel = f"{model_dir.name}/{out.label_filename}"
    if not out.label_filename:
        error("output has no label_filename (Triton's classification extension needs it)", at_out, after="output")
    elif not (model_dir / out.label_filename).is_file():
        report.error(f"{labels_rel}: missing", where, line_of(text, "label_filename"))
    else:
        labels = [x for x in (model_dir / out.label_filename).read_text().splitlines() if x.strip()]
        if len(labels) != classes:
            report.error(f"{labels_rel}: {len(labels)} labels, output has {classes}", labels_rel)
    artifact = artifact_name(config)
    if artifact is None:
        error(f"cannot tell the artifact (platform {config.platform!r}, backend {config.backend!r})",
              "backend" if config.backend else "platform")
        return
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        report.error(f"{model_dir.name}: no numeric version directory (expected {model_dir.name}/1/)", model_dir.name)
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") == "specific":
        for v in policy.specific.versions:
            if v not in versions:
                error(f"version_policy names version {v}, which has no directory", "specific", after="version_policy")
    for version in versions:
        vdir = model_dir / str(version)
        path, rel = vdir / artifact, f"{model_dir.name}/{version}/{artifact}"
        for name in PYTHON_MODEL_FILES if config.backend == PYTHON_BACKEND else ():
            if not (vdir / name).is_file():
                report.error(f"{model_dir.name}/{version}/{name}: missing (python backend)",
                             f"{model_dir.name}/{version}/{name}")
        if not path.is_file():
            if artifact == TRT.artifact and manifest.get("tensorrt", {}).get("status") != "built":
                report.note(f"{rel}: not built yet; {HOW_TO_BUILD}", rel)
            else:
                report.error(f"{rel}: missing", rel)
            continue
        if not run_artifacts:
            continue
        if artifact in (PT.artifact, COMPILED_ARTIFACT):
            problem = _check_torch(path, config.max_batch_size, classes)
            if problem:
                report.error(problem, rel)
        elif artifact == ONNX.artifact:
            for problem in _check_onnx(path, config, config.max_batch_size, classes):
                report.error(problem, rel)
        elif artifact == TRT.artifact:
            _check_plan(path, rel, config, report)
        elif artifact == OV.artifact:
            from .openvino import check_ir

            spec = MODELS_BY_NAME.get(config.name, OV)
            for problem in check_ir(path, config.max_batch_size, classes, spec):
                report.error(problem, rel)


def check_repository(repo: Path, run_artifacts: bool = True) -> Report:
    repo = Path(repo)
    report = Report()
    if not repo.is_dir():
        report.error(f"{repo}: no such directory (build it with build_repo.py)")
        return report
    try:
        manifest = read_manifest(repo)
    except KitError as exc:
        report.error(str(exc), MANIFEST_FILE if (repo / MANIFEST_FILE).is_file() else "")
        manifest = {}
    model_dirs = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not model_dirs:
        report.error(f"{repo}: no model directories")
    for model_dir in model_dirs:
        if not (model_dir / CONFIG).is_file():
            report.error(f"{model_dir.name}: no {CONFIG}", model_dir.name)
            continue
        _check_model(model_dir, manifest, report, run_artifacts)
    for rel, digest in manifest.get("files", {}).items():
        path = repo / rel
        if not path.is_file():
            report.error(f"{rel}: listed in {MANIFEST_FILE} but missing", MANIFEST_FILE)
        elif sha256(path) != digest:
            report.error(f"{rel}: sha256 differs from {MANIFEST_FILE} (changed after the build)", rel)
    return report


def records(report: Report, repo: Path) -> List[dict]:
    """One record per finding: the file (under `repo`, as given), its line or None, the message, the severity."""
    out = []
    for finding in report.findings:
        path = Path(repo) / finding.file if finding.file else Path(repo)
        message = finding.text
        for prefix in (f"{path}: ", f"{finding.file}: "):
            if finding.file and message.startswith(prefix):
                message = message[len(prefix):]
                break
        message = re.sub(r"^(\d+):(\d+) : ", lambda m: f"column {m[2]}: ", message)  # the parser's line:column
        out.append({"file": str(path), "line": finding.line, "message": message, "severity": finding.severity})
    return out


def _escape(value: str, in_property: bool = False) -> str:
    """GitHub Actions workflow-command escaping (properties also escape ':' and ',')."""
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return value.replace(":", "%3A").replace(",", "%2C") if in_property else value


def github_annotations(report: Report, repo: Path) -> List[str]:
    """`::error file=F,line=N::message` (and `::notice ...` for notes): annotations on the files in a GitHub run."""
    lines = []
    for record in records(report, repo):
        props = f"file={_escape(record['file'], True)}"
        if record["line"]:
            props += f",line={record['line']}"
        lines.append(f"::{record['severity']} {props}::{_escape(record['message'])}")
    return lines


def print_report(report: Report, repo: Path, fmt: str, prog: str) -> int:
    """--check's output and exit code (0 ok, 1 problems). text: `note:`/`problem:` lines on stderr, `REPO: OK` on
    stdout; json: the records as one JSON list on stdout; github: one workflow command per finding on stdout. The
    summary line goes to stderr in every format."""
    if fmt == "json":
        print(json.dumps(records(report, repo), indent=1))
    elif fmt == "github":
        for line in github_annotations(report, repo):
            print(line)
    else:
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)
        for problem in report.problems:
            print(f"problem: {problem}", file=sys.stderr)
    if not report.ok:
        print(f"{prog}: {repo}: {len(report.problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{repo}: OK ({', '.join(report.models)})", file=sys.stdout if fmt == "text" else sys.stderr)
    return 0
