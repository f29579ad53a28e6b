"""GPU serving options on a machine without a GPU: --runtime compiled, CUDA-graph and ONNX Runtime accelerator
configs, GPU input tensors, the load-time parity check and the compile-failure fallback message."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from conftest import ROOT, assert_one_line_error, run_cli
from mnv3kit.backend import PYTHON_MODEL_FILES
from mnv3kit.backend.classifier_model import RunnerError, TorchRunner, bucket_sizes
from mnv3kit.build import BuildOptions, build
from mnv3kit.errors import KitError
from mnv3kit.render import ConfigOptions, GpuOptions, Instances, render_config
from mnv3kit.server import LocalTriton, Ports
from mnv3kit.spec import COMPILED_ARTIFACT, ONNX, PARITY_FILE, PT, TRT, U8
from mnv3kit.validate import check_repository


def parse(text):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def params(config):
    return {k: v.string_value for k, v in config.parameters.items()}


@pytest.fixture(scope="module")
def compiled_repo(tmp_path_factory):
    """--target ngc --runtime compiled with every model, built here (no GPU: compilation waits for the server)."""
    out = tmp_path_factory.mktemp("compiled") / "repo"
    cfg = ConfigOptions(target="ngc", max_batch_size=8, runtime="compiled",
                        gpu=GpuOptions("fp16", True, (1, 4, 8), "/var/cache/mnv3kit", 0.05, "tensorrt"))
    build(BuildOptions(arch="small", output=out, config=cfg, models=("pt", "onnx", "trt", "u8"), trt="skip"))
    return out


def test_compiled_runtime_repository(compiled_repo):
    manifest = json.loads((compiled_repo / "manifest.json").read_text())
    assert manifest["runtime"] == "compiled" and manifest["parity"]["device"] is None  # no GPU here
    assert {r["format"] for r in manifest["parity"]["rows"]} == {"torchscript", "torch.export", "onnx"}
    assert all(r["max_abs_diff"] == 0.0 for r in manifest["parity"]["rows"] if r["format"] == "torch.export")
    for spec in (PT, U8):
        vdir = compiled_repo / spec.name / "1"
        assert sorted(p.name for p in vdir.iterdir()) == sorted([COMPILED_ARTIFACT, *PYTHON_MODEL_FILES, PARITY_FILE])
        config = parse((compiled_repo / spec.name / "config.pbtxt").read_text())
        assert config.backend == "python" and not config.platform  # NVIDIA's image with PyTorch for Python
        p = params(config)
        assert p["runtime"] == "compiled" and p["artifact"] == COMPILED_ARTIFACT
        assert p["compile_cache"] == "/var/cache/mnv3kit" and p["parity_tolerance"] == "0.05"
        assert p["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no"  # CUDA shared memory reaches the model as is
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        reference = np.load(vdir / PARITY_FILE)
        assert reference["pixels"].dtype == np.uint8 and reference["pixels"].shape == (8, 3, 224, 224)
        assert reference["logits"].shape == (8, 5) and np.abs(reference["logits"]).max() > 1
    trt = parse((compiled_repo / TRT.name / "config.pbtxt").read_text())
    assert trt.optimization.cuda.graphs and [g.batch_size for g in trt.optimization.cuda.graph_spec] == [1, 4, 8]
    assert list(trt.optimization.cuda.graph_spec[0].input[TRT.input_name].dim) == [3, 224, 224]
    onnx = parse((compiled_repo / ONNX.name / "config.pbtxt").read_text())
    accelerator = onnx.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert check_repository(compiled_repo).ok


def test_check_runs_the_exported_program(compiled_repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(compiled_repo, copy)
    (copy / PT.name / "1" / COMPILED_ARTIFACT).write_bytes(b"not a program")
    problems = check_repository(copy).problems
    assert any("the torch.export program does not run" in p for p in problems), problems


def test_soak_reference_runs_the_exported_program(compiled_repo):
    """The load-truth harness checks a compiled model's answers against its exported program, run eagerly on the CPU."""
    from mnv3kit.measure.soak import reference_forward
    from mnv3kit.preprocess import normalize

    reference = np.load(compiled_repo / PT.name / "1" / PARITY_FILE)
    # more rows than the program's batch dimension allows (max_batch_size 8), as the soak's 16 photographs are
    pixels, expected = np.concatenate([reference["pixels"]] * 3), np.concatenate([reference["logits"]] * 3)
    logits = reference_forward(compiled_repo, compiled_repo / PT.name)(normalize(pixels))
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_runtime_and_graph_options_are_checked(tmp_path):
    proc = run_cli("build_repo.py", "--target", "local", "--runtime", "compiled", "-o", tmp_path / "r")
    assert_one_line_error(proc, "--runtime compiled needs --instance-kind KIND_GPU", "--runtime torchscript")
    assert not (tmp_path / "r").exists()
    with pytest.raises(KitError, match="must lie in 1..max_batch_size"):
        render_config(PT, ConfigOptions(target="local", gpu=GpuOptions(cuda_graph_batches=(8, 16))))
    cpu = parse(render_config(PT, ConfigOptions(target="local", instances=Instances("KIND_CPU"))))
    assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in params(cpu) and params(cpu)["parity_tolerance"] == "0.0001"


def test_compile_failure_names_the_fallback(compiled_repo):
    """A real TorchInductor failure (no working C++ compiler for its CPU code) becomes one clear error."""
    script = ("import sys; from mnv3kit.backend.classifier_model import TorchRunner, RunnerError\n"
              "try:\n"
              f"    TorchRunner({str(compiled_repo / PT.name / '1' / COMPILED_ARTIFACT)!r}, 'cpu', graph_batches=[1])\n"
              "except RunnerError as exc:\n"
              "    print(exc); sys.exit(3)\n")
    env = {**os.environ, "CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(compiled_repo.parent / "cache")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-2000:]
    assert "TorchInductor could not compile the model for batch 1" in proc.stdout
    assert "--runtime torchscript" in proc.stdout


def test_load_time_parity_gate(built_repo, tmp_path):
    """The served TorchScript checks itself against parity.npz: it passes as built, and a model whose logits do not
    match the build's does not load (through the real server)."""
    repo = built_repo("small", "local")
    vdir = repo / PT.name / "1"
    runner = TorchRunner(str(vdir / PT.artifact))
    # on a CPU frozen and optimized for oneDNN: within the build's tolerance of eager FP32, not bit-equal
    assert "top-1 same" in runner.check_parity(vdir / PARITY_FILE, 1e-4)
    assert "to_mkldnn" in str(runner.module.graph)

    broken = tmp_path / "repo"
    shutil.copytree(repo, broken)
    shutil.rmtree(broken / ONNX.name)
    data = dict(np.load(broken / PT.name / "1" / PARITY_FILE))
    data["logits"] = data["logits"][:, ::-1].copy()  # another model's answers
    np.savez(broken / PT.name / "1" / PARITY_FILE, **data)
    with pytest.raises(RunnerError, match="parity gate failed"):
        runner.check_parity(broken / PT.name / "1" / PARITY_FILE, 1e-4)
    with pytest.raises(KitError) as failure:
        with LocalTriton(broken, Ports.free()):
            pass
    assert "parity gate failed" in str(failure.value) and "--runtime torchscript" in str(failure.value)


def test_bucket_sizes_cover_every_batch_up_to_max():
    """A GPU TorchScript runner without CUDA graphs pads each call to one of these sizes, run at load: every batch
    1..max must have one at most twice its size, and max batch must be one (no padding beyond it)."""
    for max_batch in (1, 2, 5, 8, 48, 64):
        sizes = bucket_sizes(max_batch)
        assert sizes == sorted(set(sizes)) and sizes[-1] == max_batch
        for n in range(1, max_batch + 1):
            assert n <= next(b for b in sizes if b >= n) <= 2 * n
    assert bucket_sizes(8) == [1, 2, 4, 8] and bucket_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


def test_a_cpu_runner_yields_a_core_under_overload(built_repo):
    """While its model refuses requests, a CPU torch runner computes on one thread fewer, then takes it back."""
    import torch

    runner = TorchRunner(str(built_repo("small", "local") / PT.name / "1" / PT.artifact))
    threads = torch.get_num_threads()
    runner.adapt(True, True)
    assert torch.get_num_threads() == max(1, threads - 1)
    runner.adapt(False, False)
    assert torch.get_num_threads() == threads

