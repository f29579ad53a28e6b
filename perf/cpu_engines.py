#!/usr/bin/env python3
"""In-process CPU runtimes on one model.onnx: ONNX Runtime vs OpenVINO FP32 vs OpenVINO BF16, as the kit serves them.

  taskset -c 0,1 python perf/cpu_engines.py --onnx model_repository_local/mobilenetv3_onnx/1/model.onnx

Each runtime is the kit's own runner (mnv3kit.backend.classifier_model: OnnxRunner, OpenVinoRunner with
INFERENCE_PRECISION_HINT f32 or bf16, PERFORMANCE_HINT LATENCY) on the CPUs this process may use (taskset them to
compare with a small host). Inputs are real photographs and their views (mnv3kit.parity.parity_batch), batch 1 and
--batch; rounds alternate the runtimes, --seconds of back-to-back calls per runtime, batch size and round. Reports
img/s (median of the rounds, min-max), and against ONNX Runtime on --views photo views: max |logit difference| over
max |logit| and top-1 agreement. BF16 is measured only where OpenVINO reports BF16 (AVX512_BF16 or AMX); it is the
speed BF16 would give, not a precision the build enables: that needs its accuracy gate (mnv3-build
--openvino-precision bf16).
Exit status: 0, or 2 when the model or a runtime is missing.
"""

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from mnv3kit.errors import KitError, cli_errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=Path, required=True, help="the model.onnx of a built repository")
    p.add_argument("--batch", type=int, default=8, help="the larger batch size (default 8)")
    p.add_argument("--seconds", type=float, default=4.0, help="per runtime, batch size and round (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--views", type=int, default=256, help="photo views for the agreement (default 256)")
    args = p.parse_args(argv)
    with cli_errors():
        from mnv3kit.bench import measure
        from mnv3kit.backend.classifier_model import OnnxRunner, OpenVinoRunner, RunnerError, physical_cores
        from mnv3kit.parity import parity_batch, sample_photos
        from mnv3kit.report import hardware
        from mnv3kit.spec import ONNX

        if args.batch < 2:
            raise KitError(f"--batch {args.batch}: the larger batch size must be at least 2 (batch 1 is always run)")
        if not args.onnx.is_file():
            raise KitError(f"--onnx {args.onnx}: no such file; build a repository with -m onnx first")
        runners = {"ONNX Runtime": OnnxRunner(str(args.onnx), ONNX.input_name)}
        for precision in ("fp32", "bf16"):
            try:
                runners[f"OpenVINO {precision.upper()}"] = OpenVinoRunner(str(args.onnx), precision)
            except RunnerError as exc:
                print(f"OpenVINO {precision}: not measured: {exc}")
        views = parity_batch(sample_photos(), args.views)
        logits = {name: np.concatenate([runner(views[i:i + args.batch]) for i in range(0, len(views), args.batch)])
                  for name, runner in runners.items()}
        reference = logits["ONNX Runtime"]
        rates = {(name, b): [] for name in runners for b in (1, args.batch)}
        for r in range(args.rounds):
            order = list(runners) if r % 2 == 0 else list(runners)[::-1]
            for b in (1, args.batch):
                for name in order:
                    ms = measure(lambda: runners[name](views[:b]), warmup=5, iters=1, seconds=args.seconds)
                    rates[name, b].append(b * 1e3 / float(np.mean(ms)))
        print(f"{hardware()['cpu']}, {physical_cores()} of its cores for this process; "
              f"{args.onnx}; {args.rounds} rounds x {args.seconds} s; img/s median (min-max)")
        print(f"| runtime | batch 1 | batch {args.batch} | max abs logit diff / max abs logit | top-1 agreement |")
        print("|---|---|---|---|---|")
        for name in runners:
            diff = float(np.abs(logits[name] - reference).max()) / float(np.abs(reference).max())
            agree = float((logits[name].argmax(1) == reference.argmax(1)).mean())
            cells = [f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"
                     for v in (rates[name, 1], rates[name, args.batch])]
            print(f"| {name} | {cells[0]} | {cells[1]} | {diff:.1e} | {agree:.2%} of {len(views)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
