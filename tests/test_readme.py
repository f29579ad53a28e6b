"""The shell blocks of README.md and of every docs page run in order, as written, on a scratch copy of the repository.

The pages' order is the numbered list of links under README.md's "## Documentation" heading. README.md's blocks run
first, then each page's, as one sequence: a server a page starts answers the blocks of the pages after it.
Every ```bash block runs (bash -euo pipefail, in the activated venv, from the copy's root) and must exit 0, unless
the line before it is an HTML comment the rendered page shows nobody:
  <!-- readme-test: skip: REASON -->            not run here (Docker, a GPU, your dataset); the reason is required
  <!-- readme-test: background until "TEXT" --> a server: started, waited for until its output shows TEXT, and
                                                stopped after the last block of the last page
What the pages assume a user brings is put in place first: trained weights as train.py writes them (weights/),
photo.jpg and more_photos/.
"""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import torch

from conftest import ROOT
from mnv3kit.model import build_model
from mnv3kit.weights import write_class_indices

MARK = re.compile(r'<!-- readme-test: (?:skip: (?P<reason>\S.*?)|background until "(?P<until>[^"]+)") -->')
NAV_HEADING = "## Documentation"
NAV_ENTRY = re.compile(r"^\d+\. \[[^\]]+\]\((?P<page>docs/[^)#]+\.md)\)")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
LABELS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]  # the original project's flowers, as class_indices.json
READY_TIMEOUT_S = 300


def nav_pages(root=ROOT):
    """The docs pages in order: the numbered links of README.md's Documentation section."""
    text = (root / "README.md").read_text()
    section = text[text.index(f"\n{NAV_HEADING}\n"):].split("\n## ", 2)[1]
    return [m["page"] for m in map(NAV_ENTRY.match, section.splitlines()) if m]


def pages(root=ROOT):
    """README.md, then every docs page in nav order: the order their blocks run in."""
    return ["README.md", *nav_pages(root)]


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


def anchors(text):
    """GitHub's anchors of a Markdown file's headings."""
    found = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_nav_lists_every_page_once():
    nav = nav_pages()
    assert nav, f"README.md has no numbered links under {NAV_HEADING!r}"
    assert len(nav) == len(set(nav)), f"a page is listed twice: {nav}"
    missing = [page for page in nav if not (ROOT / page).is_file()]
    assert not missing, f"README.md's Documentation lists pages that do not exist: {missing}"
    unlisted = sorted({str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")} - set(nav))
    assert not unlisted, f"docs pages missing from README.md's Documentation list: {unlisted}"


def test_relative_links_resolve():
    """Every relative link of README.md and the pages names an existing file, and a heading where it has #anchor."""
    broken = []
    for page in pages():
        text = (ROOT / page).read_text()
        for number, line in enumerate(text.splitlines(), 1):
            for target in (m["target"] for m in LINK.finditer(line)):
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                dest = ((ROOT / page).parent / path).resolve() if path else ROOT / page
                if not dest.exists():
                    broken.append(f"{page}:{number}: {target} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
                    broken.append(f"{page}:{number}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_markers_are_well_formed():
    run = []
    for page in pages():
        text = (ROOT / page).read_text()
        blocks = shell_blocks(text)
        assert text.count("<!-- readme-test:") == sum(1 for _, mark, _ in blocks if mark), \
            f"{page}: a readme-test comment that does not directly precede a ```bash block"
        run += [code for _, mark, code in blocks if not mark or mark["until"]]
    assert len(run) >= 8
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
        for page in pages(repo):
            for line, mark, code in shell_blocks((repo / page).read_text()):
                where = f"{page}:{line}"
                if mark and mark["reason"]:
                    continue
                script = f"set -euo pipefail\n{code}\n"
                if mark and mark["until"]:
                    log = tmp_path / f"background-{Path(page).stem}-{line}.log"
                    proc = subprocess.Popen(["bash", "-c", script], cwd=repo, env=env, stdout=open(log, "w"),
                                            stderr=subprocess.STDOUT, start_new_session=True)
                    servers.append(proc)
                    deadline = time.time() + READY_TIMEOUT_S
                    while mark["until"] not in log.read_text():
                        assert proc.poll() is None and time.time() < deadline, \
                            f"{where} background block never printed {mark['until']!r}:\n{log.read_text()}"
                        time.sleep(0.5)
                    continue
                proc = subprocess.run(["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True,
                                      timeout=600)
                assert proc.returncode == 0, \
                    f"{where} failed ({proc.returncode}):\n{code}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                assert "Traceback" not in proc.stderr, f"{where}:\n{proc.stderr}"
    finally:
        for proc in servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # serve.py stops Triton and its stubs on SIGTERM
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
