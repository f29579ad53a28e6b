"""perf/model_analyzer.py without running Model Analyzer: its YAML, the tritonserver wrapper it generates (started for
real, as Model Analyzer starts it), the choice of a winner from Model Analyzer's CSV and config, bad input."""

import importlib.util
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, assert_one_line_error, markdown_table, run_cli
from mnv3kit.server import SHM_DIR, SHM_PREFIX, Ports
from mnv3kit.spec import ONNX

SCRIPT = "perf/model_analyzer.py"


def load_script():
    spec = importlib.util.spec_from_file_location("model_analyzer", ROOT / SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ma = load_script()

# Model Analyzer 1.58's metrics-model-inference.csv, shortened: config_1 is fastest but over the budget at c8 and
# config_2 says it misses its constraints; config_3 at c4 is the best row within 100 ms.
CSV = """\
Model,Batch,Concurrency,Model Config Path,Instance Group,Max Batch Size,Satisfies Constraints,Throughput (infer/sec),p99 Latency (ms)
mobilenetv3_onnx,1,8,mobilenetv3_onnx_config_1,1:CPU,2,No,400.0,120.5
mobilenetv3_onnx,1,4,mobilenetv3_onnx_config_1,1:CPU,2,Yes,210.0,60.0
mobilenetv3_onnx,1,8,mobilenetv3_onnx_config_2,2:CPU,4,No,390.0,99.0
mobilenetv3_onnx,1,4,mobilenetv3_onnx_config_3,2:CPU,4,Yes,305.5,80.2
mobilenetv3_onnx,1,1,mobilenetv3_onnx_config_default,1:CPU,1,Yes,150.0,9.0
"""

# what Model Analyzer writes for a variant of the kit's base repository (text_format, as it prints it)
CONFIG = """\
name: "mobilenetv3_onnx"
max_batch_size: 4
input { name: "image" data_type: TYPE_FP32 dims: 3 dims: 224 dims: 224 }
output { name: "outputs" data_type: TYPE_FP32 dims: 10 label_filename: "labels.txt" }
instance_group { count: 2 kind: KIND_CPU }
dynamic_batching { max_queue_delay_microseconds: 100 }
parameters { key: "runtime" value { string_value: "onnxruntime" } }
backend: "python"
"""


def test_yaml_from_the_arguments_round_trips_and_names_the_wrappers(tmp_path):
    wrappers = (tmp_path / ma.SERVER_WRAPPER, tmp_path / ma.PA_WRAPPER)
    ports = Ports(18100, 18101, 18102)
    for mode in ("quick", "brute"):
        config = ma.ma_config(mode, tmp_path / "run", tmp_path / "base", ONNX.name, wrappers, ports, 100, [1, 2, 4, 8],
                              2, 8)
        text = yaml.safe_dump(config, sort_keys=False)
        assert yaml.safe_load(text) == config
        assert config["run_config_search_mode"] == mode
        assert config["latency_budget"] == 100 and config["objectives"] == ["perf_throughput"]
        assert config["run_config_search_max_instance_count"] == 2
        assert (config["run_config_search_min_model_batch_size"], config["run_config_search_max_model_batch_size"]) == (1, 8)
        assert (config["run_config_search_min_concurrency"], config["run_config_search_max_concurrency"]) == (1, 8)
        assert config["triton_server_path"] == str(wrappers[0]) and config["perf_analyzer_path"] == str(wrappers[1])
        assert config["triton_launch_mode"] == "local" and config["client_protocol"] == "grpc" and config["gpus"] == []
        assert config["triton_grpc_endpoint"] == "127.0.0.1:18101"
        flags = config["profile_models"][ONNX.name]["perf_analyzer_flags"]
        assert flags == {"input-data": "zero", "measurement-request-count": ma.COUNT,
                         "stability-percentage": ma.STABILITY}
        assert all(str(tmp_path / "run") in config[k] for k in ("export_path", "checkpoint_directory",
                                                                "output_model_repository_path"))


def test_best_row_within_the_budget_and_its_config(tmp_path):
    rows = ma.read_ma_csv(CSV)
    best = ma.best_row(rows, 100)
    assert (best["config"], best["concurrency"], best["throughput"], best["p99_ms"]) == (
        "mobilenetv3_onnx_config_3", 4, 305.5, 80.2)
    assert ma.best_row(rows, 5) is None
    (tmp_path / "config.pbtxt").write_text(CONFIG)
    serving = ma.serving_of(tmp_path / "config.pbtxt")
    assert serving == ma.Serving("KIND_CPU", 2, 4, (), 100, True)
    assert serving.label == "i2 b4 p- d100"


def test_a_csv_without_the_columns_is_refused():
    with pytest.raises(ma.KitError, match="Throughput"):
        ma.read_ma_csv("Model,Batch,Concurrency,Model Config Path,Satisfies Constraints,p99 Latency (ms)\n")


def test_perf_analyzer_runs_are_counted_from_the_log():
    wrapper = Path("/x") / ma.PA_WRAPPER
    log = ("[Model Analyzer] Profiling mobilenetv3_onnx_config_0: concurrency=2\n"
           f"[Model Analyzer] DEBUG: Running ['{wrapper}', '-m', 'mobilenetv3_onnx']\n"
           "[Model Analyzer] perf_analyzer's request count is too small, increased to 80.\n"
           f"[Model Analyzer] DEBUG: Running ['{wrapper}', '-m', 'mobilenetv3_onnx']\n")
    assert ma.perf_analyzer_runs(log, wrapper) == 2


def test_shell_values_read_the_callers_variables():
    marks = {"PATH": "@PATH@", "LD_LIBRARY_PATH": "@LD_LIBRARY_PATH@", "LD_PRELOAD": "@LD_PRELOAD@"}
    assert ma.shell_value("/a b:@LD_LIBRARY_PATH@", marks) == '"/a b${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"'
    assert ma.shell_value("lib.so @LD_PRELOAD@", marks) == '"lib.so${LD_PRELOAD:+ $LD_PRELOAD}"'
    assert ma.shell_value("@LD_PRELOAD@", marks) == '"${LD_PRELOAD:-}"'
    assert ma.shell_value('$x"`', marks) == '"\\$x\\"\\`"'
    for value in ("/a b:@LD_LIBRARY_PATH@", "@LD_PRELOAD@", '$x"`'):
        expanded = subprocess.run(["bash", "-c", f"LD_LIBRARY_PATH=/c LD_PRELOAD=; printf %s {ma.shell_value(value, marks)}"],
                                  capture_output=True, text=True, check=True).stdout
        assert expanded == value.replace("@LD_LIBRARY_PATH@", "/c").replace("@LD_PRELOAD@", "")


def http(method, url):
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_the_generated_wrapper_starts_the_embedded_tritonserver_as_model_analyzer_does(built_repo, tmp_path):
    server, pa = ma.write_wrappers(tmp_path / "out")
    assert f'export PATH="{Path(sys.executable).parent}$' in server.read_text()  # the running venv's, not fixed
    assert "Perf Analyzer Version" in subprocess.run([str(pa), "--version"], capture_output=True, text=True).stderr
    ports = Ports.free()
    log = open(tmp_path / "tritonserver.log", "w")
    # the flags and the form Model Analyzer 1.58's local launch passes (TritonServerConfig.to_args_list)
    proc = subprocess.Popen([str(server), "--model-repository", str(built_repo()), "--http-port", str(ports.http),
                             "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics),
                             "--model-control-mode", "explicit", "--metrics-interval-ms", "1000"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{ports.http}/v2"
    try:
        deadline = time.monotonic() + 120
        while http("GET", f"{base}/health/live") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "tritonserver.log").read_text()
            time.sleep(0.5)
        # no admin key: Model Analyzer loads each variant through the repository API without one
        assert http("POST", f"{base}/repository/models/{ONNX.name}/load") == 200, (tmp_path / "tritonserver.log").read_text()
        assert http("GET", f"{base}/models/{ONNX.name}/ready") == 200
        regions = list(SHM_DIR.glob(f"{SHM_PREFIX}{proc.pid}_ma_*"))
        assert regions, "the python backend's regions are named after tritonserver's pid"
    finally:
        proc.terminate()  # what Model Analyzer's stop() sends
        proc.wait(timeout=60)
        log.close()
    assert not list(SHM_DIR.glob(f"{SHM_PREFIX}{proc.pid}_*"))


@pytest.mark.parametrize("flags, fragment", [
    (["--max-batch", "6"], "power of 2"),
    (["--modes", "quick,fast"], "--modes fast"),
    (["--arch", "large"], "needs --weights"),
    (["--weights", "no/such.pth"], "no such file"),
    (["--analyzer-venv", "no/such/venv"], "make analyzer-venv"),
    (["-c", "4:2"], "START[:END[:STEP]]"),
])
def test_bad_input_exits_2_with_one_line(flags, fragment, tmp_path):
    proc = run_cli(SCRIPT, "--p99-ms", "100", "-o", tmp_path / "out", *flags, timeout=120)
    assert proc.returncode == 2
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "out").exists()


def test_a_used_output_directory_is_refused(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({}))
    proc = run_cli(SCRIPT, "--p99-ms", "100", "--modes", "kit", "-o", tmp_path, timeout=120)
    assert proc.returncode == 2
    assert_one_line_error(proc, "not empty")


def test_help_explains_it():
    proc = run_cli(SCRIPT, "--help", timeout=120)
    assert proc.returncode == 0
    for text in ("Model Analyzer", "mnv3-tune", "REPORT.md", "make analyzer-venv", "--remeasure"):
        assert text in proc.stdout


def test_a_winner_is_rendered_by_the_kit_from_the_config_its_tool_wrote(built_repo, tmp_path):
    from mnv3kit.validate import check_repository, parse_config

    (tmp_path / "config.pbtxt").write_text(CONFIG)
    run = ma.Run(1, "quick", serving=ma.serving_of(tmp_path / "config.pbtxt"))
    ma.render_winner(run, built_repo(), tmp_path / "out", ONNX, clients=8)
    assert check_repository(Path(run.repository)).ok
    rendered = parse_config(Path(run.repository) / ONNX.name / "config.pbtxt")
    assert ma.serving_of(Path(run.repository) / ONNX.name / "config.pbtxt") == run.serving
    assert rendered.backend == "python" and rendered.model_warmup  # the kit's own config, not Model Analyzer's copy


def test_the_report_flags_a_wrong_winner_and_gives_the_ratios():
    quick = ma.Run(1, "quick", 60.0, 6, 6, own={"config": "mobilenetv3_onnx_config_0", "concurrency": 2,
                                                "throughput": 300.0, "p99_ms": 20.0},
                   serving=ma.Serving("KIND_CPU", 1, 1, (), 100),
                   remeasured=[{"score": 200.0, "p99_ms": 9.0, "concurrency": 2, "error": ""},
                               {"score": 100.0, "p99_ms": 8.0, "concurrency": 1, "error": ""}],
                   soak={"ok": 10, "wrong": 1, "failed": 0, "rejected": 0, "error": "", "examples": ["batch 1: x"]})
    kit = ma.Run(1, "kit", 120.0, 12, 23, 4, own={"config": "onnx i1 b2 p1,2 d0", "concurrency": 2, "throughput": 400.0,
                                               "p99_ms": 10.0},
                 serving=ma.Serving("KIND_CPU", 1, 2, (1, 2), 0),
                 remeasured=[{"score": 300.0, "p99_ms": 9.5, "concurrency": 2, "error": ""}] * 2,
                 soak={"ok": 10, "wrong": 0, "failed": 0, "rejected": 0, "error": "", "examples": []})
    brute = ma.Run(1, "brute", 30.0, error="no config within the budget")
    runs = [quick, brute, kit]
    info = {"p99_ms": 100, "date": "d", "hardware": {"cpu": "cpu", "cores": 2, "gpus": [], "load_1min": 1.0},
            "load_end": 1.0, "versions": {"model_analyzer": "1.58.0", "perf_analyzer": "pa", "mnv3kit": "0"},
            "arch": "small", "model": ONNX.name, "weights": "w", "kit_repository": "k", "ma_repository": "m",
            "max_instances": 1, "max_batch": 2, "concurrency": "1:2", "levels": [1, 2], "modes": list(ma.MODES),
            "ma_yamls": ["ma-r1-quick.yaml"], "remeasure": 2, "soak_seconds": 5.0, "wall_s": 300.0,
            "kit_default_max_batch": 8, "kit_max_runs": 9, "ratios": ma.ratios(runs)}
    assert info["ratios"] == {"kit/quick": 2.0, "kit/brute": None}
    text = ma.render_report(info, runs)
    rows = {row[0]: row for row in markdown_table(text, "Tool / mode")}
    assert rows["Model Analyzer quick (round 1)"][3] == "100.0 (100.0–200.0) @ 8.0 ms (c1)"
    assert "**WRONG**" in rows["Model Analyzer quick (round 1)"][4]
    assert rows["Model Analyzer brute (round 1)"][1] == "none: no config within the budget"
    assert rows["mnv3-tune (round 1)"][4] == "0 / 0"
    assert rows["mnv3-tune (round 1)"][5] == "12 runs, 23 points (8 runs searching, 4 confirming)"
    assert "its search capped at 9 perf_analyzer runs (--max-runs)" in text
    assert "kit/quick: **2.00x**" in text and "batch 1: x" in text
