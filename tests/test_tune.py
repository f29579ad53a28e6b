"""The tuner end to end: a small real search (Small, ONNX Runtime, two candidates, short count windows) in the embedded
Triton with perf_analyzer; the winner is a valid repository that loads in a real Triton. Correctness only."""

import json
import re
import statistics
import subprocess
import sys

import torch

import matplotlib.image
import pytest

from conftest import ROOT, assert_one_line_error
from mnv3kit.backend.classifier_model import physical_cores
from mnv3kit.render import Batching
from mnv3kit.server import LocalTriton, Ports
from mnv3kit.spec import ONNX
from mnv3kit.tune import REPEATS, Candidate, needed_gain
from mnv3kit.validate import check_repository, parse_config


def tune(*args):
    return subprocess.run([sys.executable, "-m", "mnv3kit.cli.tune", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def search(built_repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    ports = Ports.free()
    # the kit's default (max batch 8, preferred 4,8) and one refinement: max batch 4, preferred 2,4
    proc = tune("--repo", built_repo("small", "local"), "--p99-ms", 10000, "-m", "onnx", "-c", "1:2",
                "--instances", 1, "--max-batch-sizes", 4, "--queue-delays-us", Batching().queue_delay_us,
                "--preferred", "both", "--count", 5, "--stability", 1000, "--budget-min", 5, "--confirm", 1, "-o", out,
                "--http-port", ports.http, "--grpc-port", ports.grpc, "--metrics-port", ports.metrics)
    return proc, out, ports


def test_the_server_listens_on_the_ports_given(search):
    proc, out, ports = search
    assert proc.returncode == 0, proc.stderr
    log = (out / "tritonserver.log").read_text()
    for service, port in (("HTTPService", ports.http), ("GRPCInferenceService", ports.grpc),
                          ("Metrics Service", ports.metrics)):
        assert re.search(rf"Started {service} at [0-9.]+:{port}\b", log), (service, port)


def test_search_measures_two_candidates_and_writes_a_loadable_winner(search):
    proc, out, _ = search
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "tune.json").read_text())
    labels = [c["label"] for c in result["candidates"]]
    assert labels == ["onnx i1 b8 p4,8 d100", "onnx i1 b4 p2,4 d100"], labels
    assert [c["stage"] for c in result["candidates"]] == ["default", "refine"]
    for c in result["candidates"]:
        assert not c["error"], c
        assert [r["concurrency"] for r in c["rows"]] == [1, 2]
        assert all(r["throughput"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] for r in c["rows"]), c
        # a near-tie is measured again: every run's score is kept, the median decides and is the one shown
        assert 1 <= len(c["scores"]) <= 1 + REPEATS and c["score"] == statistics.median_low(c["scores"]), c
        assert c["best"]["throughput"] == c["score"], c
    assert result["measured"] == 2 and result["grid"] == 2 and result["points"] == 4
    # the refinement (max batch 4: the cheaper) replaces the default when its median ties or beats the default's
    winner = result["winner"]
    default, refined = result["candidates"]
    need = needed_gain(*(Candidate(**{**c["candidate"], "preferred": tuple(c["candidate"]["preferred"])})
                         for c in (refined, default)))
    assert need == 1.0
    assert winner["label"] == labels[1 if refined["score"] >= need * default["score"] else 0], (default, refined)
    # a winner other than the default is measured again beside it (--confirm 1)
    confirmed = result["confirmed"]
    assert (confirmed is None) == (winner["label"] == labels[0]), confirmed
    assert result["repeats"] == sum(len(c["scores"]) - 1 for c in result["candidates"])
    assert result["runs"] == 2 + result["repeats"] + (2 if confirmed else 0)
    assert result["search_runs"] == 2 + result["repeats"] and result["max_runs"] == 0
    assert confirmed is None or (len(confirmed["winner"]) == len(confirmed["default"]) == 1)
    winning = next(c for c in result["candidates"] if c["label"] == winner["label"])
    assert result["spread"]["winner"] == winning["scores"] + (confirmed["winner"] if confirmed else [])

    repo = out / "model_repository"
    report = check_repository(repo)
    assert report.ok, report.problems
    assert report.models == [ONNX.name]
    config = parse_config(repo / ONNX.name / "config.pbtxt")
    expected = next(c["candidate"] for c in result["candidates"] if c["label"] == winner["label"])
    assert config.max_batch_size == expected["max_batch"]
    assert list(config.dynamic_batching.preferred_batch_size) == expected["preferred"]
    assert config.instance_group[0].count == 1
    manifest = json.loads((repo / "manifest.json").read_text())
    assert manifest["tuned"]["candidate"] == expected and manifest["models"] == [ONNX.name]
    with LocalTriton(repo, Ports.free()) as triton:
        assert triton.ready_models() == [ONNX.name]

    text = (out / "report.md").read_text()
    assert proc.stdout.strip() == text.strip()
    assert "2 candidates (4 perf_analyzer points) of a full grid of 2 candidates (4 points)" in text
    assert ("Measured again, alternately, 1 times each" in text) == bool(confirmed)
    assert (f"{result['runs']} perf_analyzer runs in all: {result['search_runs']} of the search "
            f"({result['repeats']} repeats of near-ties included)") in text
    assert "- Every run (search and confirmation; infer/s within the budget): winner " in text
    assert f"`{winner['label']}`" in text and "winner / default" in text
    rows = [line for line in text.splitlines() if line.startswith("| `onnx")]
    assert len(rows) == 2
    height, width, _ = matplotlib.image.imread(out / "pareto.png").shape
    assert height > 100 and width > 100


def test_bad_input_is_one_line_error(tmp_path, built_repo):
    assert_one_line_error(tune("--repo", tmp_path, "--p99-ms", 50, "-o", tmp_path / "out"), "manifest.json")
    assert not (tmp_path / "out").exists()
    assert_one_line_error(tune("--repo", built_repo("small", "local"), "--p99-ms", 50, "-m", "trt"),
                          "the tuner tries pt, u8, onnx, ov, ov_u8")
    assert_one_line_error(tune("--arch", "small", "--p99-ms", 0), "--p99-ms and --budget-min must be > 0")
    repo = built_repo("small", "local")
    assert_one_line_error(tune("--repo", repo, "--repo", repo, "--p99-ms", 50),
                          "one repository, or two built with different --runtime")
    assert_one_line_error(tune("--repo", repo, "--p99-ms", 50, "--torch-runtimes", "compiled"),
                          "--torch-runtimes goes with --arch")
    if not torch.cuda.is_available():
        for flags in (["--torch-runtimes", "torchscript,compiled"], ["--cuda-graphs", "none,all"]):
            out = tmp_path / "gpu-only"
            assert_one_line_error(tune("--arch", "small", "--p99-ms", 50, "-o", out, *flags),
                                  "--torch-runtimes compiled and --cuda-graphs other than none need a CUDA GPU")
            assert not out.exists()


def tune_runs(*args):
    return subprocess.run([sys.executable, str(ROOT / "perf" / "tune_runs.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def test_tune_runs_repeats_the_search_and_soaks_each_winner(tmp_path, built_repo):
    """perf/tune_runs.py: two separate searches (the kit's default and two instances), each winner served and soaked
    with every answer checked, one report row per run; its own and the tuner's bad flags: one line. The second
    instance count is loaded anew, so that both instances share the cores (Triton's in-place update of
    instance_group would hand the added instance the first config)."""
    repo, out = built_repo("small", "local"), tmp_path / "runs"
    flags = ["--repo", repo, "--p99-ms", 10000, "-m", "onnx", "-c", "1:2", "--instances", "1,2", "--max-batch-sizes", 8,
             "--queue-delays-us", Batching().queue_delay_us, "--preferred", "both", "--count", 5, "--stability", 1000,
             "--confirm", 1]
    proc = tune_runs("--runs", 2, "--soak-levels", "1,2", "--soak-seconds", 1, "-o", out, "--", *flags)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    rows = json.loads((out / "runs.json").read_text())
    assert [r["run"] for r in rows] == [1, 2]
    for r in rows:
        assert r["default"] == "onnx i1 b8 p4,8 d100" and r["winner"] in (r["default"], "onnx i2 b8 p4,8 d100"), r
        log = (out / f"run{r['run']}" / "tritonserver.log").read_text()
        for instance in (0, 1):
            assert f"{ONNX.name}_0_{instance}: CPU threads {max(1, physical_cores() // 2)}\"" in log, log[-3000:]
        assert r["search"][0] > 0 and r["soak"]["ok"] > 0 and r["soak"]["wrong"] == r["soak"]["failed"] == 0, r
        assert (out / f"run{r['run']}" / "report.md").is_file() and (out / f"run{r['run']}" / "tune.log").is_file()
        assert not (out / f"run{r['run']}" / "csv").exists()
    text = (out / "REPORT.md").read_text()
    assert len([line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]) == 2
    assert " / 0 / 0 |" in text
    assert_one_line_error(tune_runs("-o", tmp_path / "a", "--", "--p99-ms", 50), "with --repo REPO or --arch")
    assert_one_line_error(tune_runs("-o", out, "--", *flags), "is not empty")
    assert_one_line_error(tune_runs("-o", tmp_path / "b", "--", "--repo", repo, "--p99-ms", 50, "--winner", tmp_path),
                          "-o and --winner are set per run here")
    assert_one_line_error(tune_runs("-o", tmp_path / "c", "--", "--repo", repo, "--p99-ms", 0),
                          "--p99-ms and --budget-min must be > 0")
