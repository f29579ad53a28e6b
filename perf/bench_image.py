#!/usr/bin/env python3
"""Encoded image -> logits: the served image ensemble vs the same decode + preprocess + classifier in-process.

  python perf/bench_image.py --repo model_repository_image -o perf/out/image
  python perf/bench_image.py --repo REPO --device cuda:0 --batch-size 64 --jpeg-size 500x375 -o OUT   # GPU

REPO is a --target local repository built with --ensemble. In-process runs the served code itself (the
preprocessing model's Preprocessor and the classifier's backend model, configured from their config.pbtxt) on
batches of files; served is perf/run_perf.sh (perf_analyzer) on mobilenetv3_image with the same files, one file
per request at concurrency = --batch (or -c), plus batch 1 / concurrency 1 for latency. Without -u it starts the
embedded Triton on REPO itself (on free ports, or --http-port/--grpc-port/--metrics-port). Writes
OUT/image_bench.md and .json: img/s, p50 at batch 1, bytes sent per image and the served / in-process ratio. Exit codes: 0 ok, 2 bad input or a failed measurement.
"""

import argparse
import sys
from pathlib import Path


from mnv3kit.cli import PORT_FLAGS, add_output, add_ports, add_server, deprecated, ports_of
from mnv3kit.errors import KitError, cli_errors


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="--target local repository built with --ensemble")
    p.add_argument("--images", type=Path, help="folder of JPEG/PNG files (default: scikit-learn's photographs)")
    p.add_argument("--jpeg-size", help="instead: JPEGs of this size (e.g. 500x375, quality 90) cut from the photos")
    p.add_argument("-b", "--batch-size", type=int, default=8,
                   help="in-process batch = served concurrency (default 8)")
    deprecated(p, "--batch", "--batch-size")
    p.add_argument("-c", "--concurrency", type=int, help="served requests in flight (default: --batch-size)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda:N for the in-process run")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per in-process point (default 10)")
    add_server(p, protocol="grpc")  # given -u: measure that running server instead of starting one
    add_ports(p, free=True)
    add_output(p, Path("perf/out/image"), help="image_bench.md / .json and the served runs")
    p.add_argument("perf_args", nargs="*", help="after --: more perf/run_perf.sh options (e.g. --shared-memory system)")
    args = p.parse_args(argv)
    if args.url and any(getattr(args, f"{name}_port") for name, _ in PORT_FLAGS):
        p.error("the port flags place the Triton started here; with -u the running server is measured")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors():
        from mnv3kit.measure.image_bench import make_jpegs, render, run
        from mnv3kit.parity import sample_photos
        from mnv3kit.parity import photo_set

        if args.batch_size < 1:
            raise KitError("--batch must be >= 1")
        if not (args.repo / "mobilenetv3_image" / "config.pbtxt").is_file():
            raise KitError(f"{args.repo} has no mobilenetv3_image: build it with build_repo.py --target local "
                           f"--ensemble pt")
        if args.jpeg_size:
            try:
                size = tuple(int(v) for v in args.jpeg_size.lower().split("x"))
                assert len(size) == 2 and min(size) > 0
            except (ValueError, AssertionError):
                raise KitError(f"--jpeg-size {args.jpeg_size}: use WIDTHxHEIGHT, e.g. 500x375") from None
            files = make_jpegs(sample_photos(), args.output / "images", size)
        else:
            files = photo_set(args.images, "--images")
        result = run(args.repo, files, args.batch_size, args.device, args.seconds, args.output, args.url, args.protocol,
                     args.perf_args, args.concurrency, progress=lambda m: print(m, file=sys.stderr, flush=True),
                     ports=ports_of(args))
        print(render(result))
        print(f"wrote {args.output / 'image_bench.md'}, {args.output / 'image_bench.json'}", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
