"""mnv3-perf (python -m mnv3kit.cli.perf, perf/run_perf.sh): served performance with perf_analyzer (``run``, ``report``)
and load truth (``soak``: every answer checked under sustained concurrency)."""

import argparse
import os
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path

from mnv3kit.cli import (add_output, add_repo, add_server, concurrency_text, count_or_zero, existing_dir, model_name,
                         model_names, positive)
from mnv3kit.errors import KitError, cli_errors, prog_name
from mnv3kit.perf import (MAX_TRIALS, PLOT_PNG, REPORT_MD, RESULTS_CSV, START_S, PointFailed, Settings,
                          command_line, connect, encoded_input, measure_point, plan, report,
                          write_input_data)
from mnv3kit.spec import ADMIN_KEY_ENV, DEFAULT_URLS


def run(args: argparse.Namespace) -> int:
    if args.quick:
        # Count windows (>= 1 s each) finish fast whatever the model's speed; no stability check to speak of: on a
        # busy 2-core machine three windows of a 13 ms model were seen to differ by more than 2x.
        args.count = args.count or (None if args.window else 5)
        args.stability = args.stability or 1000
    if args.compare and not args.compare.is_file():
        raise KitError(f"--compare {args.compare}: no such file (perf/bench_engine.py -o DIR writes "
                       f"DIR/engine_latency.json)")
    settings = Settings(args.concurrency, args.shared_memory, args.window, args.count, args.stability, args.metrics,
                        args.perf_args)
    timeout = args.point_timeout or settings.default_timeout()
    out = args.output or Path("perf/out") / f"served-{datetime.now():%Y%m%d-%H%M%S}"
    info = plan(out, args.url, args.protocol, args.models, args.batch_sizes, args.images, args.warmup,
                settings.args())
    key = os.environ.get(ADMIN_KEY_ENV)
    for n, point in enumerate(info["points"], 1):
        print(f"[{n}/{len(info['points'])}] {point['model']} batch {point['batch']} ... ", end="", file=sys.stderr,
              flush=True)
        try:
            measure_point(info["url"], args.protocol, point["model"], point["batch"], settings, out / point["csv"],
                          out / point["log"], timeout,
                          str(out / point["input_data"]) if point["input_data"] else "zero", key,
                          Path(info["perf_analyzer"]["path"]))
            print("ok", file=sys.stderr)
        except PointFailed as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
    return report(out, args.compare)


RUN_DESCRIPTION = f"""\
Measures throughput and latency of models served by a running Triton with perf_analyzer (tritonclient[all]==2.51.0),
one measurement per model x batch size, and writes into the output directory:
  {REPORT_MD:<23} Model/Batch_Size, Throughput (infer/sec), Avg, p50, p90, p95, p99 latency (ms), then the
                          server-side breakdown (queue, compute input/infer/output); header: server version, model
                          configs, hardware, date, the perf_analyzer command
  {RESULTS_CSV:<23} the same numbers, one row per model x batch x concurrency
  {PLOT_PNG:<23} throughput against p99 latency, one line per model
  csv/MODEL_bN.csv        perf_analyzer's own CSV (-f --verbose-csv) per point; logs/MODEL_bN.log its output
Arguments after -- go to every perf_analyzer call."""

RUN_EPILOG = f"""\
A server whose admin APIs are restricted (serve.py, the kit's compose file) needs its key in ${ADMIN_KEY_ENV}: the
repository index (which models are ready) and Triton's statistics (the server-side columns) are admin APIs. The key
goes to perf_analyzer as a -H header and is never written into the report.
perf_analyzer is looked up as $PERF_ANALYZER, beside the Python that runs this, then on PATH; LD_LIBRARY_PATH gets
the nvidia-cuda-runtime-cu12 wheel's libcudart.so.12, which it loads even without a GPU. Missing? `make venv` (it
also installs the system package libb64-0d).
A point that fails (unstable measurement, server error, past --point-timeout) is listed in the report; the others
are kept. Regenerate a report from existing CSVs: python -m mnv3kit.cli.perf report DIR [--compare JSON].

Exit status: 0 every point measured; 1 some points failed (the rest are reported);
             2 bad usage, perf_analyzer missing, server unreachable or a model not ready."""


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--models", type=model_names, metavar="LIST",
                   help="comma-separated models, keys (pt,onnx,u8,image) or Triton names (default: every READY "
                        "model on the server)")
    add_server(p)
    p.add_argument("-b", "--batch-sizes", metavar="LIST",
                   help="e.g. 1-8 or 1,2,4,8 (default 1..max_batch_size of the models: 1-8, as the seed)")
    p.add_argument("-c", "--concurrency", type=concurrency_text, default="1", metavar="RANGE",
                   help="outstanding requests, START[:END[:STEP]] (default 1, as perf_client's table)")
    p.add_argument("--shared-memory", choices=("none", "system", "cuda"), default="none", metavar="M",
                   help="none, system or cuda: pass tensors through system or CUDA shared memory (server on this "
                        "host; cuda: the GPU that serves, perf_analyzer allocates it)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("-p", "--window", type=positive, metavar="MS",
                      help="length of each measurement window (default perf_analyzer's 5000)")
    size.add_argument("--count", type=positive, metavar="N",
                      help="count windows instead: each window lasts until N requests completed (and >= 1 s)")
    p.add_argument("--stability", type=positive, metavar="PCT",
                   help="allowed spread of the last 3 windows before a point counts as stable (default 10)")
    p.add_argument("--metrics", metavar="URL",
                   help="also record Triton's GPU metrics (utilization, power, memory) from URL, e.g. "
                        "localhost:8002/metrics, into the CSVs")
    p.add_argument("--warmup", type=count_or_zero, default=5, metavar="N",
                   help="untimed requests per model x batch size before measuring (default 5): TorchScript "
                        "optimizes on its first calls per input shape, seconds each on a small CPU")
    p.add_argument("--images", type=existing_dir, metavar="DIR",
                   help="JPEG/PNG files sent to encoded-image models (mobilenetv3_image), one per batch item, "
                        "through perf_analyzer --input-data (default: scikit-learn's sample photographs)")
    p.add_argument("--compare", type=Path, metavar="JSON",
                   help="engine_latency.json of perf/bench_engine.py -o DIR: adds in-process throughput and the "
                        "served / in-process ratio per row")
    p.add_argument("--point-timeout", type=positive, metavar="S",
                   help="kill a point's perf_analyzer after S seconds and list it as failed (default: "
                        f"{START_S:g} s + concurrency levels x {MAX_TRIALS} windows x twice the window: "
                        "the window, or --count x 1 s)")
    add_output(p, help="output directory (default perf/out/served-YYYYmmdd-HHMMSS)")
    p.add_argument("--quick", action="store_true",
                   help="short, rough measurements for CI and the demo (--count 5 --stability 1000)")


SOAK_DESCRIPTION = """\
Load truth: sustained concurrent load on every model of a repository, every answer checked. Each concurrency level
runs for --seconds; every worker sends requests of mixed batch sizes to the models in turn: real photographs as
tensors (pt, onnx, u8, trt) and as encoded files (the image ensemble), and inputs that must be refused (NaN pixels;
truncated, empty, non-image and bomb files). Each answer is compared row by row with logits computed in-process from
the repository's own artifacts (FP32 on the CPU) at the tolerance the model's config checks at load.
Without --url it starts the embedded Triton on the repository with the watchdog, as serve.py does, and reports the
watchdog's reloads and the server's memory once a second."""

SOAK_EPILOG = """\
Counted per model and level: ok; wrong (beyond the tolerance, or answered where a refusal was due); refused as due;
rejected (the server shed load: UNAVAILABLE, queue full or timed out); failed (any other error); img/s; latency
p50/p99/max; stalls (answers slower than 10 x the p50 of the same model and level).
Writes OUT/soak.md and OUT/soak.json. Exit status: 0 no wrong answer and no failed request; 1 some (listed);
2 bad usage, or the server could not start."""


def add_soak_arguments(p: argparse.ArgumentParser) -> None:
    add_repo(p, help="the repository whose models are loaded and whose artifacts give the reference logits")
    p.add_argument("-u", "--url", metavar="HOST:PORT",
                   help="gRPC endpoint of a server already serving --repo (default: start the embedded Triton on "
                        "free ports, with the watchdog)")
    p.add_argument("-m", "--models", type=model_names, metavar="LIST",
                   help="comma-separated keys (pt,onnx,u8,trt,image) or Triton names (default: every model of the "
                        "repository)")
    p.add_argument("-c", "--concurrency", default="1,8,32", metavar="LIST",
                   help="concurrency levels, one after the other (default 1,8,32)")
    p.add_argument("--seconds", type=float, default=20.0, metavar="S", help="per level (default 20)")
    add_output(p, help="output directory (default perf/out/soak-YYYYmmdd-HHMMSS)")


def levels(text: str):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise KitError(f"--concurrency {text!r}: give positive integers, e.g. 1,8,32")
    return values


def soak_command(args: argparse.Namespace) -> int:
    from mnv3kit.measure.soak import SoakOptions, markdown, soak, targets, verdict, write
    from mnv3kit.server import LocalTriton, Ports
    from mnv3kit.watchdog import Supervisor

    opts = SoakOptions(levels(args.concurrency), args.seconds)
    if opts.seconds <= 0:
        raise KitError("--seconds must be > 0")
    repo = Path(args.repo)
    if not repo.is_dir():
        raise KitError(f"--repo {repo}: no such directory (build one with build_repo.py)")
    out = args.output or Path("perf/out") / f"soak-{datetime.now():%Y%m%d-%H%M%S}"
    with tempfile.TemporaryDirectory(prefix="mnv3kit-soak-") as work:
        models = targets(repo, args.models, Path(work))
        print(f"soak: {', '.join(t.name for t in models)} at concurrency {', '.join(map(str, opts.concurrency))}, "
              f"{opts.seconds:g} s each", file=sys.stderr)
        if args.url:
            result = soak(args.url, models, opts, progress=lambda line: print(line, file=sys.stderr))
        else:  # served as serve.py serves: the watchdog beside it, a tritonserver that dies started again
            supervisor = Supervisor(LocalTriton(repo, Ports.free()), log=lambda line: print(line, file=sys.stderr))
            server = supervisor.start()
            keeper = threading.Thread(target=supervisor.run, daemon=True)
            keeper.start()
            try:
                result = soak(server.grpc_url, models, opts, lambda: server.proc.pid,
                              progress=lambda line: print(line, file=sys.stderr))
                result["watchdog_events"] = supervisor.watchdog.events if supervisor.watchdog else []
                result["server_restarts"] = len(supervisor.deaths)
            finally:
                supervisor.stop()
    result["options"] = {"concurrency": list(opts.concurrency), "seconds": opts.seconds, "repo": str(repo)}
    write(out, result)
    print(markdown(result))
    print(f"wrote {out / 'soak.md'}, {out / 'soak.json'}", file=sys.stderr)
    return verdict(result)


COMMAND_DESCRIPTION = f"""\
Prints the perf_analyzer command line for one model of a running server, ready to paste: perf_analyzer from the
kit's environment with the LD_LIBRARY_PATH that holds its libcudart.so.12, the admin header for the protocol (the key
read from ${ADMIN_KEY_ENV} when the line runs, never printed), and input data the models accept: zeros for tensor
models (perf_analyzer's default random bytes include NaN and Inf, which the kit's models refuse with "input contains
NaN or Inf values"), real photographs written to a JSON file for the image ensemble."""


def add_command_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, type=model_name, metavar="NAME",
                   help="the model, by key (pt, onnx, u8, image) or Triton name")
    add_server(p, protocol="grpc")
    p.add_argument("-b", "--batch-size", type=positive, default=1, metavar="N", help="default 1")
    p.add_argument("--images", type=existing_dir, metavar="DIR",
                   help="JPEG/PNG files for the image ensemble (default: scikit-learn's sample photographs)")
    add_output(p, default=Path("perf/out"), help="where the image ensemble's input JSON is written")


def command(args: argparse.Namespace) -> int:
    url = args.url or DEFAULT_URLS[args.protocol]
    server = connect(url, args.protocol)
    config = server.model_config(args.model)
    data = "zero"
    if encoded_input(config):
        path = Path(args.output) / f"perf_input_{args.model}_b{args.batch_size}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        from mnv3kit.parity import photo_set

        write_input_data(config, photo_set(args.images, "--images"), path, args.batch_size > 1)
        data = str(path)
    key_set = bool(os.environ.get(ADMIN_KEY_ENV))
    print(command_line(url, args.protocol, args.model, args.batch_size, data, key_set))
    if not key_set:
        print(f"note: ${ADMIN_KEY_ENV} is not set; a server with restricted statistics (serve.py, the kit's compose "
              f"file) refuses perf_analyzer without it", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog_name("mnv3kit.cli.perf")
    if argv[:1] == ["--prog"] and len(argv) > 1:  # a wrapper's name in messages (perf/run_perf.sh)
        prog, argv = argv[1], argv[2:]
    perf_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    formatter = lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=26, width=118)  # noqa
    rn = sub.add_parser("run", prog=f"{prog} run" if prog.startswith(("python -m", "mnv3-")) else prog,
                        usage="%(prog)s [options] [-- extra perf_analyzer arguments]", description=RUN_DESCRIPTION,
                        epilog=RUN_EPILOG, formatter_class=formatter,
                        help="measure every model x batch size of a running server, then report")
    add_run_arguments(rn)
    sk = sub.add_parser("soak", prog=f"{prog} soak" if prog.startswith(("python -m", "mnv3-")) else prog,
                        description=SOAK_DESCRIPTION, epilog=SOAK_EPILOG, formatter_class=formatter,
                        help="sustained load on every model, every answer checked against in-process logits")
    add_soak_arguments(sk)
    cm = sub.add_parser("command", prog=f"{prog} command" if prog.startswith(("python -m", "mnv3-")) else prog,
                        description=COMMAND_DESCRIPTION, formatter_class=formatter,
                        help="print the perf_analyzer command line for one model of a running server")
    add_command_arguments(cm)
    rp = sub.add_parser("report", help="CSV files of a run -> report.md, results.csv, throughput_vs_p99.png")
    rp.add_argument("dir", type=Path)
    rp.add_argument("--compare", type=Path, help="perf/bench_engine.py JSON: adds served / in-process throughput")
    args = p.parse_args(argv)
    args.perf_args = perf_args
    with cli_errors(prog):
        if args.command == "soak":
            return soak_command(args)
        if args.command == "command":
            return command(args)
        return run(args) if args.command == "run" else report(args.dir, args.compare)


if __name__ == "__main__":
    sys.exit(main())
