"""`--check --format json|github` and the copyable CI job: ci/github/validate-model-repository.yml's `run:` lines and
the pre-commit hook (.pre-commit-hooks.yaml) run as written on a built repository and on a copy with one bad line."""

import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from conftest import ROOT, run_cli
from mnv3kit.spec import ONNX, PT
from mnv3kit.validate import Finding, Report, check_repository, github_annotations, records

WORKFLOW = ROOT / "ci" / "github" / "validate-model-repository.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
INSTALL_STEP = "Install the kit"  # needs the network; tests/test_install.py installs the package in a fresh venv


@pytest.fixture(scope="module")
def console_bin(tmp_path_factory):
    """mnv3-build as pip installs it (the [project.scripts] entry; build_repo.py's main where the checkout has no
    pyproject.toml), running this checkout's code."""
    pyproject = ROOT / "pyproject.toml"
    entry = (tomllib.loads(pyproject.read_text())["project"]["scripts"]["mnv3-build"] if pyproject.is_file()
             else "build_repo:main")
    module, func = entry.split(":")
    bindir = tmp_path_factory.mktemp("bin")
    script = bindir / "mnv3-build"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    script.chmod(0o755)
    return bindir


def _env(console_bin, extra=None):
    return {**os.environ, **(extra or {}), "PATH": f"{console_bin}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def checkouts(built_repo, tmp_path_factory):
    """Two working trees of a user's project: the built repository as is, and a copy with one config line broken.
    Returns (good, broken, broken file relative to the tree, the broken line's number)."""
    base = tmp_path_factory.mktemp("checkouts")
    good, broken = base / "good", base / "broken"
    for tree in (good, broken):
        shutil.copytree(built_repo("small", "local"), tree / "model_repository")
    rel = f"model_repository/{ONNX.name}/config.pbtxt"
    lines = (broken / rel).read_text().splitlines(keepends=True)
    number = next(i for i, line in enumerate(lines, 1) if line.strip() == "max_batch_size: 8")
    lines[number - 1] = "max_batch_size: eight\n"  # the protobuf parser stops here
    (broken / rel).write_text("".join(lines))
    return good, broken, rel, number


def _workflow_steps():
    job, = yaml.safe_load(WORKFLOW.read_text())["jobs"].values()
    return job, [step for step in job["steps"] if "run" in step]


def test_workflow_job_runs_as_written(checkouts, console_bin):
    good, broken, rel, number = checkouts
    job, steps = _workflow_steps()
    assert [s["name"] for s in steps if s["name"] != INSTALL_STEP] == ["Check the model repository"]
    assert any("$MNV3KIT" in s["run"] for s in steps if s["name"] == INSTALL_STEP)
    env = _env(console_bin, {k: str(v) for k, v in job["env"].items()})
    results = {}
    for tree in (good, broken):
        for step in (s for s in steps if s["name"] != INSTALL_STEP):
            results[tree] = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tree, env=env, capture_output=True,
                                           text=True, timeout=600)
    ok, bad = results[good], results[broken]
    assert ok.returncode == 0 and "::error" not in ok.stdout, ok.stdout + ok.stderr
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stdout + bad.stderr
    errors = [line for line in bad.stdout.splitlines() if line.startswith(f"::error file={rel},line={number}::")]
    assert len(errors) == 1, bad.stdout
    assert errors[0].endswith("::column 17: 'max_batch_size: eight': Couldn't parse integer: eight")
    # the edit also changed the file's hash: a second finding on that file, with no line to point at
    assert f"::error file={rel}::" in bad.stdout and "sha256 differs" in bad.stdout


def test_the_build_page_shows_the_workflow_as_it_is():
    assert WORKFLOW.read_text() in (ROOT / "docs" / "build.md").read_text()


def test_pre_commit_hook_runs_as_written(checkouts, console_bin):
    good, broken, _, _ = checkouts
    hook, = yaml.safe_load(HOOKS.read_text())
    assert hook["id"] == "mnv3-check-repository" and hook["language"] == "python" and hook["pass_filenames"] is False
    command = hook["entry"].split() + hook["args"]
    assert subprocess.run(command, cwd=good, env=_env(console_bin), capture_output=True, timeout=600).returncode == 0
    proc = subprocess.run(command, cwd=broken, env=_env(console_bin), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and f"{ONNX.name}/config.pbtxt" in proc.stderr, proc.stderr


def test_json_records_carry_file_and_line(checkouts, tmp_path):
    good, _, _, _ = checkouts
    proc = run_cli("build_repo.py", "--check", good / "model_repository", "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == [], proc.stdout + proc.stderr
    repo = tmp_path / "model_repository"
    shutil.copytree(good / "model_repository", repo)
    config = repo / PT.name / "config.pbtxt"
    text = config.read_text()
    config.write_text(text.replace('"INPUT__0"', '"input"'))  # still parses; the kit's tensor contract does not hold
    expected_line = text.splitlines().index('    name: "INPUT__0"') + 1
    (repo / ONNX.name / "labels.txt").write_text("one\n")
    proc = run_cli("build_repo.py", "--check", repo, "--format", "json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    records = json.loads(proc.stdout)
    assert all(set(r) == {"file", "line", "message", "severity"} for r in records)
    by_message = {r["message"].split(",")[0]: r for r in records}
    assert by_message["tensors 'input'->'OUTPUT__0'"] == {
        "file": str(config), "line": expected_line, "severity": "error",
        "message": "tensors 'input'->'OUTPUT__0', the kit's contract is 'INPUT__0'->'OUTPUT__0'"}
    labels = [r for r in records if r["file"] == str(repo / ONNX.name / "labels.txt")]
    assert [r["message"] for r in labels if "labels" in r["message"]] == ["1 labels, output has 5"]
    assert {r["severity"] for r in records} == {"error"}


def test_format_is_checked_and_text_stays_the_default(tmp_path):
    proc = run_cli("build_repo.py", "--check", tmp_path / "none", "--format", "xml")
    assert proc.returncode == 2 and "invalid choice: 'xml'" in proc.stderr
    proc = run_cli("build_repo.py", "--check", tmp_path / "none")
    assert proc.returncode == 1 and "problem: " in proc.stderr and "no such directory" in proc.stderr


def test_github_annotations_escape_what_workflow_commands_reserve(tmp_path):
    report = Report([Finding("a,b/config.pbtxt: 100% wrong\nsecond line", "a,b/config.pbtxt", 3),
                     Finding("x/1/model.plan: not built yet", "x/1/model.plan", severity="notice")])
    assert github_annotations(report, tmp_path / "r:1") == [
        f"::error file={tmp_path}/r%3A1/a%2Cb/config.pbtxt,line=3::100%25 wrong%0Asecond line",
        f"::notice file={tmp_path}/r%3A1/x/1/model.plan::not built yet"]


@pytest.mark.parametrize("old, new, fragment", [
    ("count: 1", "count: 0", "instance_group count 0"),
    ("max_batch_size: 8", "max_batch_size: 0", "max_batch_size must be >= 1"),
    ("dims: [ 3, 224, 224 ]", "dims: [ 3, 200, 224 ]", "input dims [3, 200, 224]"),
    ('label_filename: "labels.txt"', 'label_filename: "nope.txt"', "nope.txt: missing"),
    ("data_type: TYPE_FP32\n    dims: [ 5 ]", "data_type: TYPE_FP16\n    dims: [ 5 ]", "output TYPE_FP32"),
])
def test_a_finding_after_parsing_points_at_its_field(checkouts, tmp_path, old, new, fragment):
    """The line a semantic finding names is the edited one (found by its text, not by the check's own rule)."""
    repo = tmp_path / "model_repository"
    shutil.copytree(checkouts[0] / "model_repository", repo)
    config = repo / PT.name / "config.pbtxt"
    text = config.read_text()
    assert text.count(old) >= 1
    edited = text.replace(old, new, 1)
    config.write_text(edited)
    line = edited[:edited.index(new)].count("\n") + 1  # the first line of the edit
    found = [r for r in records(check_repository(repo, run_artifacts=False), repo) if fragment in r["message"]]
    assert [(r["file"], r["line"]) for r in found] == [(str(config), line)], found
