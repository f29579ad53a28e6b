"""Performance measurement: perf/run_perf.sh drives the real perf_analyzer against the real embedded Triton;
perf/bench_engine.py times the artifacts of a freshly built repository in-process. Correctness only, never wall time."""

import csv
import json
import os
import re
import subprocess
import sys

import matplotlib.image
import pytest
import torch

from conftest import ROOT, assert_one_line_error, markdown_table, run_cli
from mnv3kit.server import LocalTriton, Ports, free_ports
from mnv3kit.spec import ADMIN_KEY_ENV, LOCAL_MODELS, ONNX, PT, TRT

BATCHES = (1, 8)


def run_perf(*args, env=None):
    return subprocess.run(["bash", str(ROOT / "perf" / "run_perf.sh"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def table_rows(markdown, first_header):
    """{first cell: other cells} (first cells unique, as Model/Batch_Size)."""
    return {cells[0]: cells[1:] for cells in markdown_table(markdown, first_header)}


@pytest.fixture(scope="module")
def server(built_repo):
    with LocalTriton(built_repo("small", "local"), Ports.free()) as triton:
        yield triton


@pytest.fixture(scope="module")
def quick_run(server, tmp_path_factory):
    out = tmp_path_factory.mktemp("served")
    proc = run_perf("--quick", "-u", server.http_url, "-b", ",".join(map(str, BATCHES)), "-o", out,
                    env={ADMIN_KEY_ENV: server.admin_key})
    return proc, out


def test_quick_run_measures_every_model_and_batch(server, quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr
    for spec in LOCAL_MODELS:
        for batch in BATCHES:
            with open(out / "csv" / f"{spec.name}_b{batch}.csv", newline="") as f:
                (row,) = list(csv.DictReader(f))  # concurrency 1 only
            for column in ("Inferences/Second", "Avg latency", "p50 latency", "p90 latency", "p95 latency",
                           "p99 latency", "Server Compute Infer"):
                assert float(row[column]) > 0, (spec.name, batch, column, row)

    report = (out / "report.md").read_text()
    assert proc.stdout.strip() == report.strip()  # the report is also printed
    assert server.admin_key not in report + (out / "run.json").read_text()
    assert "Triton 2.51.0" in report and "max_batch_size 8" in report and "dynamic batching" in report
    assert re.search(r"Hardware .*: .+, \d+ cores; GPU: ", report)
    served = table_rows(report, "Model/Batch_Size")
    # the seed's layout: one row per model x batch, models interleaved within each batch size
    assert list(served) == [f"{spec.key}/{b}" for b in BATCHES for spec in LOCAL_MODELS]
    for label, cells in served.items():
        assert cells[0] == "1", label  # concurrency
        throughput, avg, p50, p90, p95, p99 = map(float, [cells[1], *cells[3:8]])
        assert throughput > 0 and avg > 0 and 0 < p50 <= p90 <= p95 <= p99, (label, cells)
        assert cells[2] == f"{3 * 224 * 224 * 4:,}", (label, cells)  # bytes sent per image: the FP32 tensor
    breakdown = table_rows(report.split("## Where the time goes")[1], "Model/Batch_Size")
    assert list(breakdown) == list(served)
    assert all(float(cells[5]) > 0 for cells in breakdown.values())  # server compute infer
    assert "Failed points" not in report

    with open(out / "results.csv", newline="") as f:
        results = list(csv.DictReader(f))
    assert {(r["model"], int(r["batch"])) for r in results} == {(s.name, b) for s in LOCAL_MODELS for b in BATCHES}
    png = out / "throughput_vs_p99.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert height > 100 and width > 100


def unstable_perf_analyzer(tmp_path, batch):
    """The real perf_analyzer, limited to one measurement window for ``batch``: that point cannot be stable."""
    from mnv3kit.perf import find_perf_analyzer

    wrapper = tmp_path / "perf_analyzer"
    real = find_perf_analyzer()
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" -b {batch} "*) exec {real} "$@" --max-trials 1 ;; esac\n'
                       f'exec {real} "$@"\n')
    wrapper.chmod(0o755)
    return {"PERF_ANALYZER": str(wrapper)}


def test_grpc_shared_memory_and_a_failed_point_keeps_the_others(server, tmp_path):
    proc = run_perf("--quick", "-i", "grpc", "-u", server.grpc_url, "--shared-memory", "system",
                    "-m", ONNX.name, "-b", "2,4", "-o", tmp_path / "out",
                    env={**unstable_perf_analyzer(tmp_path, 4), ADMIN_KEY_ENV: server.admin_key})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "over GRPC" in report and "--shared-memory system" in report
    served = table_rows(report, "Model/Batch_Size")
    assert list(served) == [f"{ONNX.key}/2"] and float(served[f"{ONNX.key}/2"][1]) > 0
    failed = report.split("## Failed points")[1]
    assert f"`{ONNX.name}` batch 4" in failed and "Failed to obtain stable measurement" in failed
    assert (tmp_path / "out" / "throughput_vs_p99.png").is_file()


def test_a_point_past_its_timeout_is_killed_and_the_others_kept(server, tmp_path):
    """The real perf_analyzer; for batch 2 it runs as a child of a shell and waits for 10**6 requests per window: its
    process group is killed at --point-timeout, the point is listed as failed, batch 1 is measured."""
    from mnv3kit.perf import find_perf_analyzer

    marker = "987654321"  # the slow point's request count: finds a perf_analyzer that outlived the kill
    wrapper = tmp_path / "perf_analyzer"
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" -b 2 "*) {find_perf_analyzer()} "$@" '
                       f'--measurement-request-count {marker}; exit $? ;; esac\nexec {find_perf_analyzer()} "$@"\n')
    wrapper.chmod(0o755)
    proc = run_perf("--quick", "-u", server.http_url, "-m", "onnx", "-b", "1,2", "--point-timeout", "30",
                    "-o", tmp_path / "out", env={"PERF_ANALYZER": str(wrapper), ADMIN_KEY_ENV: server.admin_key})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "mobilenetv3_onnx batch 2 ... FAILED: timed out after 30 s" in proc.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert list(table_rows(report, "Model/Batch_Size")) == [f"{ONNX.key}/1"]
    assert f"`{ONNX.name}` batch 2: timed out after 30 s" in report.split("## Failed points")[1]
    survivors = [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)]
    assert not survivors


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def test_batch_above_max_batch_size_is_refused_up_front(server, tmp_path):
    proc = run_perf("--quick", "-u", server.http_url, "-b", "1,16", "-o", tmp_path / "out",
                    env={ADMIN_KEY_ENV: server.admin_key})
    assert proc.returncode == 2
    assert_one_line_error(proc, "--batch-sizes 1,16: batch 16 is above max_batch_size", f"{PT.name} (8)")
    assert not (tmp_path / "out").exists()


def test_plot_labels_do_not_overlap_and_failed_points_are_marked():
    """A real run's numbers (perf/results), with onnx batch 7 moved next to batch 6 as a busier run had them: every
    label's box is free of the others; the points that were not measured are named on the plot."""
    from mnv3kit.perf import figure

    with open(ROOT / "perf" / "results" / "cpu-20261126-large" / "served" / "results.csv", newline="") as f:
        rows = [{**r, "batch": int(r["batch"]), "concurrency": int(r["concurrency"]),
                 "throughput": float(r["throughput"]), "p99_ms": float(r["p99_ms"])} for r in csv.DictReader(f)]
    b6, b7 = (next(r for r in rows if (r["model"], r["batch"]) == (ONNX.name, b)) for b in (6, 7))
    b7.update(p99_ms=b6["p99_ms"] + 1.5, throughput=b6["throughput"] + 1.0)
    failed = [(PT.name, 3), (ONNX.name, 5)]
    fig = figure([r for r in rows if (r["model"], r["batch"]) not in failed], "title", failed)
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if re.fullmatch(r"b\d+", t.get_text())]
    assert len(labels) == len(rows) - 2
    boxes = [t.get_window_extent(renderer) for t in labels]
    overlapping = [(a.get_text(), b.get_text()) for i, (a, box) in enumerate(zip(labels, boxes))
                   for b, other in zip(labels[i + 1:], boxes[i + 1:]) if box.overlaps(other)]
    assert not overlapping
    (marked,) = [t.get_text() for t in ax.texts if t.get_text().startswith("not measured")]
    assert "pt b3" in marked and "onnx b5" in marked


def test_demo_classifies_held_out_digits_and_survives_an_unstable_perf_point(tmp_path):
    """`make demo`'s script end to end (free ports): the shipped digits model, served, answers the held-out digits
    with at least 90% accuracy, true labels beside the answers; one perf point cannot be stable: the demo reports
    it and exits 0, while run_perf.sh itself keeps exit 1 for it (test above); the tables stay in the report."""
    port, = free_ports(1)
    env = {**os.environ, **unstable_perf_analyzer(tmp_path, 3), "REPO": str(tmp_path / "repo"),
           "PERF_OUT": str(tmp_path / "perf"), "PORT_BASE": str(port)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    answers = re.findall(r"^\S+/test/(\d)/\d{4}\.png: (\d) [01]\.\d{3} \(true: (\d)\)", out, re.M)
    assert len(answers) == 10 and all(folder == true for folder, _, true in answers), out
    right, total = map(int, re.search(r"^held-out accuracy [\d.]+ \((\d+)/(\d+) images", out, re.M).groups())
    assert total == len(list((tmp_path / "perf" / "digits" / "test").rglob("*.png"))) > 300
    assert right / total >= 0.9, out
    grpc = re.findall(r"^\S+/test/(\d)/\d{4}\.png: (\d) [01]\.\d{3}, \d [01]\.\d{3}$", out, re.M)
    assert [folder for folder, _ in grpc] == ["1", "4", "7", "9"], out
    assert f"localhost:{port}" in out and "MEANINGLESS" not in out + proc.stderr
    assert "some quick perf points could not be measured" in out
    report = (tmp_path / "perf" / "report.md").read_text()
    assert "batch 3: Failed to obtain stable measurement" in report.split("## Failed points")[1]
    assert table_rows(report, "Model/Batch_Size")["pt/8"]
    assert "| Model/Batch_Size" not in out  # the tables are in the report, not on the terminal
    summary = out.split("== done")[1]
    assert f"{tmp_path / 'perf' / 'report.md'}" in summary and f"serve.py --repo {tmp_path / 'repo'}" in summary
    for step in ("held-out accuracy", "your weights", "python train.py", "a GPU box", "docker compose up triton",
                 "Kubernetes", "python deploy.py"):
        assert step in summary, step


def test_dead_server_is_one_line_error(tmp_path):
    port, = free_ports(1)  # nothing listens there
    proc = run_perf("--quick", "-u", f"localhost:{port}", "-o", tmp_path / "out")
    assert proc.returncode == 2
    assert_one_line_error(proc, "run_perf.sh: error: no Triton server answers", f"localhost:{port}")
    assert not (tmp_path / "out").exists()


def test_model_not_ready_is_one_line_error(server, tmp_path):
    proc = run_perf("-u", server.http_url, "-m", f"{PT.name},{TRT.name}", "-o", tmp_path,
                    env={ADMIN_KEY_ENV: server.admin_key})
    assert proc.returncode == 2
    assert_one_line_error(proc, "not ready", TRT.name)


def test_restricted_index_without_the_key_is_one_line_error(server, tmp_path):
    proc = run_perf("--quick", "-u", server.http_url, "-o", tmp_path, env={ADMIN_KEY_ENV: ""})
    assert proc.returncode == 2
    line = assert_one_line_error(proc, "restricted", ADMIN_KEY_ENV)
    assert "-m" not in line  # naming the models only leads to the statistics API's refusal


def test_the_printed_perf_analyzer_line_runs(server, tmp_path):
    """`mnv3-perf command` prints a line that works as pasted: perf_analyzer's library path, the admin header for
    gRPC read from the environment (the key itself not printed), and zeros instead of its NaN-bearing random data."""
    env = {**os.environ, ADMIN_KEY_ENV: server.admin_key}
    proc = subprocess.run([sys.executable, "-m", "mnv3kit.cli.perf", "command", "-m", "pt", "-u", server.grpc_url, "-i",
                           "grpc"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert server.admin_key not in line and "--input-data zero" in line and "triton-grpc-protocol-admin-key" in line
    run = subprocess.run(["bash", "-c", f"{line} --concurrency-range 1 --measurement-mode count_windows "
                                        f"--measurement-request-count 20 --stability-percentage 1000"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and "Concurrency: 1, throughput" in run.stdout, run.stdout[-2000:] + run.stderr


def test_restricted_statistics_without_the_key_is_one_line_error(server, tmp_path):
    """Named models skip the index, but perf_analyzer still needs the statistics API: refused before any point."""
    proc = run_perf("-m", PT.name, "-b", "1", "--metrics", "127.0.0.1:1/metrics", "-u", server.grpc_url, "-i", "grpc",
                    "-o", tmp_path, env={ADMIN_KEY_ENV: ""})
    assert proc.returncode == 2
    assert_one_line_error(proc, "statistics", ADMIN_KEY_ENV)


def test_perf_analyzer_that_cannot_start_is_one_line_error(tmp_path):
    proc = run_perf("--quick", "-o", tmp_path, env={"PERF_ANALYZER": "/bin/false"})
    assert proc.returncode == 2
    assert_one_line_error(proc, "does not start", "make venv")


def test_help_and_bad_flags():
    proc = run_perf("--help")
    assert proc.returncode == 0
    for flag in ("--models", "--url", "--protocol", "--batch-sizes", "--concurrency", "--shared-memory", "--window",
                 "--count", "--output", "--point-timeout", "--quick", "--compare", "Exit status"):
        assert flag in proc.stdout, flag
    assert_one_line_error(run_perf("--protocol", "ftp"), "run_perf.sh: error: argument -i/--protocol: invalid choice")
    assert_one_line_error(run_perf("-c", "4:2"), "--concurrency: must be START[:END[:STEP]]")


@pytest.fixture(scope="module")
def small_ngc_repo(tmp_path_factory):
    """Freshly built, --target ngc (all three configs; no TensorRT here, so no plan), max_batch_size 2."""
    out = tmp_path_factory.mktemp("bench") / "model_repository"
    proc = run_cli("build_repo.py", "--target", "ngc", "--arch", "small", "--max-batch-size", "2", "--opt-batch", "1",
                   "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_bench_engine_times_every_artifact_and_batch(small_ngc_repo, tmp_path):
    proc = run_cli("perf/bench_engine.py", "--repo", small_ngc_repo, "--quick", "-o", tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "engine_latency.json").read_text())
    # batch sizes default to 1..max_batch_size read from the configs
    assert [(r["model"], r["batch"]) for r in result["rows"]] == [(PT.name, 1), (PT.name, 2), (ONNX.name, 1),
                                                                   (ONNX.name, 2)]
    for r in result["rows"]:
        assert r["device"] == "cpu" and r["iters"] >= 5
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"], r
        assert r["min_ms"] <= r["mean_ms"] <= r["max_ms"] and r["p99_ms"] <= r["max_ms"] and r["throughput"] > 0
    assert any(TRT.name in why and "not built" in why for why in result["skipped"])

    markdown = (tmp_path / "engine_latency.md").read_text()
    assert markdown.strip() in proc.stdout
    rows = {(cells[0], int(cells[3])): cells for cells in markdown_table(markdown, "Artifact")}
    assert set(rows) == {(PT.key, 1), (PT.key, 2), (ONNX.key, 1), (ONNX.key, 2)}
    for cells in rows.values():
        low, high, mean, median, p99, throughput = map(float, cells[4:10])
        assert cells[2] == "cpu" and 0 < low <= median <= high and throughput > 0, cells
    assert TRT.name in markdown.split("Not measured:")[1]


def test_served_report_compares_with_in_process(quick_run, small_ngc_repo, built_repo, tmp_path):
    _, out = quick_run
    bench = run_cli("perf/bench_engine.py", "--repo", built_repo("small", "local"), "--quick",
                    "-b", ",".join(map(str, BATCHES)), "-o", tmp_path)
    assert bench.returncode == 0, bench.stderr
    proc = subprocess.run([sys.executable, "-m", "mnv3kit.cli.perf", "report", str(out), "--compare",
                           str(tmp_path / "engine_latency.json")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    served = table_rows((out / "report.md").read_text(), "Model/Batch_Size")
    for label, cells in served.items():
        in_process, ratio = cells[-2], cells[-1]
        assert float(in_process.split()[0]) > 0 and float(ratio) > 0, (label, cells)


def test_regression_benchmark_runs_both_servers_and_checks_every_answer(built_repo, tmp_path):
    """perf/regression.py, one short round on Small ONNX: the kit's server and PyTriton side by side on the server's
    CPU, the client on another, every answer checked, and the report's two tables."""
    out = tmp_path / "regression"
    split = ["--server-cpus", "0", "--client-cpus", "1"] if {0, 1} <= os.sched_getaffinity(0) else []
    proc = run_cli("perf/regression.py", "--repo", built_repo("small", "local"), "-o", out, "-m", ONNX.name,
                   "--rounds", "1", "--seconds", "1", "-c", "1", *split)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = json.loads((out / "regression.json").read_text())
    assert sorted(p["server"] for p in result["points"]) == ["kit", "pytriton"]
    assert all(p["ok"] > 0 and p["wrong"] == 0 and p["failed"] == 0 for p in result["points"]), result["points"]
    assert set(result["perf_analyzer_c1"]) == {"kit", "pytriton"}
    report = (out / "REPORT.md").read_text()
    assert f"| {ONNX.name} | 1 |" in report and "kit / PyTriton at the in-process rate" in report
    if split:
        assert result["cpus"] == {"server": [0], "client": [1]} and "the client on CPUs 1" in report
    assert_one_line_error(run_cli("perf/regression.py", "--repo", built_repo("small", "local"), "-o", out, "-m",
                                  ONNX.name, "--server-cpus", "4096"), "are not among")


def test_request_floor_model_keeps_the_contract_and_bad_input_is_one_line(built_repo, tmp_path):
    """perf/request_floor.py's model: the classifier's input and output names and shapes, channel means times its
    matrix, run by the kit's ONNX runner; the script's bad input: one line each."""
    import importlib.util

    import numpy as np
    import onnx

    from mnv3kit.backend.classifier_model import OnnxRunner

    spec = importlib.util.spec_from_file_location("request_floor", ROOT / "perf" / "request_floor.py")
    sys.path.insert(0, str(ROOT / "perf"))  # it imports regression.py beside it, as a script does
    try:
        floor = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(floor)
    finally:
        sys.path.remove(str(ROOT / "perf"))
    path = tmp_path / "model.onnx"
    floor.floor_model(path, 5)
    weights = onnx.numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    x = np.random.default_rng(1).standard_normal((3, 3, 224, 224), dtype=np.float32)
    out = OnnxRunner(str(path), ONNX.input_name)(x)
    np.testing.assert_allclose(out, x.mean((2, 3)) @ weights, rtol=1e-5, atol=1e-5)
    assert_one_line_error(run_cli("perf/request_floor.py", "--repo", tmp_path / "nope", "-o", tmp_path / "out"),
                          "has no mobilenetv3_onnx")
    (tmp_path / "out" / "repo").mkdir(parents=True)
    assert_one_line_error(run_cli("perf/request_floor.py", "--repo", built_repo("small", "local"), "-o",
                                  tmp_path / "out"), "exists: give a new -o folder")
    assert_one_line_error(run_cli("perf/request_floor.py", "--rounds", "1"), "required: --repo, -o/--output")


def test_bench_engine_errors(built_repo, tmp_path):
    repo = built_repo("small", "local")
    assert_one_line_error(run_cli("perf/bench_engine.py", "--repo", tmp_path / "nope"), "no such model repository")
    assert_one_line_error(run_cli("perf/bench_engine.py", "--repo", repo, "-b", "1,9"),
                          "batch size 9 exceeds max_batch_size 8")
    if not torch.cuda.is_available():
        assert_one_line_error(run_cli("perf/bench_engine.py", "--repo", repo, "--device", "cuda"), "no CUDA device")
