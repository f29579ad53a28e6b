"""The OpenVINO models (--models ...,ov,ov_u8): the IRs in the parity gate, their configs for both targets parsed with
Triton's schema and checked by --check, the BF16 accuracy gate refusing and passing, and the served models' answers
on the real embedded Triton, the UINT8 IR also behind the fused image model, all under sustained load."""

import json
import shutil

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2

from conftest import ROOT, assert_one_line_error, run_cli
from mnv3kit.backend.classifier_model import OnnxRunner, OpenVinoRunner, physical_cores
from mnv3kit.demo_data import write as write_digits
from mnv3kit.openvino import bf16_supported
from mnv3kit.server import LocalTriton, Ports
from mnv3kit.spec import ENSEMBLE, ENSEMBLE_OUTPUT, IMAGE_INPUT, ONNX, OV, OV_U8, OV_WEIGHTS
from mnv3kit.validate import check_repository, parse_config

WEIGHTS = ["--weights", ROOT / "demo" / "weights" / "MobileNetV3_Small.pth",
           "--labels", ROOT / "demo" / "weights" / "class_indices.json"]
needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="this CPU has no BF16 (OpenVINO lists neither "
                                                             "AVX512_BF16 nor AMX)")


def build(out, *args):
    return run_cli("build_repo.py", "--arch", "small", *WEIGHTS, "-o", out, *args)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The demo's held-out digits: images the trained weights classify with large margins."""
    folder = tmp_path_factory.mktemp("digits")
    write_digits(folder)
    return folder / "test"


@pytest.fixture(scope="module")
def local_repo(tmp_path_factory):
    """Both IRs, and the UINT8 one behind the fused image model."""
    out = tmp_path_factory.mktemp("ov") / "repo"
    proc = build(out, "--target", "local", "-m", "onnx,ov,ov_u8", "--ensemble", "ov_u8", "--image-model", "fused")
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_ir_is_in_the_parity_gate_and_served_in_fp32(local_repo):
    manifest = json.loads((local_repo / "manifest.json").read_text())
    rows = [r for r in manifest["parity"]["rows"] if r["format"] == "openvino"]
    assert [r["batch"] for r in rows] == [1, 8]
    assert all(r["max_abs_diff"] <= 1e-4 * max(1.0, r["max_abs_logit"]) and r["top1_agree"] for r in rows)
    assert manifest["openvino"]["precision"] == "fp32" and manifest["openvino"]["version"]
    vdir = local_repo / OV.name / "1"
    assert (vdir / OV.artifact).is_file() and (vdir / OV_WEIGHTS).is_file()
    config = parse_config(local_repo / OV.name / "config.pbtxt")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.backend == "python" and params["runtime"] == "openvino" and params["precision"] == "fp32"
    assert check_repository(local_repo).ok


def test_served_answers_equal_the_in_process_runtime(local_repo, photos):
    """The embedded Triton's answers for real photographs, batch 1 and 2, against OpenVINO FP32 in this process."""
    import tritonclient.grpc as grpc

    from mnv3kit.parity import parity_batch

    images = parity_batch(photos, 3)
    expected = OpenVinoRunner(str(local_repo / OV.name / "1" / OV.artifact), "fp32")(images)
    with LocalTriton(local_repo, Ports.free()) as server:
        client = grpc.InferenceServerClient(server.grpc_url)
        for part in (images[:1], images[1:3]):
            inp = grpc.InferInput(OV.input_name, list(part.shape), "FP32")
            inp.set_data_from_numpy(part)
            got = client.infer(OV.name, [inp]).as_numpy(OV.output_name)
            want = expected[:1] if len(part) == 1 else expected[1:3]
            assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
        bad = images[:1].copy()
        bad[0, 0, 0, 0] = np.nan  # OpenVINO's kernels would answer NaN with finite logits: the model refuses it
        inp = grpc.InferInput(OV.input_name, list(bad.shape), "FP32")
        inp.set_data_from_numpy(bad)
        with pytest.raises(Exception, match="NaN or Inf"):
            client.infer(OV.name, [inp])
        client.close()


def test_the_uint8_ir_normalizes_in_its_graph(local_repo, photos):
    """ov_u8: the parity gate's rows for it, its config (UINT8 PIXELS, nothing for the runner to normalize), and the
    served answers for raw pixels (alone, and through the fused image model for the files) against the FP32 IR in
    this process on the normalized pixels."""
    import tritonclient.grpc as grpc

    from mnv3kit.parity import parity_pixels
    from mnv3kit.preprocess import eval_pixels, load_image, normalize

    rows = [r for r in json.loads((local_repo / "manifest.json").read_text())["parity"]["rows"]
            if r["format"] == "openvino u8"]
    assert [r["batch"] for r in rows] == [1, 8]
    assert all(r["max_abs_diff"] <= 1e-4 * max(1.0, r["max_abs_logit"]) and r["top1_agree"] for r in rows)
    config = parse_config(local_repo / OV_U8.name / "config.pbtxt")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.input[0].name == "PIXELS" and config.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert params["runtime"] == "openvino" and "mean" not in params and "std" not in params
    assert check_repository(local_repo).ok

    pixels = parity_pixels(photos, 3)
    fp32 = OpenVinoRunner(str(local_repo / OV.name / "1" / OV.artifact), "fp32")
    expected = fp32(normalize(pixels))
    with LocalTriton(local_repo, Ports.free()) as server:
        client = grpc.InferenceServerClient(server.grpc_url)
        inp = grpc.InferInput(OV_U8.input_name, list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels)
        got = client.infer(OV_U8.name, [inp]).as_numpy(OV_U8.output_name)
        assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))
        data = photos[0].read_bytes()
        inp = grpc.InferInput(IMAGE_INPUT, [1, len(data)], "UINT8")
        inp.set_data_from_numpy(np.frombuffer(data, np.uint8)[None])
        got = client.infer(ENSEMBLE, [inp]).as_numpy(ENSEMBLE_OUTPUT)
        want = fp32(normalize(eval_pixels(load_image(photos[0]))[None]))
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
        client.close()


def test_ngc_configs_are_triton_openvino_backend(digits, tmp_path):
    """Triton's OpenVINO backend has no FP32 switch and computes in BF16 on CPUs that have it: there the ngc build
    runs the accuracy gate even for fp32. Both IRs' configs are the backend's own (KIND_CPU, its parameters), the
    UINT8 one served as it is (no python model to normalize); --check runs each on zeros of its input type and finds
    an IR whose input is not the one its config names."""
    out = tmp_path / "repo"
    proc = build(out, "--target", "ngc", "-m", "onnx,ov,ov_u8", "--trt", "skip", "--parity-images", digits,
                 "--openvino-min-agreement", "0.9")
    assert proc.returncode == 0, proc.stderr
    for spec, dtype in ((OV, model_config_pb2.TYPE_FP32), (OV_U8, model_config_pb2.TYPE_UINT8)):
        config = parse_config(out / spec.name / "config.pbtxt")
        assert config.backend == "openvino" and not config.platform
        assert [g.kind for g in config.instance_group] == [config.instance_group[0].KIND_CPU]
        assert {k: v.string_value for k, v in config.parameters.items()} == {"PERFORMANCE_HINT": "LATENCY"}
        assert (config.input[0].name, config.input[0].data_type) == (spec.input_name, dtype)
    gate = json.loads((out / "manifest.json").read_text())["openvino"]["gate"]
    assert gate["ok"] if bf16_supported() else gate.startswith("not run: this CPU has no BF16")
    check = run_cli("build_repo.py", "--check", out)
    assert check.returncode == 0 and OV_U8.name in check.stdout + check.stderr, check.stderr
    xml = out / OV_U8.name / "1" / OV.artifact
    xml.write_text(xml.read_text().replace('"PIXELS"', '"image"'))
    proc = run_cli("build_repo.py", "--check", out)
    assert proc.returncode != 0 and "config expects 'PIXELS'->'outputs'" in proc.stdout + proc.stderr


@needs_bf16
def test_bf16_below_the_gate_is_refused_and_the_previous_repository_kept(local_repo, tmp_path):
    """The demo's digits model on photo views: BF16 changes the class of more than 0.5 % of them."""
    out = tmp_path / "repo"
    shutil.copytree(local_repo, out)
    before = (out / "manifest.json").read_text()
    proc = build(out, "--target", "local", "-m", "ov", "--openvino-precision", "bf16")
    assert_one_line_error(proc, "OpenVINO BF16 refused by the accuracy gate", "top-1", "--openvino-precision fp32")
    assert (out / "manifest.json").read_text() == before


@needs_bf16
def test_bf16_that_passes_the_gate_is_served_and_reported(digits, tmp_path):
    out = tmp_path / "repo"
    proc = build(out, "--target", "local", "-m", "ov", "--openvino-precision", "bf16", "--parity-images", digits,
                 "--openvino-min-agreement", "0.9")
    assert proc.returncode == 0, proc.stderr
    gate = json.loads((out / "manifest.json").read_text())["openvino"]["gate"]
    assert gate["ok"] and gate["images"] == 512 and 0.9 <= gate["top1_agreement"] <= 1.0
    assert 0 < gate["diff_p50"] <= gate["diff_p99"] <= gate["diff_max"]
    assert "accuracy gate: OpenVINO BF16 vs FP32 eager on 512 photo views" in proc.stderr
    params = parse_config(out / OV.name / "config.pbtxt").parameters
    assert params["precision"].string_value == "bf16"


@needs_bf16
def test_the_gate_model_script_trains_a_model_bf16_serves(tmp_path):
    """perf/gate_model.py: trained on the gate's photographs, the model keeps its classes in BF16 and is built."""
    out = tmp_path / "gate-model"
    proc = run_cli("perf/gate_model.py", "-o", out, "--arch", "small", "--epochs", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (out / "data" / "train").iterdir()) == ["china", "flower"]
    gate = json.loads((out / "model_repository" / "manifest.json").read_text())["openvino"]["gate"]
    assert gate["ok"] and gate["top1_agreement"] >= 0.995, gate
    params = parse_config(out / "model_repository" / OV.name / "config.pbtxt").parameters
    assert params["precision"].string_value == "bf16"
    assert_one_line_error(run_cli("perf/gate_model.py", "-o", out), "is not empty: give a new folder")


def test_a_broken_ir_is_found_by_check(local_repo, tmp_path):
    out = tmp_path / "repo"
    shutil.copytree(local_repo, out)
    (out / OV.name / "1" / OV_WEIGHTS).write_bytes(b"\0" * 64)
    proc = run_cli("build_repo.py", "--check", out)
    assert proc.returncode != 0 and f"{OV.name}/1/{OV.artifact}" in proc.stdout + proc.stderr


def test_bad_gate_threshold_is_one_line(tmp_path):
    proc = build(tmp_path / "repo", "--target", "local", "-m", "ov", "--openvino-min-agreement", "1.5")
    assert_one_line_error(proc, "--openvino-min-agreement must lie in (0, 1]")


def test_load_truth_of_the_openvino_models(local_repo, tmp_path):
    """The soak on both served IRs and the fused image model on the UINT8 one: sustained concurrency 1 and 8, real
    photographs and edge inputs, every answer checked against OpenVINO FP32 in-process; NaN inputs refused."""
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mnv3kit.cli.perf", "soak", "--repo", str(local_repo), "-m",
                           "ov,ov_u8,image", "-c", "1,8", "--seconds", "5", "-o", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((out / "soak.json").read_text())["rows"]
    assert sorted(r["model"] for r in rows) == sorted([OV.name, OV_U8.name, ENSEMBLE] * 2)
    assert all(r["ok"] > 0 and r["wrong"] == 0 and r["failed"] == 0 for r in rows), proc.stdout
    assert sum(r["refused_as_expected"] for r in rows) > 0, proc.stdout


def test_streams_benchmark_checks_every_answer(local_repo, tmp_path):
    """perf/openvino_streams.py: both modes measured, every output compared; a repository without the IR is a
    one-line error."""
    out = tmp_path / "streams"
    proc = run_cli(ROOT / "perf" / "openvino_streams.py", "--repo", local_repo, "-b", "1,2", "--seconds", "1",
                   "--rounds", "1", "-o", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "streams.json").read_text())
    assert len(result["rates"]) == 4 and all(v[0] > 0 for v in result["rates"].values())
    assert set(result["wrong"].values()) == {0} and min(result["checked"].values()) > 0
    assert "| THROUGHPUT, async requests | 2 |" in (out / "REPORT.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli(ROOT / "perf" / "openvino_streams.py", "--repo", empty, "-o", tmp_path / "x"),
                          "no such file", "--models ...,ov")


@pytest.mark.skipif(physical_cores() < 2, reason="one core: nothing to yield")
def test_onnx_and_openvino_runners_adapt_to_an_overload(local_repo, photos):
    """While their model refuses requests and yields a core, the ONNX Runtime and OpenVINO runners compute on one
    thread fewer (a second session / compiled model, made at the first overload) with the same answers; overloaded on
    every core, ONNX Runtime's threads stop spinning (a third session); then both go back."""
    from mnv3kit.parity import parity_batch

    images = parity_batch(photos, 2)
    onnx = OnnxRunner(str(local_repo / ONNX.name / "1" / ONNX.artifact), ONNX.input_name)
    ov = OpenVinoRunner(str(local_repo / OV.name / "1" / OV.artifact), "fp32")
    for runner, lean_threads in ((onnx, lambda r: r.session.get_session_options().intra_op_num_threads),
                                 (ov, lambda r: int(r.request.get_compiled_model().get_property(
                                     "INFERENCE_NUM_THREADS")))):
        full = runner(images)
        runner.adapt(True, True)
        # OpenVINO's own count for the full model; ONNX Runtime's default is the physical cores
        threads = int(ov.compiled.get_property("INFERENCE_NUM_THREADS")) if runner is ov else physical_cores()
        assert runner.lean is not None and lean_threads(runner) == threads - 1
        np.testing.assert_allclose(runner(images), full, rtol=1e-4, atol=1e-4)
        runner.adapt(True, False)
        if runner is onnx:
            options = runner.session.get_session_options()
            assert runner.session is runner.busy and options.intra_op_num_threads == threads
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
            np.testing.assert_allclose(runner(images), full, rtol=1e-4, atol=1e-4)
        else:
            assert runner.request is runner.full
        runner.adapt(False, False)
        assert runner.request is runner.full if runner is ov else runner.session is runner.full
    options = onnx.full.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # spinning within a run: the default
        options.get_session_config_entry("session.intra_op.allow_spinning")
