"""build_repo.py: exports, parity gate, templates, manifest, atomic writes, TensorRT skip/require, --check."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from conftest import ROOT, assert_one_line_error, queue_bound, run_cli
from mnv3kit.build import BuildOptions, build
from mnv3kit.errors import KitError
from mnv3kit.model import build_model
from mnv3kit.parity import ParityRow, check_parity, parity_batch
from mnv3kit.render import ConfigOptions, PlanOptions, render_config, render_plan_script, VersionPolicy, Batching, Instances
from mnv3kit.spec import LOCAL_MODELS, MODELS, ONNX, PT, TRT, U8
from mnv3kit.validate import check_repository

ARCHS = ("large", "small")


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("target", ["ngc", "local"])
def test_built_repository_layout_and_configs(built_repo, arch, target):
    repo = built_repo(arch, target)
    manifest = json.loads((repo / "manifest.json").read_text())
    models = MODELS if target == "ngc" else LOCAL_MODELS
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(m.name for m in models)
    for spec in models:
        config = parse(repo / spec.name / "config.pbtxt")
        assert config.name == spec.name and config.max_batch_size == 8
        assert (config.input[0].name, config.output[0].name) == (spec.input_name, spec.output_name)
        assert list(config.input[0].dims) == [3, 224, 224] and list(config.output[0].dims) == [5]
        assert config.output[0].label_filename == "labels.txt"
        assert (repo / spec.name / "labels.txt").read_text().split() == manifest["labels"]
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert queue_bound(config) == (4 * 8, 5_000_000)  # overload refused, not queued forever
        warmup = [(w.batch_size, w.inputs[spec.input_name].data_type, list(w.inputs[spec.input_name].dims))
                  for w in config.model_warmup]
        assert warmup == [(1, config.input[0].data_type, [3, 224, 224]), (8, config.input[0].data_type, [3, 224, 224])]
        assert config.version_policy.latest.num_versions == 1
        if target == "ngc":
            assert config.platform == spec.platform and not config.backend
            assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        else:
            assert config.backend == "python" and not config.platform
            assert config.parameters["artifact"].string_value == spec.artifact
            assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
            assert (repo / spec.name / "1" / "model.py").is_file()
    assert manifest["arch"] == arch and manifest["weights"]["random_init"] is True
    assert manifest["versions"]["torch"].startswith("2.13") and manifest["versions"]["tensorrt"] is None
    assert {r["batch"] for r in manifest["parity"]["rows"]} == {1, 8}
    assert all(r["max_abs_diff"] <= 1e-4 * max(1, r["max_abs_logit"]) and r["top1_agree"]
               for r in manifest["parity"]["rows"])
    assert all(r["max_abs_diff"] == 0.0 for r in manifest["parity"]["rows"] if r["format"] == "torchscript")
    assert set(manifest["files"]) >= {f"{m.name}/config.pbtxt" for m in models}
    assert check_repository(repo).ok


def test_onnx_export_contract(built_repo):
    path = built_repo("small", "ngc") / ONNX.name / "1" / ONNX.artifact
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 13
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("image", "outputs")
    assert inp.type.tensor_type.shape.dim[0].dim_param and out.type.tensor_type.shape.dim[0].dim_param
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops  # fused by onnxsim / export
    assert not ops & {"HardSwish", "HardSigmoid"}  # the original project's relu6 forms: plain ops for any runtime
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 8, 13):  # dynamic batch survives simplification
        assert session.run(None, {"image": np.zeros((batch, 3, 224, 224), np.float32)})[0].shape == (batch, 5)


@pytest.mark.parametrize("arch", ARCHS)
def test_torchvision_layout_checkpoint_reproduces_its_logits(tmp_path, photos, arch):
    """A checkpoint in torchvision's layout -> model.pt and model.onnx give back its own eager logits."""
    reference = build_model(arch, 4, seed=11)
    ckpt = tmp_path / "tv.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, ckpt)
    labels = tmp_path / "class_indices.json"
    labels.write_text(json.dumps({str(i): n for i, n in enumerate(["a", "b", "c", "d"])}))
    out = tmp_path / "repo"
    proc = run_cli("build_repo.py", "--arch", arch, "--weights", ckpt, "--labels", labels, "-o", out,
                   "--max-batch-size", "4", "--opt-batch", "2")
    assert proc.returncode == 0, proc.stderr
    assert "parity vs eager PyTorch" in proc.stderr and f"{out}: OK" in proc.stdout
    x = parity_batch(photos, 4)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    scripted = torch.jit.load(str(out / PT.name / "1" / PT.artifact))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(torch.from_numpy(x)).numpy(), expected, atol=1e-5, rtol=0)
    session = ort.InferenceSession(str(out / ONNX.name / "1" / ONNX.artifact), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": x})[0], expected, atol=1e-4, rtol=0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"] == ["a", "b", "c", "d"] and manifest["num_classes"] == 4
    assert parse(out / TRT.name / "config.pbtxt").max_batch_size == 4
    assert "--maxShapes=image:4x3x224x224" in (out / TRT.name / "build_plan.sh").read_text()


def test_constant_model_is_refused_unless_allowed(tmp_path):
    """A checkpoint whose logits do not depend on the image (here: a zero last layer, so logits = its bias) passes
    every parity row with differences of 0; the build refuses it, --allow-constant-logits builds it with a warning."""
    model = build_model("small", 3, seed=0)
    state = model.state_dict()
    state["classifier.3.weight"].zero_()
    state["classifier.3.bias"].copy_(torch.tensor([0.5, -0.2, 0.1]))
    weights = tmp_path / "constant.pth"
    torch.save(state, weights)
    common = ("--arch", "small", "--target", "local", "--models", "onnx", "--weights", weights)
    proc = run_cli("build_repo.py", *common, "-o", tmp_path / "refused")
    assert_one_line_error(proc, "same logits for all 8 parity images", "--pretrained imagenet",
                          "--allow-constant-logits", "nothing was written")
    assert proc.returncode == 2 and not (tmp_path / "refused").exists()
    proc = run_cli("build_repo.py", *common, "--allow-constant-logits", "-o", tmp_path / "allowed")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: the model gives the same logits" in proc.stderr


def test_parity_gate_limits():
    assert ParityRow("onnx", 8, 2e-4, 0.5, True).ok() is False  # small logits: 1e-4 absolute
    assert ParityRow("onnx", 8, 9e-5, 0.5, True).ok()
    assert ParityRow("onnx", 8, 2e-3, 30.0, True).ok()  # relative beyond |logit| 1
    assert ParityRow("onnx", 8, 4e-3, 30.0, True).ok() is False
    assert ParityRow("onnx", 8, 0.0, 30.0, False).ok() is False  # top-1 must agree
    with pytest.raises(KitError, match="parity gate failed: onnx at batch 8"):
        check_parity([ParityRow("torchscript", 8, 0.0, 3.0, True), ParityRow("onnx", 8, 1.0, 3.0, True)])


def test_failed_build_keeps_previous_repository(tmp_path):
    out = tmp_path / "model_repository"
    proc = run_cli("build_repo.py", "--arch", "small", "--target", "local", "-o", out)
    assert proc.returncode == 0, proc.stderr
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # parity gate fails after both exports were written to staging
    proc = run_cli("build_repo.py", "--arch", "large", "--target", "local", "-o", out, "--parity-tolerance", "0")
    assert_one_line_error(proc, "parity gate failed", "nothing was written")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    # no staging left behind; the lock file stays (removing it could let two builds hold different locks)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model_repository.lock", "model_repository"]


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = run_cli("build_repo.py", "--arch", "small", "-o", tmp_path)
    assert_one_line_error(proc, "refusing to replace")
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_trt_require_fails_here_and_auto_explains(tmp_path, built_repo):
    proc = run_cli("build_repo.py", "--arch", "small", "--trt", "require", "-o", tmp_path / "r")
    assert_one_line_error(proc, "--trt require", "docker compose run --rm trt-build")
    manifest = json.loads((built_repo("small", "ngc") / "manifest.json").read_text())
    assert manifest["tensorrt"]["status"] == "skipped"
    assert "trt-build" in manifest["tensorrt"]["reason"]


def test_weights_without_labels_warn_and_the_tensorrt_note_comes_once(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save(build_model("small", 3, seed=1).state_dict(), weights)
    proc = run_cli("build_repo.py", "--arch", "small", "--weights", weights, "-o", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "--weights without --labels" in line]
    assert len(warnings) == 1 and "class_0..class_2" in warnings[0] and "--labels" in warnings[0], proc.stderr
    assert (tmp_path / "r" / PT.name / "labels.txt").read_text() == "class_0\nclass_1\nclass_2\n"
    assert proc.stderr.count("trt-build") == 1, proc.stderr  # how to build the plan, said once
    assert "TensorRT: skipped" in proc.stderr


@pytest.mark.parametrize("models", ["pt,onnx", "onnx"])
def test_ngc_subset_without_trt_builds_and_checks(tmp_path, models):
    out = tmp_path / "repo"
    proc = run_cli("build_repo.py", "--arch", "small", "--models", models, "-o", out)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    names = sorted(spec.name for spec in MODELS if spec.key in models.split(","))
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == names
    assert json.loads((out / "manifest.json").read_text())["tensorrt"]["status"] == "not-requested"
    assert check_repository(out).ok


def test_version_policy_keeps_the_served_versions_of_the_previous_build(tmp_path):
    out = tmp_path / "repo"
    common = ("--arch", "small", "--target", "local", "--models", "onnx", "-o", out)
    proc = run_cli("build_repo.py", *common, "--version-policy", "specific:1,2")
    assert_one_line_error(proc, "specific:1,2: mobilenetv3_onnx would have no version 2", "--model-version (1)")
    assert run_cli("build_repo.py", *common).returncode == 0
    v1 = (out / ONNX.name / "1" / ONNX.artifact).read_bytes()
    proc = run_cli("build_repo.py", *common, "--model-version", "2", "--version-policy", "specific:1,2")
    assert proc.returncode == 0, proc.stderr
    assert (out / ONNX.name / "1" / ONNX.artifact).read_bytes() == v1 and (out / ONNX.name / "2" / ONNX.artifact).is_file()
    assert list(parse(out / ONNX.name / "config.pbtxt").version_policy.specific.versions) == [1, 2]
    assert json.loads((out / "manifest.json").read_text())["kept_versions"] == {ONNX.name: [1]}
    assert check_repository(out).ok
    assert run_cli("build_repo.py", *common).returncode == 0  # latest:1, version 1 again: version 2 is not kept
    assert sorted(p.name for p in (out / ONNX.name).iterdir() if p.is_dir()) == ["1"]


def test_filesystem_failure_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = run_cli("build_repo.py", "--arch", "small", "-o", tmp_path / "a_file" / "repo")
    assert_one_line_error(proc, "build failed", "a_file", "the previous repository is kept")
    assert proc.returncode == 2


def test_instance_count_zero_is_refused_before_building(tmp_path):
    proc = run_cli("build_repo.py", "--arch", "small", "--instance-count", "0", "-o", tmp_path / "r")
    assert_one_line_error(proc, "--instance-count must be >= 1")
    assert proc.returncode == 2 and not (tmp_path / "r").exists()


def test_plan_script_profile_and_options():
    script = render_plan_script(PlanOptions(opt_batch=4, max_batch=16, fp16=True, workspace_mb=2048))
    assert "--minShapes=image:1x3x224x224 --optShapes=image:4x3x224x224 --maxShapes=image:16x3x224x224" in script
    assert "--fp16" in script and "--memPoolSize=workspace:2048M" in script
    assert "--fp16" not in render_plan_script(PlanOptions())
    with pytest.raises(KitError, match="below max_batch_size"):
        build(BuildOptions(config=ConfigOptions(max_batch_size=16), plan=PlanOptions(4, 8)))


def test_template_options_render_valid_configs():
    cfg = ConfigOptions(version_policy=VersionPolicy.parse("specific:1,3"), batching=Batching(False))
    for spec in MODELS:
        config = text_format.Parse(render_config(spec, cfg), model_config_pb2.ModelConfig())
        assert list(config.version_policy.specific.versions) == [1, 3]
        assert not config.HasField("dynamic_batching")
    assert text_format.Parse(render_config(PT, ConfigOptions(version_policy=VersionPolicy.parse("all"))),
                             model_config_pb2.ModelConfig()).version_policy.HasField("all")
    with pytest.raises(KitError, match="bad version policy"):
        VersionPolicy.parse("newest")
    with pytest.raises(KitError, match="preferred batch sizes"):
        render_config(PT, ConfigOptions(batching=Batching(True, (4, 16))))
    def bound(opts):
        return queue_bound(text_format.Parse(render_config(PT, opts), model_config_pb2.ModelConfig()))

    # the default rule: 4 batches per instance; the python backend's instances share the bound out
    assert bound(ConfigOptions(max_batch_size=16, instances=Instances("KIND_GPU", 2))) == (4 * 16 * 2, 5_000_000)
    assert bound(ConfigOptions(target="local", max_batch_size=16, instances=Instances("KIND_CPU", 2))) == (4 * 16, 5_000_000)
    given = Batching(True, (4, 8), 100, max_queue_size=5, queue_timeout_us=0)
    assert bound(ConfigOptions(batching=given)) == (5, 0)
    assert bound(ConfigOptions(target="local", batching=given, instances=Instances("KIND_CPU"))) == (5, 0)


def test_yield_core_is_a_parameter_of_cpu_instances():
    """How a CPU model computes under overload (mnv3kit/backend/serving.py): auto unless told, CPU instances only."""
    def params(opts):
        config = text_format.Parse(render_config(ONNX, opts), model_config_pb2.ModelConfig())
        return {k: v.string_value for k, v in config.parameters.items()}

    cpu = ConfigOptions(target="local", instances=Instances("KIND_CPU"))
    assert params(cpu)["yield_core"] == "auto"
    assert params(ConfigOptions(target="local", instances=Instances("KIND_CPU"),
                                batching=Batching(yield_core="never")))["yield_core"] == "never"
    assert "yield_core" not in params(ConfigOptions(target="local", instances=Instances("KIND_GPU")))
    with pytest.raises(KitError, match="--yield-core must be one of auto, always, never, got 'sometimes'"):
        render_config(ONNX, ConfigOptions(target="local", batching=Batching(yield_core="sometimes")))


# What serves each model on each target, written out as Triton names it (not read from spec.py): one template renders
# all of them, the platform and its blocks are data.
SERVED_BY = [  # model, target, runtime -> platform, backend, parameters (key: value; None: any value)
    (PT, "ngc", "torchscript", "pytorch_libtorch", "", {"INFERENCE_MODE": "true"}),
    (ONNX, "ngc", "torchscript", "onnxruntime_onnx", "", {}),
    (TRT, "ngc", "torchscript", "tensorrt_plan", "", {}),
    (ONNX, "ngc", "compiled", "onnxruntime_onnx", "", {}),  # --runtime is about the torch models only
    (TRT, "ngc", "compiled", "tensorrt_plan", "", {}),
    (PT, "ngc", "compiled", "", "python", {"artifact": "model.pt2", "runtime": "compiled", "compile_cache": None}),
    (U8, "ngc", "compiled", "", "python", {"artifact": "model.pt2", "runtime": "compiled", "mean": None, "std": None}),
    (PT, "local", "torchscript", "", "python", {"artifact": "model.pt", "runtime": "torch"}),
    (ONNX, "local", "torchscript", "", "python", {"artifact": "model.onnx", "runtime": "onnxruntime",
                                                   "max_queue_size": "32", "queue_timeout_us": "5000000"}),
    (U8, "local", "torchscript", "", "python", {"artifact": "model.pt", "runtime": "torch",
                                                 "mean": "0.485,0.456,0.406", "std": "0.229,0.224,0.225"}),
]


@pytest.mark.parametrize("spec, target, runtime, platform, backend, params", SERVED_BY,
                         ids=[f"{s.key}-{t}-{r}" for s, t, r, *_ in SERVED_BY])
def test_one_template_serves_every_model(spec, target, runtime, platform, backend, params):
    from mnv3kit.render import GpuOptions

    gpu = GpuOptions("fp16", cuda_graph_batches=(1, 8), onnx_accelerator="tensorrt")
    config = text_format.Parse(render_config(spec, ConfigOptions(target=target, runtime=runtime, gpu=gpu)),
                               model_config_pb2.ModelConfig())
    assert (config.name, config.platform, config.backend) == (spec.name, platform, backend)
    assert (config.input[0].name, config.output[0].name) == (spec.input_name, spec.output_name)
    got = {k: v.string_value for k, v in config.parameters.items()}
    assert set(params) <= set(got) and all(got[k] == v for k, v in params.items() if v is not None), got
    if backend == "python" and spec != ONNX:  # the torch runner's GPU options; it captures its own CUDA graphs
        gpu_params = (got["precision"], got["cuda_graph_batches"], got["FORCE_CPU_ONLY_INPUT_TENSORS"])
        assert gpu_params == ("fp16", "1,8", "no")
    else:
        assert set(got) == set(params)
    optimization = config.optimization
    accelerators = [(a.name, dict(a.parameters)) for a in optimization.execution_accelerators.gpu_execution_accelerator]
    assert accelerators == ([("tensorrt", {"precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30)})]
                            if platform == "onnxruntime_onnx" else [])
    graphs = [(g.batch_size, list(g.input[spec.input_name].dim)) for g in optimization.cuda.graph_spec]
    assert optimization.cuda.graphs == (platform == "tensorrt_plan")
    assert graphs == ([(1, [3, 224, 224]), (8, [3, 224, 224])] if platform == "tensorrt_plan" else [])


def _copy(built_repo, tmp_path, arch="small", target="local"):
    dst = tmp_path / "copy"
    shutil.copytree(built_repo(arch, target), dst)
    return dst


def test_check_cli_ok_and_problems(built_repo, tmp_path):
    proc = run_cli("build_repo.py", "--check", built_repo("small", "ngc"))
    assert proc.returncode == 0 and "OK" in proc.stdout
    assert "model.plan: not built yet" in proc.stderr
    repo = _copy(built_repo, tmp_path)
    cfg = repo / PT.name / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "\nnot_a_field: 3\n")
    (repo / ONNX.name / "labels.txt").write_text("one\n")
    proc = run_cli("build_repo.py", "--check", repo)
    assert proc.returncode == 1
    assert "not_a_field" in proc.stderr and "1 labels, output has 5" in proc.stderr
    assert "sha256 differs" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("damage, fragment", [
    ("artifact_tampered", "sha256 differs"),
    ("artifact_missing", "model.pt: missing"),
    ("no_version_dir", "no numeric version directory"),
    ("wrong_tensor_name", "the kit's contract is"),
    ("onnx_wrong_output", "graph outputs are"),
    ("torchscript_wrong_classes", "output shape (8, 3)"),
    ("model_py_missing", "model.py: missing"),
    ("manifest_missing", "has no manifest.json"),
    ("bad_enum", "KIND_TPU"),
])
def test_check_finds_each_problem(built_repo, tmp_path, damage, fragment):
    repo = _copy(built_repo, tmp_path)
    pt_dir, onnx_dir = repo / PT.name, repo / ONNX.name
    if damage == "artifact_tampered":
        with open(pt_dir / "1" / "model.pt", "ab") as f:
            f.write(b"\0")
    elif damage == "artifact_missing":
        (pt_dir / "1" / "model.pt").unlink()
    elif damage == "no_version_dir":
        shutil.rmtree(onnx_dir / "1")
    elif damage == "wrong_tensor_name":
        cfg = pt_dir / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace('"INPUT__0"', '"input"'))
    elif damage == "onnx_wrong_output":
        model = onnx.load(str(onnx_dir / "1" / "model.onnx"))
        model.graph.output[0].name = "logits"
        model.graph.node[-1].output[0] = "logits"
        onnx.save(model, str(onnx_dir / "1" / "model.onnx"))
    elif damage == "torchscript_wrong_classes":
        torch.jit.save(torch.jit.trace(build_model("small", 3, seed=0), torch.zeros(1, 3, 224, 224)),
                       str(pt_dir / "1" / "model.pt"))
    elif damage == "model_py_missing":
        (onnx_dir / "1" / "model.py").unlink()
    elif damage == "manifest_missing":
        (repo / "manifest.json").unlink()
    elif damage == "bad_enum":
        cfg = pt_dir / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace("KIND_CPU", "KIND_TPU"))
    report = check_repository(repo)
    assert not report.ok
    assert any(fragment in p for p in report.problems), report.problems


@pytest.mark.parametrize("damage, fragment", [
    ("max_batch_above_script_profile", "max_batch_size 16 is above the TensorRT profile max 8 of "
                                       "mobilenetv3_trt/build_plan.sh"),
    ("max_batch_above_plan_info", "max_batch_size 8 is above the TensorRT profile max 4 of "
                                  "mobilenetv3_trt/1/plan_info.json"),
    ("kind_cpu_on_plan", "KIND_CPU on a tensorrt_plan model"),
    ("instance_count_zero", "instance_group count 0"),
])
def test_check_finds_what_only_fails_on_a_deployment(built_repo, tmp_path, damage, fragment):
    """Each its own finding, not only the sha256 mismatch that any hand edit of a built file also shows."""
    repo = _copy(built_repo, tmp_path, target="ngc")
    trt = repo / TRT.name / "config.pbtxt"
    if damage == "max_batch_above_script_profile":
        trt.write_text(trt.read_text().replace("max_batch_size: 8", "max_batch_size: 16"))
    elif damage == "max_batch_above_plan_info":  # as build_plan.sh records a plan built with --max-batch 4
        (repo / TRT.name / "1" / "plan_info.json").write_text(json.dumps({"profile": {"min": 1, "opt": 4, "max": 4}}))
    elif damage == "kind_cpu_on_plan":
        trt.write_text(trt.read_text().replace("KIND_GPU", "KIND_CPU"))
    elif damage == "instance_count_zero":
        cfg = repo / PT.name / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace("count: 1", "count: 0"))
    problems = check_repository(repo).problems
    assert any(fragment in p for p in problems), problems


def test_cli_help_explains():
    proc = run_cli("build_repo.py", "--help")
    assert proc.returncode == 0
    for flag in ("--weights", "--labels", "--target", "--trt", "--opt-batch", "--fp16", "--check", "--version-policy",
                 "--instance-kind", "--queue-delay-us", "--preferred-batch-sizes"):
        assert flag in proc.stdout


def test_gpu_options_render_into_local_configs():
    from mnv3kit.render import GpuOptions
    from mnv3kit.spec import U8

    cfg = ConfigOptions(target="local", max_batch_size=64, gpu=GpuOptions("fp16", True, (1, 8, 64)))
    for spec in (PT, U8):
        config = text_format.Parse(render_config(spec, cfg), model_config_pb2.ModelConfig())
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params["precision"] == "fp16" and params["channels_last"] == "true"
        assert params["cuda_graph_batches"] == "1,8,64"
    assert text_format.Parse(render_config(U8, cfg), model_config_pb2.ModelConfig()).input[0].data_type == \
        model_config_pb2.TYPE_UINT8
    with pytest.raises(KitError, match="python backend only"):
        render_config(U8, ConfigOptions())
    with pytest.raises(KitError, match="offers pt, onnx, trt"):
        build(BuildOptions(models=("u8",)))


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_killed_build_leftovers_are_cleaned_and_a_half_swap_restored(built_repo, tmp_path):
    out = _copy(built_repo, tmp_path)
    pid = _dead_pid()
    stale = tmp_path / f".{out.name}.staging-{pid}"
    (stale / "mobilenetv3_pt").mkdir(parents=True)
    # a kill between the two renames: the old repository under its side name, nothing at the output
    os.rename(out, tmp_path / f".{out.name}.previous-{pid}")
    proc = run_cli("build_repo.py", "--check", out)
    assert proc.returncode == 0, proc.stderr
    assert f"restored {out}" in proc.stderr and f"removed {stale.name}" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{out.name}.lock", out.name]
    assert check_repository(out).ok


def test_concurrent_builds_into_one_output_are_refused(tmp_path):
    out = tmp_path / "model_repository"
    args = ("build_repo.py", "--arch", "small", "--target", "local", "--models", "onnx", "-o", out)
    first = subprocess.Popen([sys.executable, str(ROOT / args[0]), *map(str, args[1:])], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".model_repository.staging-*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first build holds the lock while it writes its staging directory
    second = run_cli(*args)
    assert second.returncode == 2
    assert_one_line_error(second, "another build", f"pid {first.pid}", "is writing")
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert check_repository(out).ok
