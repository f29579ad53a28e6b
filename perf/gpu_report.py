#!/usr/bin/env python3
"""Summary of one tools/gpu_run.sh or tools/gpu_image.sh run: the soak's verdict first, then the speed.

  python perf/gpu_report.py perf/results/gpu-YYYYmmdd-HHMM        -> REPORT.md in that folder: the targets against
                                                                    the fastest raw variant, where the time goes
  python perf/gpu_report.py perf/results/gpu-image-YYYYmmdd-HHMM  -> REPORT.md: served vs in-process, parity
"""

import argparse
import csv
import json
import sys
from pathlib import Path


from mnv3kit.errors import KitError, cli_errors
from mnv3kit.perf import RESULTS_CSV
from mnv3kit.report import markdown_table

SWEEPS = {"latency": "batch 1 and 8, concurrency 1, gRPC",
          "latency-cudashm": "batch 1, concurrency 1, CUDA shared memory",
          "batch64": "batch-64 requests, system shared memory",
          "batch64-cudashm": "batch-64 requests, CUDA shared memory",
          "dynamic": "batch-1 requests, rising concurrency, dynamic batching up to 64, system shared memory"}
U8_TARGET, CUDA_SHM_TARGET, P50_TARGET_MS = 0.8, 0.6, 1.0


def soak_section(res: Path) -> list:
    """The soak's verdict and table (res/soak: python -m mnv3kit.cli.perf soak, run before any speed was measured)."""
    folder = res / "soak"
    status = (folder / "exit_status").read_text().strip() if (folder / "exit_status").is_file() else None
    lines = ["## Load truth: every answer checked under sustained load (the soak, before the speed runs)", ""]
    if not (folder / "soak.json").is_file():
        return lines + [f"**Not run or broke before writing its result** (exit status {status or 'not recorded'}): "
                        "no speed below has its answers checked.", ""]
    result = json.loads((folder / "soak.json").read_text())
    rows = result["rows"]
    opts = result.get("options", {})
    checked = sum(r["ok"] + r["wrong"] for r in rows)
    verdict = ("every answer right" if status == "0" else
               "FAILED: the speed below was measured on a server that answered wrongly or failed requests")
    lines += [f"**{result['wrong']} wrong answers, {result['failed']} failed requests** in {checked:,} checked "
              f"answers ({', '.join(sorted({r['model'] for r in rows}))}; concurrency "
              f"{', '.join(map(str, opts.get('concurrency', [])))}, {opts.get('seconds', '?')} s each; exit status "
              f"{status}: {verdict}). Rejected = shed by the queue bound (UNAVAILABLE), not a failure.", "",
              (folder / "soak.md").read_text().strip(), ""]
    return lines


def decode_line(manifest: Path) -> str:
    """The manifest's gpu_decode: used or not, why, and the gate's numbers."""
    entry = json.loads(manifest.read_text()).get("gpu_decode") if manifest.is_file() else None
    if not entry:
        return "not recorded"
    gate = entry.get("gate")
    numbers = "" if not gate else (
        f"; top-1 {100 * gate['top1_agreement']:.2f} % the same as Pillow's on {gate['images']} photo views, "
        f"|Δlogit| p50 {gate['diff_p50']:.2%} p99 {gate['diff_p99']:.2%} max {gate['diff_max']:.2%} of max |logit|, "
        "max |Δpixel| " + ", ".join(f"{mode} {diff}" for mode, diff in gate["pixels"].items()))
    return f"{entry['use']} ({entry['reason']}){numbers}"


def image_report(res: Path) -> list:
    """A tools/gpu_image.sh folder: the soak, perf/bench_image.py's speed, perf/gpu_image_parity.py's parity."""
    bench = res / "bench" / "image_bench.json"
    info = json.loads(bench.read_text()) if bench.is_file() else {}
    gpus = ", ".join(info.get("hardware", {}).get("gpus", [])) or "GPU not recorded"
    lines = [f"# The image ensemble served by Triton on {gpus}", "", f"- Date: {info.get('date', 'not recorded')}",
             "- Served classifier vs the build's eager FP32 logits (perf/served_parity.py): " + (
                 "; ".join((res / "served_parity.txt").read_text().splitlines())
                 if (res / "served_parity.txt").is_file() else "not checked in this run"),
             f"- GPU JPEG decode (the build's accuracy gate): {decode_line(res / 'manifest.json')}", ""]
    lines += soak_section(res)
    for title, path in (("GPU JPEG decoders (perf/gpu_decoders.py)", res / "decoders" / "decoders.md"),
                        ("Speed: served vs in-process (perf/bench_image.py)", res / "bench" / "image_bench.md"),
                        ("Parity: GPU path vs client-side preprocessing (perf/gpu_image_parity.py)",
                         res / "parity" / "gpu_image_parity.md")):
        body = path.read_text().split("\n", 1)[1].strip() if path.is_file() else "not run in this run"
        lines += [f"## {title}", "", body, ""]
    return lines


def load(res: Path):
    try:
        raw = json.loads((res / "raw_gpu.json").read_text())
    except FileNotFoundError:
        raise KitError(f"{res}/raw_gpu.json missing: not a tools/gpu_run.sh result folder") from None
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


def best(rows, **where):
    mine = [r for r in rows if all(r[k] == v for k, v in where.items())]
    return max(mine, key=lambda r: r["throughput"]) if mine else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path,
                   help="a tools/gpu_run.sh or tools/gpu_image.sh result folder; REPORT.md is written there")
    args = p.parse_args(argv)
    with cli_errors("gpu_report.py"):
        res = args.results
        if not (res / "raw_gpu.json").is_file() and any((res / d).is_dir() for d in ("bench", "parity", "soak")):
            lines = image_report(res)
            (res / "REPORT.md").write_text("\n".join(lines))
            print("\n".join(lines))
            return 0
        raw, served = load(res)
        manifest = json.loads((res / "manifest.json").read_text()) if (res / "manifest.json").is_file() else {}
        batches = sorted({r["batch"] for r in raw["rows"]})
        top = max(batches)
        by = {(r["variant"], r["batch"]): r for r in raw["rows"]}
        variants = list(dict.fromkeys(r["variant"] for r in raw["rows"]))
        fastest = max((by[(v, top)] for v in variants), key=lambda r: r["replay_img_s"])
        opts = raw.get("options", {})
        device = manifest.get("parity", {}).get("device") or {}
        lines = [f"# MobileNetV3 served by Triton on {raw['gpu']}", "", f"- Date: {raw['date']}",
                 f"- torch {raw['torch']}; {manifest.get('arch', '?')}, precision {opts.get('precision')}, "
                 f"channels_last {opts.get('channels_last')}, one CUDA graph per batch size",
                 f"- Served: python backend, --runtime compiled (TorchInductor), "
                 f"{manifest.get('max_batch_size', '?')} max batch; cold start (compile at build): "
                 f"{device.get('compile_seconds', '?')} s; warm start (server ready, kernels from the cache): "
                 f"{(res / 'warm_start.txt').read_text().strip() if (res / 'warm_start.txt').is_file() else '?'}",
                 f"- Load-time parity: {device.get('summary', 'not run at build')}",
                 "- Served answers vs the build's eager FP32 logits (perf/served_parity.py): " + (
                     "; ".join((res / "served_parity.txt").read_text().splitlines())
                     if (res / "served_parity.txt").is_file() else "not checked in this run"),
                 f"- Fastest raw at batch {top}: **{fastest['variant']}**, {fastest['replay_img_s']:,.0f} img/s "
                 f"(CUDA graph replay); every ratio below is against it", ""]
        lines += soak_section(res)
        lines += ["## Raw variants (ms per CUDA graph replay)", ""]
        lines.append(markdown_table(
            ["Variant", *[f"b{b} ms" for b in batches], f"b{top} img/s", "start (s)"],
            [[v, *[f"{by[(v, b)]['replay_ms']:.3f}" for b in batches], f"{by[(v, top)]['replay_img_s']:,.0f}",
              f"{by[(v, top)]['init_s']:.1f}"] for v in variants]))

        u8 = best(served, model="mobilenetv3_u8", batch=top)
        shm = best(served, model="mobilenetv3_pt", batch=top, sweep="batch64-cudashm")
        sys_pt = best(served, model="mobilenetv3_pt", batch=top, sweep="batch64")
        c1 = [r for r in served if r["batch"] == 1 and r["concurrency"] == 1]
        fast_c1 = min(c1, key=lambda r: r["p50_ms"]) if c1 else None
        ratio = lambda r: r["throughput"] / fastest["replay_img_s"] if r else float("nan")  # noqa: E731
        lines += ["", "## Targets", ""]
        rows = []
        for name, row, target in (("u8, batch 64 (system shm)", u8, U8_TARGET),
                                  ("FP32 pt, batch 64, CUDA shared memory", shm, CUDA_SHM_TARGET),
                                  ("FP32 pt, batch 64, system shared memory", sys_pt, None)):
            value = ratio(row)
            rows.append([name, f"{row['throughput']:,.0f} img/s (c{row['concurrency']:.0f})"
                         if row else "-", f"{value:.2f}", f">= {target}" if target else "-",
                         ("met" if value >= target else "NOT met") if target and row else "-"])
        rows.append(["p50, concurrency 1, batch 1", f"{fast_c1['p50_ms']:.2f} ms ({fast_c1['model']}, "
                     f"{fast_c1['sweep']})" if fast_c1 else "-", "-", f"<= {P50_TARGET_MS} ms",
                     ("met" if fast_c1['p50_ms'] <= P50_TARGET_MS else "NOT met") if fast_c1 else "-"])
        lines.append(markdown_table(["Target", "Served", "/ fastest raw", "Goal", ""], rows))

        if fast_c1:
            same = by.get(("kit-compiled-u8" if "u8" in fast_c1["model"] else "kit-compiled", 1))
            server = sum(fast_c1[k] for k in ("server_queue_ms", "server_compute_input_ms",
                                              "server_compute_infer_ms", "server_compute_output_ms"))
            split = [["client + network (p50 - server total)", f"{fast_c1['p50_ms'] - server:.3f}"],
                     ["Triton queue", f"{fast_c1['server_queue_ms']:.3f}"],
                     ["Triton compute input (copy into the stub's shared memory)",
                      f"{fast_c1['server_compute_input_ms']:.3f}"],
                     ["Triton compute infer (stub round trip + execute())", f"{fast_c1['server_compute_infer_ms']:.3f}"],
                     ["Triton compute output", f"{fast_c1['server_compute_output_ms']:.3f}"]]
            if same:
                split += [["  of which the model, host in -> logits out (raw, paced)", f"{same['paced_ms']:.3f}"],
                          ["  of which the CUDA graph replay alone (raw)", f"{same['replay_ms']:.3f}"],
                          ["  of which the stub round trip and glue (compute infer - raw paced)",
                           f"{fast_c1['server_compute_infer_ms'] - same['paced_ms']:.3f}"]]
            lines += ["", f"## Where batch-1 latency goes ({fast_c1['model']}, {fast_c1['sweep']}; Triton's "
                      "statistics, average ms per request)", "", markdown_table(["Component", "ms"], split)]

        lines += ["", "## Every served point", "",
                  "Served img/s: perf_analyzer's inferences/s (images). Server columns: Triton's statistics, average ms per request.", ""]
        table = [[r["sweep"], r["model"], int(r["batch"]), int(r["concurrency"]),
                  f"{r['throughput']:,.0f}", f"{ratio(r):.2f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                  f"{r['server_queue_ms']:.2f}", f"{r['server_compute_input_ms']:.2f}",
                  f"{r['server_compute_infer_ms']:.2f}", f"{r['server_compute_output_ms']:.2f}"] for r in served]
        lines.append(markdown_table(["Sweep", "Model", "Batch", "Conc.", "Served (img/s)", "/ fastest raw",
                                     "p50 (ms)", "p99 (ms)", "Queue", "Compute in", "Compute infer", "Compute out"],
                                    table))
        lines += ["", "## Raw in-process", "", (res / "raw_gpu.md").read_text().split("\n\n", 3)[-1].strip(), "",
                  "Sweeps: " + "; ".join(f"[{k}]({k}/report.md): {v}" for k, v in SWEEPS.items()), ""]
        (res / "REPORT.md").write_text("\n".join(lines))
        print("\n".join(lines))
        return 0


if __name__ == "__main__":
    sys.exit(main())
