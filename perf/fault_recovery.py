#!/usr/bin/env python3
"""Faults: a killed backend process and a model update under open-loop load, and a sweep of malformed requests.

  python perf/fault_recovery.py stub-kill --repo model_repository_local --rate 2 --duration 40
  python perf/fault_recovery.py update --repo model_repository_local --weights new.pth --rate 2
  python perf/fault_recovery.py malformed --repo model_repository_local -o perf/out/faults
  python perf/fault_recovery.py memory --repo model_repository_local -o perf/out/faults

Serves a copy of the repository with serve.py's server and watchdog (loopback, random ports) and sends batch-1
requests to mobilenetv3_pt over gRPC at --rate per second. stub-kill: after 5 s, kill -9 of the model's python
backend stub. update: after 5 s, build_repo.py --weights WEIGHTS into the served repository (the flags the copy was
built with: arch and target from its manifest). The requests carry real photographs and every answer is checked
against logits computed in-process from the repository's artifact (for update: the old or the new weights', the new
built beforehand into a scratch repository). Prints one JSON object: requests sent / right / wrong / rejected / failed,
failed requests after the fault, when the model was READY again (or the new build served), and how long
/v2/health/ready and the model's readiness reported not-ready; exit 1 when an answer was wrong.
malformed: serves the repository as it is and sends each malformed request kind (mnv3kit/measure/faults.py) over raw HTTP
and gRPC, each followed by readiness checks and a real photograph's logits, which must stay bit-identical, and last
the request known to kill Triton 2.51 (deeply nested JSON); writes malformed.md and malformed.json into --output.
Exit 1 when a kind was not refused or the server was hurt (so with 2.51, always: that last one kills it).
memory: tritonserver's RSS before, after 1 and after --count refused 200 MB requests over HTTP and gRPC, and 3 s
later, for Triton's defaults (glibc malloc, gRPC allocation pool 8), pool 0 alone, and serve.py's default (jemalloc
where installed, pool 0); writes memory.json into --output.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mnv3kit.cli import add_output, add_repo
from mnv3kit.errors import KitError, cli_errors
from mnv3kit.spec import PT


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fault", choices=("stub-kill", "update", "malformed", "memory"))
    add_repo(p, help="a --target local repository")
    p.add_argument("--weights", type=Path, help="update: the new weights")
    p.add_argument("--rate", type=float, default=2.0, help="requests per second (default 2)")
    p.add_argument("--duration", type=float, default=40.0, help="seconds of load at least (default 40)")
    p.add_argument("--count", type=int, default=10, help="memory: refused 200 MB requests per protocol (default 10)")
    add_output(p, Path("perf/out/faults"), help="malformed, memory: where the table goes")
    args = p.parse_args(argv)
    with cli_errors():
        if args.fault == "malformed":
            return malformed(args.repo, args.output)
        if args.fault == "memory":
            return memory(args.repo, args.output, args.count)
        from mnv3kit.measure.loadgen import background_load, summarize
        from mnv3kit.measure.soak import targets
        from mnv3kit.process import descendants
        from mnv3kit.repository import read_manifest
        from mnv3kit.server import LocalTriton, Ports
        from mnv3kit.triton import Triton
        from mnv3kit.watchdog import Watchdog

        if args.fault == "update" and not (args.weights and args.weights.is_file()):
            raise KitError("update needs --weights FILE")
        manifest = read_manifest(args.repo)
        work = Path(tempfile.mkdtemp(prefix="mnv3kit-faults-"))
        repo = work / "repo"
        shutil.copytree(args.repo, repo)

        def rebuild(into: Path) -> None:
            subprocess.run([sys.executable, "-m", "mnv3kit.cli.build", "--target", manifest["target"],
                            "--arch", manifest["arch"], "--weights", str(args.weights), "-o", str(into)],
                           check=True, capture_output=True)

        try:
            (target,) = targets(repo, [PT.name], work)
            alternatives = []
            if args.fault == "update":  # the answers of the new weights, from a build of them of its own
                rebuild(work / "next")
                alternatives = targets(work / "next", [PT.name], work)
            with LocalTriton(repo, Ports.free()) as server:
                watchdog = Watchdog(server, log=lambda line: print(line, file=sys.stderr, flush=True))
                watchdog.start()
                stop = threading.Event()
                not_ready = {"server": 0.0, "model": 0.0}

                def probes():  # readiness as a load balancer or Kubernetes would see it, every 0.1 s
                    api = Triton(server.http_url, timeout=1.0)  # this thread's own client
                    while not stop.wait(0.1):
                        not_ready["server"] += 0.0 if api.ready() else 0.1
                        not_ready["model"] += 0.0 if api.model_ready(PT.name) else 0.1

                prober = threading.Thread(target=probes)
                prober.start()
                with background_load(server.grpc_url, target, args.rate, alternatives=alternatives) as outcomes:
                    time.sleep(5)
                    fault_at = time.monotonic()
                    if args.fault == "stub-kill":
                        stub = next(pid for pid in descendants(server.proc.pid)[1:]
                                    if f"/{PT.name}/".encode() in Path(f"/proc/{pid}/cmdline").read_bytes())
                        os.kill(stub, signal.SIGKILL)
                    else:
                        rebuild(repo)
                    while not watchdog.events and time.monotonic() - fault_at < 300:
                        time.sleep(0.1)
                    recovered_at = time.monotonic()
                    time.sleep(max(3.0, args.duration - (recovered_at - fault_at) - 5))
                stop.set()
                prober.join()
                watchdog.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        after = [o for o in outcomes if o.sent >= fault_at]
        result = {"fault": args.fault, "rate": args.rate, **summarize(outcomes, max(o.sent for o in outcomes)
                                                                      - min(o.sent for o in outcomes)),
                  "failed_or_rejected_after_fault": sum(o.error is not None for o in after),
                  "watchdog": watchdog.events,
                  "fault_to_recovered_s": round(recovered_at - fault_at, 2) if watchdog.events else None,
                  "first_ok_after_fault_s": round(min((o.done - fault_at for o in after if o.error is None),
                                                      default=float("nan")), 2),
                  "not_ready_s": {k: round(v, 1) for k, v in not_ready.items()}}
        print(json.dumps(result))
        return 1 if result["wrong"] else 0


def malformed(repo: Path, output: Path) -> int:
    from mnv3kit.measure.faults import Target, sweep, write_report
    from mnv3kit.parity import parity_batch, sample_photos
    from mnv3kit.server import LocalTriton, Ports

    with LocalTriton(repo, Ports.free()) as server:
        target = Target(server, PT)
        title = f"Malformed requests, Triton {server.version()}, {PT.name} of {repo}"
        try:
            probes = sweep(target, parity_batch(sample_photos()[:1], 1),
                           log=lambda line: print(line, file=sys.stderr, flush=True), killers=True)
        finally:
            target.close()
    table, data = write_report(probes, output, title)
    bad = [f"{p.kind} [{p.protocol}]" for p in probes if not (p.refused and p.healthy and p.logits_unchanged)]
    print(json.dumps({"kinds": len(probes), "refused": sum(p.refused for p in probes),
                      "refused_as_client_error": sum(p.client_error for p in probes),
                      "healthy_after_each": all(p.healthy for p in probes),
                      "logits_unchanged_after_each": all(p.logits_unchanged for p in probes),
                      "not_refused_or_hurt": bad, "table": str(table), "json": str(data)}))
    return 1 if bad else 0


def memory(repo: Path, output: Path, count: int) -> int:
    from mnv3kit.measure.faults import Target, refused_body_rss
    from mnv3kit.server import GRPC_ALLOCATION_POOL, LocalTriton, Ports

    setups = [("Triton's defaults: glibc malloc, gRPC pool 8", "glibc", 8),
              ("glibc malloc, gRPC pool 0", "glibc", GRPC_ALLOCATION_POOL),
              ("serve.py's default: jemalloc, gRPC pool 0", "auto", GRPC_ALLOCATION_POOL)]
    rows = []
    for name, allocator, pool in setups:
        with LocalTriton(repo, Ports.free(), allocator=allocator, grpc_pool=pool) as server:
            target = Target(server, PT)
            for protocol in ("http", "grpc"):
                row = {"setup": name, "allocator": server.jemalloc or "glibc", "grpc_pool": pool,
                       **refused_body_rss(target, protocol, count)}
                print(json.dumps(row), flush=True)
                rows.append(row)
            target.close()
    output.mkdir(parents=True, exist_ok=True)
    (output / "memory.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
