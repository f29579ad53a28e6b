#!/usr/bin/env python3
"""CPU serving regression benchmark: the kit's server vs PyTriton serving the same artifacts vs in-process.

  python perf/regression.py --repo model_repository_local -o perf/results/regression-YYYYmmdd

Both servers run the same tritonserver binary on this host at once (free loopback ports): the kit's (serve.py's
Supervisor: LocalTriton and the watchdog) and PyTriton's (perf/pytriton_server.py, the models in its Python process).
After WARMUP_S of unmeasured load per server and model (TorchScript optimizes on its first calls per batch size,
PyTriton has no model_warmup), rounds alternate the order of the two servers; each point is a closed loop of N concurrent clients sending batch-1
gRPC requests of real photographs for --seconds, and every answer is compared with logits computed in-process from
the repository's artifacts at the model's load-time tolerance (mnv3kit.measure.soak): wrong and failed answers are
reported next to img/s, with the cores each server's process tree and the client used meanwhile. In-process: the runner the kit's model.py uses (TorchScript / ONNX Runtime / OpenVINO, this process),
batch 1 back to back (what concurrency 1 can reach) and batch max_batch_size (what dynamic batching can reach).
Then perf_analyzer at concurrency 1 with its default windows on each server, to show whether it measures stably.
On a host with cores to spare, --server-cpus and --client-cpus put both servers and the in-process runner on the
first set and the load generator and perf_analyzer on the second, as a client on another host would be.
Writes OUT/REPORT.md, OUT/regression.json and OUT/logs/ (PyTriton's output: pytriton.log); the medians over rounds and their spread (min-max) are reported.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mnv3kit.cli import add_cpu_sets
from mnv3kit.perf import PointFailed, Settings, measure_point
from mnv3kit.report import hardware, hardware_line, markdown_table, now
from mnv3kit.spec import ONNX, OV, OV_U8, PT

SERVERS = ("kit", "pytriton")
WARMUP_S = 10.0  # per server and model, at the highest level
PYTRITON_START_S = 300
PYTRITON_TORCHSCRIPT = {"kit": "with the kit's runner (frozen, optimized for oneDNN)",
                        "plain": "as torch.jit.load gives it"}


def start_pytriton(repo: Path, log: Path, torchscript: str = "kit"):
    """PyTriton serving ``repo`` (perf/pytriton_server.py), its output in ``log``; returns once it prints "ready".
    The output goes to a file, not a pipe: a pipe nobody reads after startup would stall PyTriton once it fills."""
    from mnv3kit.server import Ports

    ports = Ports.free()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("pytriton_server.py")), "--repo",
                                 str(repo), "--http-port", str(ports.http), "--grpc-port", str(ports.grpc),
                                 "--metrics-port", str(ports.metrics), "--torchscript", torchscript], stdout=sink, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    deadline = time.monotonic() + PYTRITON_START_S
    while time.monotonic() < deadline and proc.poll() is None:
        if "ready" in log.read_text().splitlines():
            return proc, f"127.0.0.1:{ports.grpc}"
        time.sleep(0.5)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    tail = " | ".join(log.read_text().strip().splitlines()[-3:])
    raise SystemExit(f"regression.py: error: PyTriton did not become ready within {PYTRITON_START_S} s "
                     f"(exit {proc.wait()}); its log {log} ends: {tail}")


def in_process(repo: Path, model: str, max_batch: int, seconds: float) -> dict:
    """img/s of the runner model.py uses, at batch 1 and at max_batch, back to back."""
    from mnv3kit.measure.soak import artifact_runner
    from mnv3kit.bench import measure_loop

    run = artifact_runner(repo, repo / model)  # the runner model.py uses, at the served precision
    out = {}
    for batch in (1, max_batch):
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8) if getattr(run, "input_dtype", None) == np.uint8 \
            else rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
        probe = measure_loop(lambda: run(x), 10, 3)  # TorchScript optimizes on its first calls per shape
        iters = max(5, int(seconds * 1000 / probe))
        out[batch] = batch * 1000 / measure_loop(lambda: run(x), 2, iters)
    return out


def perf_analyzer_c1(url: str, model: str, out: Path, name: str) -> str:
    try:
        rows = measure_point(url, "grpc", model, 1, Settings(), out / "csv" / f"{name}_{model}.csv",
                             out / "logs" / f"{name}_{model}.log", admin_key=os.environ.get("TRITON_ADMIN_KEY"))
        r = rows[0]
        return f"stable: {r['throughput']:.1f} infer/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
    except PointFailed as exc:
        return f"FAILED: {exc}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("model_repository_local"), help="a --target local repository")
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--seconds", type=float, default=15.0, help="per point (default 15)")
    p.add_argument("-c", "--concurrency", default="1,8", help="levels (default 1,8)")
    p.add_argument("-m", "--models", default=None,
                   help="Triton model names, comma-separated (default: mobilenetv3_pt, mobilenetv3_onnx, "
                        "mobilenetv3_openvino and mobilenetv3_openvino_u8, those the repository holds)")
    p.add_argument("--pytriton-torchscript", choices=("kit", "plain"), default="kit",
                   help="how PyTriton runs model.pt: kit (the kit's runner; default) or plain (torch.jit.load as it "
                        "is, what a PyTriton user writes first)")
    add_cpu_sets(p)
    args = p.parse_args(argv)
    from mnv3kit.errors import cli_errors
    from mnv3kit.measure.soak import SoakOptions, load_level, targets
    from mnv3kit.process import cores_during, pin_threads, split_cpus
    from mnv3kit.server import LocalTriton, Ports
    from mnv3kit.watchdog import Supervisor

    host, started = hardware(), now()
    levels = [int(c) for c in args.concurrency.split(",")]
    models = args.models.split(",") if args.models else [
        s.name for s in (PT, ONNX, OV, OV_U8) if (args.repo / s.name / "config.pbtxt").is_file()]
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mnv3kit-regression-") as work:  # the edge images the soak writes
        checked = {t.name: t for t in targets(args.repo, models, Path(work))}
    max_batch = {m: checked[m].config.max_batch_size for m in models}
    with cli_errors():
        server_cpus, client_cpus = split_cpus(args.server_cpus, args.client_cpus)
    print("in-process ...", file=sys.stderr)
    local = {m: in_process(args.repo, m, max_batch[m], args.seconds / 2) for m in models}
    opts = SoakOptions(seconds=args.seconds, batch=1, refuse_every=0)
    points = []
    supervisor = Supervisor(LocalTriton(args.repo, Ports.free()), log=lambda line: print(line, file=sys.stderr))
    kit = supervisor.start()
    pyt, pyt_url = start_pytriton(args.repo, out / "logs" / "pytriton.log", args.pytriton_torchscript)
    urls = {"kit": kit.grpc_url, "pytriton": pyt_url}
    pids = {"kit": lambda: supervisor.server.proc.pid, "pytriton": lambda: pyt.pid}  # the kit's after any restart
    pin_threads(client_cpus)
    stability = {}
    try:
        # unmeasured: TorchScript optimizes on its first calls per batch size, seconds each, in both servers
        for server in SERVERS:
            for model in models:
                load_level(urls[server], [checked[model]], max(levels), SoakOptions(seconds=WARMUP_S, batch=1))
        for r in range(args.rounds):
            order = SERVERS if r % 2 == 0 else SERVERS[::-1]
            for model in models:
                for level in levels:
                    for server in order:
                        rows, cores = cores_during(lambda: load_level(urls[server], [checked[model]], level, opts),
                                                   pids[server]())
                        row = rows[0]
                        row.update(server=server, round=r + 1, server_cores=cores["server"],
                                   client_cores=cores["client"])
                        points.append(row)
                        print(f"round {r + 1} {server:<8} {model} c{level}: {row['img_per_s']:.1f} img/s, p50 "
                              f"{row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} max {row['max_ms']:.1f} ms, wrong "
                              f"{row['wrong']}, failed {row['failed']}", file=sys.stderr)
        os.environ["TRITON_ADMIN_KEY"] = kit.admin_key
        for server in SERVERS:
            stability[server] = perf_analyzer_c1(urls[server], models[0], out, server)
        events = supervisor.watchdog.events
    finally:
        supervisor.stop()
        os.killpg(pyt.pid, signal.SIGINT)
        try:
            pyt.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(pyt.pid, signal.SIGKILL)
    result = {"started": started, "hardware": host, "repo": str(args.repo), "rounds": args.rounds,
              "seconds": args.seconds, "in_process": local, "points": points, "perf_analyzer_c1": stability,
              "watchdog_events": events, "pytriton_torchscript": args.pytriton_torchscript,
              "cpus": {"server": server_cpus, "client": client_cpus}, "cores": len(server_cpus)}
    (out / "regression.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "REPORT.md").write_text(report(result, models, levels, max_batch))
    print(report(result, models, levels, max_batch))
    return 1 if any(p["wrong"] or p["failed"] for p in points) else 0


def report(result: dict, models, levels, max_batch) -> str:
    from mnv3kit.process import cpus_text

    rows, core_rows = [], []
    cores = result["cores"]
    for model in models:
        for level in levels:
            med, server_cores, cells, used = {}, {}, [], []
            for server in SERVERS:
                pts = [p for p in result["points"] if p["server"] == server and p["model"] == model
                       and p["concurrency"] == level]
                rates = [p["img_per_s"] for p in pts]
                med[server] = float(np.median(rates))
                server_cores[server] = float(np.median([p["server_cores"] for p in pts]))
                cells += [f"{med[server]:.1f} ({min(rates):.1f}-{max(rates):.1f})",
                          f"{np.median([p['p50_ms'] for p in pts]):.1f} / {np.median([p['p99_ms'] for p in pts]):.1f}"
                          f" / {max(p['max_ms'] for p in pts):.0f}",
                          f"{sum(p['wrong'] for p in pts)} / {sum(p['failed'] for p in pts)}"]
                used += [f"{server_cores[server]:.2f} / {np.median([p['client_cores'] for p in pts]):.2f}",
                         f"{med[server] / max(server_cores[server], 0.01):.1f}"]
            batch = 1 if level == 1 else max_batch[model]
            local = result["in_process"][model][batch]
            rows.append([model, level, *cells, f"{local:.1f} (b{batch})", f"{med['kit'] / med['pytriton']:.2f}",
                         f"{med['kit'] / max(local, med['pytriton']):.2f}"])
            # the kit's img/s if its server computed at the in-process rate per core on every core it had
            core_rows.append([model, level, *used, f"{local / cores:.1f}",
                              f"{local / cores * server_cores['kit'] / med['pytriton']:.2f}"])
    table = markdown_table(
        ["model", "c", "kit img/s (min-max)", "kit p50/p99/max ms", "kit wrong/failed", "PyTriton img/s (min-max)",
         "PyTriton p50/p99/max ms", "PyTriton wrong/failed", "in-process img/s", "kit / PyTriton",
         "kit / fastest other"], rows)
    core_table = markdown_table(
        ["model", "c", "kit cores: server / client", "kit img/s per server core", "PyTriton cores: server / client",
         "PyTriton img/s per server core", f"in-process img/s per core ({cores} core{'s' if cores != 1 else ''})",
         "kit / PyTriton at the in-process rate on the kit's server cores"], core_rows)
    stab = "\n".join(f"- {server}: {text}" for server, text in result["perf_analyzer_c1"].items())
    cpus = result["cpus"]
    where = (f"both on this host's {cores} cores" if cpus["server"] == cpus["client"] else
             f"the servers and the in-process runner on CPUs {cpus_text(cpus['server'])}, the client on CPUs "
             f"{cpus_text(cpus['client'])}")
    return (f"# CPU serving regression benchmark\n\n{result['started']}; {hardware_line(result['hardware'])}; "
            f"repository {result['repo']}; {result['rounds']} alternating rounds of {result['seconds']:g} s per "
            f"point; batch-1 gRPC requests of real photographs, every answer checked against in-process logits; "
            f"PyTriton runs model.pt {PYTRITON_TORCHSCRIPT[result['pytriton_torchscript']]}.\n\n"
            f"{table}\n\nCores used during the points (medians; server: the server's process tree, client: this "
            f"process's load generator; {where}):\n\n{core_table}\n\n"
            f"perf_analyzer, concurrency 1, default windows ({models[0]}, zeros):\n{stab}\n\n"
            f"Watchdog reloads on the kit's server: {len(result['watchdog_events'])}.\n")


if __name__ == "__main__":
    sys.exit(main())
