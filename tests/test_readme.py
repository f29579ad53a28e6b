"""README.md's shell blocks run in order, as written, on a scratch copy of the repository.

Every ```bash block runs (bash -euo pipefail, in the activated venv, from the copy's root) and must exit 0, unless
the line before it is an HTML comment the README shows nobody:
  <!-- readme-test: skip: REASON -->            not run here (Docker, a GPU, your dataset); the reason is required
  <!-- readme-test: background until "TEXT" --> a server: started, waited for until its output shows TEXT, and
                                                stopped after the last block
What the README assumes a user brings is put in place first: trained weights as train.py writes them (weights/),
photo.jpg and more_photos/.
"""

import os
import re
import shutil
import signal
import subprocess
import time

import torch

from conftest import ROOT
from mnv3kit.model import build_model
from mnv3kit.weights import write_class_indices

MARK = re.compile(r'<!-- readme-test: (?:skip: (?P<reason>\S.*?)|background until "(?P<until>[^"]+)") -->')
LABELS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]  # the original project's flowers, as class_indices.json
READY_TIMEOUT_S = 300


def shell_blocks(text):
    """(line number, marker match or None, code) of every ```bash block."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            end = lines.index("```", i + 1)
            before = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            blocks.append((i + 1, MARK.fullmatch(before.strip()), "\n".join(lines[i + 1:end])))
            i = end
        i += 1
    return blocks


def test_markers_are_well_formed():
    text = (ROOT / "README.md").read_text()
    blocks = shell_blocks(text)
    assert len(blocks) >= 8
    assert text.count("<!-- readme-test:") == sum(1 for _, mark, _ in blocks if mark), \
        "a readme-test comment that does not directly precede a ```bash block"
    run = [code for _, mark, code in blocks if not mark or mark["until"]]
    assert any("build_repo.py" in c for c in run) and any("run_perf.sh" in c for c in run)


def scratch_copy(dest):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    weights = dest / "weights"
    weights.mkdir()
    for arch in ("large", "small"):
        path = weights / f"MobileNetV3_{arch.capitalize()}.pth"
        torch.save(build_model(arch, len(LABELS), seed=1).state_dict(), path)
    write_class_indices(weights / "class_indices.json", LABELS)
    from mnv3kit.parity import sample_photos

    china, flower = sample_photos()
    shutil.copy(flower, dest / "photo.jpg")
    (dest / "more_photos").mkdir()
    shutil.copy(china, dest / "more_photos" / "china.jpg")


def test_readme_shell_blocks_run_in_order(tmp_path):
    repo = tmp_path / "mnv3kit"
    repo.mkdir()
    scratch_copy(repo)
    venv_bin = str(ROOT / ".venv" / "bin")
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "VIRTUAL_ENV": str(ROOT / ".venv")}
    servers = []
    try:
        for line, mark, code in shell_blocks((repo / "README.md").read_text()):
            if mark and mark["reason"]:
                continue
            script = f"set -euo pipefail\n{code}\n"
            if mark and mark["until"]:
                log = tmp_path / f"background-{line}.log"
                proc = subprocess.Popen(["bash", "-c", script], cwd=repo, env=env, stdout=open(log, "w"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
                servers.append(proc)
                deadline = time.time() + READY_TIMEOUT_S
                while mark["until"] not in log.read_text():
                    assert proc.poll() is None and time.time() < deadline, \
                        f"README.md:{line} background block never printed {mark['until']!r}:\n{log.read_text()}"
                    time.sleep(0.5)
                continue
            proc = subprocess.run(["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True,
                                  timeout=600)
            assert proc.returncode == 0, \
                f"README.md:{line} failed ({proc.returncode}):\n{code}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            assert "Traceback" not in proc.stderr, f"README.md:{line}:\n{proc.stderr}"
    finally:
        for proc in servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # serve.py stops Triton and its stubs on SIGTERM
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
