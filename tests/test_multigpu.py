"""tools/multi_gpu_run.sh and perf/multigpu_report.py around the GPU part: arguments and failure paths.

The measurement itself needs a machine with 2 GPUs (docs/scale-out.md); here only what must fail, fails cleanly.
"""

import os
import shutil
import subprocess

import pytest

from conftest import ROOT, assert_one_line_error, run_cli

SCRIPT = ROOT / "tools" / "multi_gpu_run.sh"


def run_script(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def results():
    return sorted((ROOT / "perf" / "results").glob("multigpu-*"))


@pytest.mark.parametrize("args, env, message", [
    (["--gpus", "2"], {}, "takes no arguments"),
    ([], {"INSTANCES": "0"}, "INSTANCES must be a positive integer"),
    ([], {"WINDOW_MS": "2s"}, "WINDOW_MS must be a positive integer"),
    ([], {"CONCURRENCY": "4,8"}, "CONCURRENCY must be START:END:STEP"),
])
def test_bad_settings_stop_before_anything_runs(args, env, message):
    before = results()
    assert_one_line_error(run_script(*args, **env), "multi_gpu_run.sh: error:", message)
    assert results() == before


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_a_machine_without_two_gpus_is_refused():
    before = results()
    proc = run_script()
    assert proc.returncode == 2
    assert_one_line_error(proc, "needs a machine with 2 NVIDIA GPUs")
    assert results() == before


def test_report_refuses_folders_without_the_one_gpu_reference(tmp_path):
    assert_one_line_error(run_cli("perf/multigpu_report.py"), "usage: multigpu_report.py RESULT_DIR")
    assert_one_line_error(run_cli("perf/multigpu_report.py", tmp_path / "nope"), "is not a directory")
    (tmp_path / "b-spanning").mkdir()
    assert_one_line_error(run_cli("perf/multigpu_report.py", tmp_path), "the one-GPU reference is missing")
    assert not (tmp_path / "REPORT.md").exists()
