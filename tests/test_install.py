"""`pip install .` into a fresh virtualenv gives working commands, run from outside the checkout.

The fresh venv sees the kit's own .venv site-packages through a .pth line, so that pip finds the dependencies
installed (it would otherwise download torch, Triton and DALI again: gigabytes); what pip builds and installs is the
package itself, from a copy of pyproject.toml, README.md and mnv3kit/ only.
"""

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from conftest import ROOT

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def run(*cmd, cwd, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


def test_pip_install_in_a_fresh_venv(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "mnv3kit", src / "mnv3kit", ignore=shutil.ignore_patterns("__pycache__"))

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
                .stdout.strip())
    (site / "kit-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    install = run(python, "-m", "pip", "install", "--no-build-isolation", "--no-input", src, cwd=tmp_path)
    assert "Downloading" not in install.stdout, install.stdout  # every dependency was found installed

    work = tmp_path / "work"  # not the checkout: nothing can come from its files
    work.mkdir()
    where = run(python, "-c", "import mnv3kit; print(mnv3kit.__file__)", cwd=work).stdout.strip()
    assert where.startswith(str(site)), where
    for command in SCRIPTS:
        args = ["run", "--help"] if command == "mnv3-perf" else ["--help"]
        assert "usage: " + command in run(venv / "bin" / command, *args, cwd=work).stdout

    # templates are package data: a real build renders every config from the installed package
    built = run(venv / "bin" / "mnv3-build", "--target", "local", "--arch", "small", "-m", "onnx", "-o", "repo",
                cwd=work)
    assert "wrote repo" in built.stdout + built.stderr
    assert (work / "repo" / "mobilenetv3_onnx" / "config.pbtxt").is_file()
    assert "repo: OK (mobilenetv3_onnx)" in run(venv / "bin" / "mnv3-build", "--check", "repo", cwd=work).stdout
