#!/usr/bin/env python3
"""Summary of one tools/multi_gpu_run.sh run: throughput of each layout and its scaling vs one GPU, same run.

  python perf/multigpu_report.py perf/results/multigpu-YYYYmmdd-HHMM      -> REPORT.md in that folder

Layouts (sub-folders of perf_analyzer CSVs, one file cN.csv per concurrency N with cN.start / cN.end timestamps):
a-single (one Triton, GPU 0), b-spanning (one Triton, instance_group on GPUs 0,1), c-pair-gpu0 + c-pair-gpu1 (two
Tritons, one perf_analyzer each, run at the same time and summed). Scaling = a layout's best throughput / a-single's.
"""

import re
import sys
from pathlib import Path
from typing import Dict, List


from mnv3kit.errors import KitError, cli_errors
from mnv3kit.perf import read_csv
from mnv3kit.report import markdown_table

MODEL, BATCH, TARGET = "mobilenetv3_u8", 64, 1.9
SINGLE, SPANNING, PAIR = "a-single", "b-spanning", ("c-pair-gpu0", "c-pair-gpu1")


def load(folder: Path) -> Dict[int, dict]:
    """concurrency -> perf_analyzer row (+ start/end epoch seconds) of one layout folder."""
    points = {}
    for path in sorted(folder.glob("c*.csv")):
        match = re.fullmatch(r"c(\d+)\.csv", path.name)
        if not match:
            continue
        rows = read_csv(path, MODEL, BATCH)
        if rows:
            stamps = [folder / f"c{match[1]}.{end}" for end in ("start", "end")]
            start, end = (float(p.read_text()) if p.is_file() else float("nan") for p in stamps)
            points[int(match[1])] = {**rows[0], "start": start, "end": end}
    return points


def overlap(a: dict, b: dict) -> float:
    """Fraction of the longer of two runs during which both ran."""
    both = min(a["end"], b["end"]) - max(a["start"], b["start"])
    longest = max(a["end"] - a["start"], b["end"] - b["start"])
    return max(0.0, both) / longest if longest > 0 else float("nan")


def fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def layout_rows(points: Dict[int, dict]) -> List[list]:
    return [[c, fmt(p["throughput"]), fmt(p["p50_ms"], 2), fmt(p["p99_ms"], 2), fmt(p["server_queue_ms"], 2),
             fmt(p["server_compute_infer_ms"], 2)] for c, p in sorted(points.items())]


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with cli_errors("multigpu_report.py"):
        if len(args) != 1:
            raise KitError("usage: multigpu_report.py RESULT_DIR")
        res = Path(args[0])
        if not res.is_dir():
            raise KitError(f"{res} is not a directory")
        single, spanning = load(res / SINGLE), load(res / SPANNING)
        pair0, pair1 = (load(res / name) for name in PAIR)
        if not single:
            raise KitError(f"{res}/{SINGLE} has no perf_analyzer CSV: the one-GPU reference is missing, "
                           f"no scaling can be computed (see {res}/run.log)")
        gpus = (res / "gpus.txt").read_text().strip().splitlines() if (res / "gpus.txt").is_file() else ["?"]
        base = max(p["throughput"] for p in single.values())
        headers = ["concurrency", "img/s", "p50 (ms)", "p99 (ms)", "server queue (ms)", "compute infer (ms)"]
        lines = [f"# MobileNetV3 on {len(gpus)} GPUs of one host: scaling vs one GPU", "",
                 *[f"- GPU {g}" for g in gpus],
                 f"- `{MODEL}` (UINT8 input, FP16, channels_last, CUDA graph at 64), batch-{BATCH} requests over "
                 f"gRPC with system shared memory, perf_analyzer on the same host; throughput in images/s", ""]
        summary = [["(a) one Triton, GPU 0", fmt(base), "1.00", ""]]
        if spanning:
            best = max(p["throughput"] for p in spanning.values())
            summary.append(["(b) one Triton, instance_group on GPUs 0,1", fmt(best), f"{best / base:.2f}",
                            "met" if best / base >= TARGET else "not met"])
        common = sorted(set(pair0) & set(pair1))
        summed = {c: pair0[c]["throughput"] + pair1[c]["throughput"] for c in common}
        if summed:
            c_best = max(summed, key=summed.get)
            ratio = summed[c_best] / base
            summary.append([f"(c) two Tritons, one per GPU, client-side spread (sum of 2 perf_analyzer, "
                            f"{c_best} each)", fmt(summed[c_best]), f"{ratio:.2f}", "met" if ratio >= TARGET else
                            "not met"])
        lines += ["## Scaling (target ≥ 1.9 × one GPU at batch 64)", "",
                  markdown_table(["layout", "best img/s", "× one GPU", f"≥ {TARGET}"], summary), ""]
        for title, points in ((f"(a) {SINGLE}", single), (f"(b) {SPANNING}", spanning)):
            lines += [f"## {title}", "", markdown_table(headers, layout_rows(points)) if points else "no data", ""]
        lines += ["## (c) two Tritons, one per GPU", "",
                  "Each server got its own perf_analyzer at the concurrency below, both started together; the sum "
                  "is the host's throughput while both ran. No gRPC load balancer runs on the measuring machine, so "
                  "the spreading is client-side. Both perf_analyzer use the same shared-memory key names (fixed by "
                  "perf_analyzer), so their input and output regions are shared: harmless for timing, not for "
                  "output contents.", ""]
        rows = [[c, fmt(pair0[c]["throughput"]), fmt(pair1[c]["throughput"]), fmt(summed[c]),
                 f"{overlap(pair0[c], pair1[c]):.2f}", fmt(pair0[c]["p99_ms"], 2), fmt(pair1[c]["p99_ms"], 2)]
                for c in common]
        lines += [markdown_table(["concurrency per server", "GPU 0 img/s", "GPU 1 img/s", "sum img/s",
                                  "time overlap", "p99 GPU 0 (ms)", "p99 GPU 1 (ms)"], rows) if rows else "no data",
                  ""]
        (res / "REPORT.md").write_text("\n".join(lines))
        print("\n".join(lines))
        return 0


if __name__ == "__main__":
    sys.exit(main())
