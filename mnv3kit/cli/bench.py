"""In-process latency of every artifact in a model repository, per batch size (the original project's trtexec table).

  python perf/bench_engine.py --repo model_repository_local
  python perf/bench_engine.py --repo model_repository --device cuda -o perf/out/engine

For each artifact of the repository's built version -- model.pt (TorchScript), model.onnx (ONNX Runtime) and
model.plan (TensorRT 10 Python API, where TensorRT and a GPU exist) -- and each batch size 1..max_batch_size of its
config.pbtxt: warm-up calls, then timed calls one at a time; prints min, max, mean, median and p99 latency (ms) and
throughput (batch / mean) as a Markdown table, one row per artifact x batch size. No server is involved: this is the
ceiling that served throughput (perf/run_perf.sh --compare) is measured against.

TensorRT cannot be installed on machines without NVIDIA's package index, so the plan is then listed as not measured;
inside NVIDIA's Triton image, perf/trtexec_latency.sh measures it with trtexec.
Exit codes: 0 ok, 2 bad input (no repository, batch above max_batch_size, --device cuda without a GPU).
"""

import argparse
import sys


from mnv3kit.cli import add_output, add_repo
from mnv3kit.errors import cli_errors

QUICK = {"warmup": 5, "iters": 5, "seconds": 0.0}  # TorchScript optimizes during its first ~3 calls per shape


def parse_args(argv=None) -> argparse.Namespace:
    from mnv3kit.bench import DEVICES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_repo(p, help="repository built by build_repo.py, either target")
    p.add_argument("-b", "--batch-sizes", help="e.g. 1-8 or 1,2,4,8 (default 1..max_batch_size of each config)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: CUDA when torch sees a GPU, else CPU (default); ONNX Runtime without its CUDA "
                        "provider stays on CPU and says so in the Device column")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per batch size first (default 10)")
    p.add_argument("--iters", type=int, default=50, help="at least this many timed calls per batch size (default 50)")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="and at least this many seconds of timed calls per batch size (default 2)")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run for CI and the demo: --warmup {QUICK['warmup']} --iters {QUICK['iters']} "
                        f"--seconds 0 (rough numbers)")
    add_output(p, help="also write engine_latency.md and engine_latency.json (for run_perf.sh --compare) here")
    args = p.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    if args.warmup < 0 or args.iters < 1 or args.seconds < 0:
        p.error("--warmup must be >= 0, --iters >= 1, --seconds >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors():
        from mnv3kit.bench import render, run, write
        from mnv3kit.perf import parse_batch_sizes

        batches = parse_batch_sizes(args.batch_sizes) if args.batch_sizes else None
        result = run(args.repo, batches, args.device, args.warmup, args.iters, args.seconds,
                     lambda what: print(f"measuring {what}", file=sys.stderr, flush=True))
        print(render(result))
        if args.output:
            print("wrote " + ", ".join(map(str, write(result, args.output))), file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
