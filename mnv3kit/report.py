"""What every report of the kit shares: the host line, timestamps, model order and names, markdown tables, and the
throughput-vs-p99 figure's axes."""

import os
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Sequence

from .spec import MODELS, MODELS_BY_NAME


def hardware() -> dict:
    """CPU model, core count and GPUs of THIS host (for a remote server it is the client's, said so in reports)."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = []
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False).stdout
        gpus = [line.strip() for line in out.splitlines() if line.strip()]
    # other work on the host skews every number: record how busy it was when the run started
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": gpus, "load_1min": round(os.getloadavg()[0], 2)}


def hardware_line(hw: dict, load: bool = True) -> str:
    line = f"{hw['cpu']}, {hw['cores']} cores; GPU: {', '.join(hw['gpus']) or 'none'}"
    return line + (f"; load average at start {hw['load_1min']}" if load else "")


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def model_order(name: str) -> int:
    """The seed's row order: pt, then onnx, then trt; other models after them."""
    names = [m.name for m in MODELS]
    return names.index(name) if name in names else len(names)


def short_name(model: str) -> str:
    """``pt`` for mobilenetv3_pt, as the seed's ``Model/Batch_Size`` column (``trt/1``)."""
    spec = MODELS_BY_NAME.get(model)
    return spec.key if spec else model


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def latency_axes(title: str, fontsize: int = 10):
    """A figure of throughput (y) against p99 latency (x), drawn to files only (CI and servers have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (infer/sec)")
    ax.set_title(title, fontsize=fontsize)
    ax.grid(True, alpha=0.3)
    return fig, ax


def save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120)
    plt.close(fig)
