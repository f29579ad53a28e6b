#!/usr/bin/env python3
"""OpenVINO on this CPU: one infer request at a time (PERFORMANCE_HINT LATENCY, what the kit's OpenVinoRunner does)
vs asynchronous infer requests over several streams (THROUGHPUT, AsyncInferQueue with the plugin's optimal number
of requests), in-process, batch 1 and batch 8, answers checked. Each point compiles its model anew and is followed
by a pause, so the other mode's worker threads are not spinning beside it.

  python perf/openvino_streams.py --repo model_repository_local -o perf/out/openvino-streams

REPO: a repository with mobilenetv3_openvino (FP32). Inputs are the eval transform of real photo views; every output
of every mode is compared with the LATENCY mode's logits of the same batch at ONNX's parity tolerance. Rounds
alternate the modes; medians and spread are reported. Writes OUT/REPORT.md and OUT/streams.json.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from mnv3kit.cli import add_output, positive
from mnv3kit.errors import KitError, cli_errors
from mnv3kit.gate import photo_views, pillow_pixels
from mnv3kit.parity import allowed_difference, sample_photos
from mnv3kit.preprocess import normalize
from mnv3kit.report import hardware, hardware_line, markdown_table, now
from mnv3kit.spec import OV

MODES = ("LATENCY, one request", "THROUGHPUT, async requests")
PAUSE_S = 2.0


def compile_mode(core, xml: Path, mode: str):
    hint = "LATENCY" if mode == MODES[0] else "THROUGHPUT"
    return core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": hint})


def run_mode(ov, compiled, mode: str, batches, seconds: float):
    """img/s over ``seconds`` of back-to-back batches, and every output in submission order."""
    outputs, images = [], 0
    if mode == MODES[0]:
        request = compiled.create_infer_request()
        run = lambda x: outputs.append(request.infer([x])[compiled.output(0)].copy())  # noqa: E731
        run(batches[0])
        outputs.clear()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            x = batches[len(outputs) % len(batches)]
            run(x)
            images += len(x)
        return images / (time.perf_counter() - start), outputs, 1
    jobs = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    queue = ov.AsyncInferQueue(compiled, jobs)
    results = {}
    queue.set_callback(lambda request, n: results.__setitem__(n, request.get_output_tensor(0).data.copy()))
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        x = batches[n % len(batches)]
        queue.start_async([x], n)
        n += 1
        images += len(x)
    queue.wait_all()
    rate = images / (time.perf_counter() - start)
    return rate, [results[i] for i in range(n)], jobs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="a repository with mobilenetv3_openvino")
    p.add_argument("-b", "--batch-sizes", default="1,8", help="batch sizes (default 1,8)")
    p.add_argument("--seconds", type=positive, default=10.0, help="per mode, batch size and round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, the modes alternating (default 3)")
    add_output(p, Path("perf/out/openvino-streams"), help="REPORT.md and streams.json")
    args = p.parse_args(argv)
    with cli_errors():
        from mnv3kit.openvino import import_openvino

        ov = import_openvino()
        xml = args.repo / OV.name / "1" / OV.artifact
        if not xml.is_file():
            raise KitError(f"{xml}: no such file (build the repository with --models ...,ov)")
        sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip().isdigit() and int(b) > 0]
        if not sizes or len(sizes) != len(args.batch_sizes.split(",")):
            raise KitError(f"-b {args.batch_sizes}: give positive integers, e.g. 1,8")
        images = normalize(pillow_pixels(photo_views(sample_photos(), 64)))
        core = ov.Core()
        latency = compile_mode(core, xml, MODES[0])  # the reference logits
        rates = {(m, b): [] for m in MODES for b in sizes}
        jobs, wrong, checked = {}, {key: 0 for key in rates}, {key: 0 for key in rates}
        for r in range(args.rounds):
            for b in sizes:
                batches = [np.ascontiguousarray(images[i:i + b]) for i in range(0, len(images) - b + 1, b)]
                reference = [latency.create_infer_request().infer([x])[latency.output(0)].copy() for x in batches]
                for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                    # compiled per point, and a pause after: the other mode's idle worker threads would spin on
                    # the same 2 cores (measured: LATENCY right after THROUGHPUT lost a third)
                    compiled = compile_mode(core, xml, mode)
                    rate, outputs, jobs[mode] = run_mode(ov, compiled, mode, batches, args.seconds)
                    del compiled
                    time.sleep(PAUSE_S)
                    rates[(mode, b)].append(rate)
                    for i, out in enumerate(outputs):
                        ref = reference[i % len(batches)]
                        checked[(mode, b)] += len(out)
                        wrong[(mode, b)] += int((np.abs(out - ref).max(axis=1) > allowed_difference(ref)).sum())
                    print(f"round {r + 1} batch {b} {mode}: {rate:.1f} img/s", flush=True)
        args.output.mkdir(parents=True, exist_ok=True)
        rows = [[mode, b, f"{statistics.median(rates[(mode, b)]):.1f}",
                 f"{min(rates[(mode, b)]):.1f}–{max(rates[(mode, b)]):.1f}", jobs[mode],
                 f"{wrong[(mode, b)]} of {checked[(mode, b)]:,}"] for b in sizes for mode in MODES]
        result = {"date": now(), "hardware": hardware(), "openvino": ov.__version__, "xml": str(xml),
                  "rates": {f"{m}|{b}": v for (m, b), v in rates.items()}, "jobs": jobs,
                  "wrong": {f"{m}|{b}": v for (m, b), v in wrong.items()},
                  "checked": {f"{m}|{b}": v for (m, b), v in checked.items()}}
        (args.output / "streams.json").write_text(json.dumps(result, indent=2) + "\n")
        lines = ["# OpenVINO FP32 in-process: one request (LATENCY) vs async requests (THROUGHPUT)", "",
                 f"- Date: {result['date']}; hardware: {hardware_line(result['hardware'])}; openvino {ov.__version__}",
                 f"- Model: {xml}; inputs: 64 photo views; {args.rounds} rounds × {args.seconds:g} s per point, "
                 "the modes alternating; every output checked against the LATENCY mode's logits of its batch", "",
                 markdown_table(["mode", "batch", "img/s median", "min–max", "requests in flight", "wrong"], rows)]
        (args.output / "REPORT.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 1 if any(wrong.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
