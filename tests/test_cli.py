"""The installed commands and their flags: README's tables are what every `--help` says, scripts = entry points."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, assert_one_line_error, markdown_table, run_cli, start_serve_py

README = (ROOT / "README.md").read_text()
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
BIN = Path(sys.executable).parent

COMMANDS = {row[0].strip("`").split()[0]: row[1].strip("`") for row in markdown_table(README, "command")}
FLAGS = markdown_table(README, "flag")


def help_text(command: str) -> str:
    proc = subprocess.run([str(BIN / command), *(["run"] if command == "mnv3-perf" else []), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def script_help(script: str) -> str:
    if script.startswith("python -m "):
        cmd = [sys.executable, "-m", script.split()[-1]]
    else:
        cmd = ["bash", str(ROOT / script)] if script.endswith(".sh") else [sys.executable, str(ROOT / script)]
    proc = subprocess.run([*cmd, *(["run"] if script.endswith("perf") else []), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_entry_point_is_in_the_readme_table():
    assert sorted(COMMANDS) == sorted(SCRIPTS), "README's command table and pyproject's [project.scripts] differ"


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_script_in_the_checkout_is_the_entry_point(command):
    """Same --help, apart from the program name: the script delegates, it does not reimplement."""
    installed = help_text(command)
    script = COMMANDS[command]
    from_script = script_help(script)

    def normalize(text: str) -> str:  # argparse wraps the usage by the program name's length
        for prog in (script, Path(script).name, f"{command} run", command):
            text = text.replace(prog, "PROG")
        return re.sub(r"\s+", " ", text)

    assert normalize(from_script) == normalize(installed)


@pytest.mark.parametrize("row", FLAGS, ids=[row[0] for row in FLAGS])
def test_shared_flag_means_the_same_everywhere(row):
    """Each command the table names has the flag, with both spellings and the same metavar kind."""
    spec, _, commands = row
    options = re.findall(r"(--?[a-z][a-z-]*)", spec.strip("`"))
    for short in (c.strip() for c in commands.split(",")):
        text = help_text(f"mnv3-{short}")
        lines = [line for line in text.splitlines() if re.search(rf"(^|\s){re.escape(options[-1])}\b", line)]
        assert lines, f"mnv3-{short} --help lacks {options[-1]}"
        assert all(re.search(rf"(^|\s){re.escape(opt)}\b", lines[0]) for opt in options), \
            f"mnv3-{short}: {lines[0].strip()!r} is not {spec}"


def test_no_command_offers_a_deprecated_name():
    for command in SCRIPTS:
        assert not re.search(r"(^|\s)--out\b", help_text(command)), f"{command} --help lists --out"


def test_old_flag_name_still_works_with_a_warning(capsys):
    from mnv3kit.cli.bench import parse_args

    args = parse_args(["--out", "somewhere"])
    assert args.output == Path("somewhere")
    err = capsys.readouterr().err
    assert "--out is deprecated" in err and "use --output" in err


def test_model_keys_and_names_are_one_vocabulary():
    from mnv3kit.cli import model_names
    from mnv3kit.spec import ENSEMBLE, ONNX, PT, U8

    assert model_names("pt,mobilenetv3_onnx,u8,image,pt") == [PT.name, ONNX.name, U8.name, ENSEMBLE]


def test_build_flags_table_names_real_options():
    """Every flag docs/build.md's table documents is one mnv3-build offers (a renamed flag fails here)."""
    offered = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", help_text("mnv3-build")))
    build_page = (ROOT / "docs" / "build.md").read_text()
    section = build_page[build_page.index("### Flags\n"):]
    documented = {flag for row in markdown_table(section, "flag") for flag in re.findall(r"`(--?[a-z][a-z0-9-]*)", row[0])}
    documented |= {flag for row in markdown_table(section, "flag")
                   for flag in re.findall(r"(?<=[ ,`])(--[a-z][a-z0-9-]*)", row[0])}
    assert documented and documented <= offered, documented - offered


def test_train_hint_builds_what_serve_py_serves(tmp_path, photos):
    """The closing hint's first command builds a repository the embedded Triton serves, on a machine without a GPU."""
    from mnv3kit.server import Ports
    from test_train import make_image_folder

    data = make_image_folder(tmp_path / "data", photos, 2, 1)
    proc = run_cli("train.py", "--data", data, "--arch", "small", "--epochs", 1, "--batch-size", 2, "--workers", 0,
                   "-o", tmp_path / "weights")
    assert proc.returncode == 0, proc.stderr
    local, gpu = (line for line in proc.stdout.splitlines() if line.startswith("deploy "))
    build_cmd, serve_cmd = local.split(": ", 1)[1].split(" && ")
    assert gpu.split(": ", 1)[1].startswith("python build_repo.py --arch small --weights ")
    build_args = build_cmd.split()
    assert build_args[:2] == ["python", "build_repo.py"]
    built = run_cli("build_repo.py", *build_args[2:], cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    serve_args = serve_cmd.split()
    assert serve_args[:2] == ["python", "serve.py"] and serve_args[2] == "--repo"
    server = start_serve_py(tmp_path / serve_args[3], Ports.free())  # ready, or the test fails with its stderr
    server.terminate()
    assert server.wait(timeout=60) == 0


def test_bench_says_why_the_image_models_are_not_timed(tmp_path):
    from mnv3kit.bench import discover
    from mnv3kit.build import BuildOptions, build
    from mnv3kit.render import ConfigOptions, Instances
    from mnv3kit.spec import ENSEMBLE, PREPROCESS

    repo = build(BuildOptions(arch="small", output=tmp_path / "repo", models=("pt",), ensemble="pt",
                              config=ConfigOptions(target="local", instances=Instances("KIND_CPU"))))
    _, artifacts, skipped = discover(repo)
    assert [a.model for a in artifacts] == ["mobilenetv3_pt"]
    assert skipped == [f"{ENSEMBLE}: an ensemble without a classifier artifact, not timed in-process "
                       f"(perf/bench_image.py measures the image path)",
                       f"{PREPROCESS}: a python backend model without a classifier artifact, not timed in-process "
                       f"(perf/bench_image.py measures the image path)"]


def test_deploy_counts_one_manifest_in_the_singular(built_repo, tmp_path):
    from mnv3kit.deploy import helm_binary
    from mnv3kit.errors import KitError

    try:
        helm_binary()
    except KitError:
        pytest.skip("helm missing: `make venv` installs it (scripts/install_helm.sh)")
    proc = run_cli("deploy.py", "--repo", built_repo("small", "ngc", ("pt", "onnx")), "--kserve",
                   "--set", "triton.restrictedApi.existingSecret=triton-key", "-o", tmp_path / "isvc.yaml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("1 manifest (1 InferenceService) valid for Kubernetes"), proc.stderr


def test_a_missing_package_is_one_line_naming_it():
    code = ("from mnv3kit.errors import cli_errors\n"
            "with cli_errors('mnv3-build'):\n"
            "    import mnv3kit_absent_dependency_for_this_test\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert_one_line_error(proc, "'mnv3kit_absent_dependency_for_this_test'", "make venv")


def test_a_broken_installed_package_keeps_its_traceback():
    """A submodule missing from an installed package is not "not installed": the traceback says where."""
    code = ("from mnv3kit.errors import cli_errors\n"
            "with cli_errors('mnv3-build'):\n"
            "    import numpy.mnv3kit_absent_submodule_for_this_test\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "not installed" not in proc.stderr
