#!/usr/bin/env python3
"""Summary of one perf/gpu_run.sh run: served vs raw at every point, the two GPU targets, where the time goes.

  python perf/gpu_report.py perf/results/gpu-YYYYmmdd-HHMM      -> REPORT.md in that folder
"""

import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mnv3kit.errors import KitError, cli_errors  # noqa: E402
from mnv3kit.perf import RESULTS_CSV, markdown_table  # noqa: E402

SWEEPS = {"seed": "batch 1..8, concurrency 1 (the seed's table)",
          "dynamic": "batch-1 requests, rising concurrency, dynamic batching up to 64, system shared memory",
          "batch64": "batch-64 requests, system shared memory"}
RAW_VARIANT = "fp16-cl"  # the configuration the served models run
THROUGHPUT_TARGET, P50_TARGET_MS = 0.5, 1.5


def load(res: Path):
    try:
        raw = json.loads((res / "raw_gpu.json").read_text())
    except FileNotFoundError:
        raise KitError(f"{res}/raw_gpu.json missing: not a perf/gpu_run.sh result folder") from None
    served = []
    for sweep in SWEEPS:
        path = res / sweep / RESULTS_CSV
        if path.is_file():
            with open(path, newline="") as f:
                served += [{**row, "sweep": sweep} for row in csv.DictReader(f)]
    for row in served:
        for key, value in row.items():
            if key not in ("model", "sweep"):
                row[key] = float(value)
    return raw, served


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with cli_errors("gpu_report.py"):
        if len(args) != 1:
            raise KitError("usage: gpu_report.py RESULT_DIR")
        res = Path(args[0])
        raw, served = load(res)
        raw_rows = {(r["model"], r["variant"], r["batch"]): r for r in raw["rows"]}
        max_batch = max(r["batch"] for r in raw["rows"])
        lines = [f"# MobileNetV3 served by Triton on {raw['gpu']}", "", f"- Date: {raw['date']}",
                 f"- torch {raw['torch']}; served models: python backend, {RAW_VARIANT} (FP16, channels_last), "
                 f"CUDA graph per batch size; raw = the same TorchRunner in-process", ""]
        lines += ["## Targets", ""]
        target_rows = []
        for model in sorted({r["model"] for r in served}):
            mine = [r for r in served if r["model"] == model]
            best = max(mine, key=lambda r: r["throughput"])
            ceiling = raw_rows.get((model, RAW_VARIANT, max_batch))
            c1 = [r for r in mine if r["sweep"] == "seed" and r["batch"] == 1 and r["concurrency"] == 1]
            ratio = best["throughput"] / ceiling["replay_img_s"] if ceiling else float("nan")
            p50 = c1[0]["p50_ms"] if c1 else float("nan")
            target_rows.append([
                model, f"{best['throughput']:,.0f} ({best['sweep']} b{best['batch']:.0f} c{best['concurrency']:.0f})",
                f"{ceiling['replay_img_s']:,.0f}" if ceiling else "-", f"{ratio:.2f}",
                "met" if ratio >= THROUGHPUT_TARGET else "NOT met", f"{p50:.2f}",
                "met" if p50 <= P50_TARGET_MS else "NOT met"])
        lines.append(markdown_table(
            ["Model", "Best served (img/s)", f"Raw graph replay b{max_batch} (img/s)", "Served / raw",
             f">= {THROUGHPUT_TARGET}", "p50 c1 b1 (ms)", f"<= {P50_TARGET_MS} ms"], target_rows))
        lines += ["", "## Every served point against raw at the same batch size", "",
                  "Raw end-to-end = host batch -> GPU -> logits on the host in-process (what one execute() does); "
                  "raw replay = the graph alone. Server columns: average ms per request from Triton's statistics.", ""]
        table = []
        for r in served:
            b = int(r["batch"])
            same = raw_rows.get((r["model"], RAW_VARIANT, b))
            table.append([r["sweep"], r["model"], b, int(r["concurrency"]), f"{r['throughput']:,.0f}",
                          f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                          f"{r['throughput'] / same['throughput']:.2f}" if same else "-",
                          f"{r['throughput'] / same['replay_img_s']:.2f}" if same else "-",
                          f"{r['server_queue_ms']:.2f}", f"{r['server_compute_input_ms']:.2f}",
                          f"{r['server_compute_infer_ms']:.2f}", f"{r['server_compute_output_ms']:.2f}"])
        lines.append(markdown_table(["Sweep", "Model", "Batch", "Conc.", "Served (img/s)", "p50 (ms)", "p99 (ms)",
                                     "/ raw e2e", "/ raw replay", "Queue", "Compute in", "Compute infer",
                                     "Compute out"], table))
        lines += ["", "## Raw in-process", "", (res / "raw_gpu.md").read_text().split("\n\n", 3)[-1].strip(), "",
                  "Sweeps: " + "; ".join(f"[{k}]({k}/report.md): {v}" for k, v in SWEEPS.items()), ""]
        (res / "REPORT.md").write_text("\n".join(lines))
        print("\n".join(lines))
        return 0


if __name__ == "__main__":
    sys.exit(main())
