#!/usr/bin/env python3
"""Overload benchmark: open-loop load at a multiple of the measured capacity against the embedded Triton.

  python perf/overload.py --repo model_repository_local -m mobilenetv3_onnx --factor 2 --duration 60

Starts serve.py's server on loopback (random ports), measures capacity with a closed loop (--probe-s seconds at 2 x
max_batch_size concurrent batch-1 requests, after a 3 s warm-up), then sends batch-1 requests at --factor x
capacity, open loop, for --duration seconds, waits for every answer and measures capacity again. The requests carry
real photographs and every answer, probes included, is checked against logits computed in-process from the
repository's artifact at the model's tolerance (the soak's reference). Prints one JSON object: the repository and
model, capacity before and after, right answers per second over the higher of the two, the rate asked and the rate
sent (lower when this client fell behind), right / wrong / rejected (the queue bound's refusals: UNAVAILABLE) /
failed, the probes' wrong answers, p50 and p99 latency of the answers, p99 of the rejections, the time to drain
after the last request, the server's resident memory (tritonserver + stubs) before, at its peak and after, and the
cores the server and this client used during the probes and the overload (on a small host the client's share is
taken from the server: per_server_core_vs_capacity is right answers per second per core the server used, over the
same at capacity, the better probe), and the model's log lines about the overload and its cores (yield_core).
Compare a repository built with `--max-queue-size 0 --queue-timeout-ms 0` (no bound). On a host with cores to
spare, --server-cpus and --client-cpus keep the two apart (the server and its stubs start on the first set; this
process then moves to the second), so the client takes nothing from the server.
Exit status: 0, or 1 when an answer was wrong or a request failed other than by the queue's refusal.
"""

import argparse
import functools
import json
import sys
import threading
import time

from mnv3kit.cli import add_cpu_sets, add_model, add_repo
from mnv3kit.errors import cli_errors
from mnv3kit.process import cores_during, pin_threads, rss_mb, split_cpus
from mnv3kit.spec import ONNX


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_repo(p, help="a --target local repository")
    add_model(p, ONNX.name)
    p.add_argument("--factor", type=float, default=2.0, help="load = factor x measured capacity (default 2)")
    p.add_argument("--rate", type=float, help="requests per second instead of factor x capacity")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--probe-s", type=float, default=10.0, help="seconds of the capacity measurement (default 10)")
    p.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, s (default 30)")
    add_cpu_sets(p)
    args = p.parse_args(argv)
    with cli_errors():
        from mnv3kit.measure.loadgen import OpenLoop, capacity, model_target, summarize
        from mnv3kit.server import LocalTriton, Ports
        from mnv3kit.validate import queue_bound

        spec, target = model_target(args.repo, args.model)
        server_cpus, client_cpus = split_cpus(args.server_cpus, args.client_cpus)
        with LocalTriton(args.repo, Ports.free()) as server:
            pin_threads(client_cpus)
            clients = 2 * max(1, target.config.max_batch_size)
            probe = functools.partial(capacity, server.grpc_url, target, args.probe_s, clients)
            _, probe_wrong = capacity(server.grpc_url, target, 3.0, clients)  # warm-up: new batch sizes cost more
            (cap, wrong), probe_cores = cores_during(probe, server.proc.pid)
            probe_wrong += wrong
            rate = args.rate or args.factor * cap
            time.sleep(2)  # let the probe's queue empty
            before = rss_mb(server.proc.pid)
            peak = [before]
            stop = threading.Event()

            def sample():
                while not stop.wait(0.5):
                    peak.append(rss_mb(server.proc.pid))

            sampler = threading.Thread(target=sample)
            sampler.start()
            load = OpenLoop(server.grpc_url, target, timeout_s=args.timeout)
            outcomes, load_cores = cores_during(lambda: load.run(rate, args.duration), server.proc.pid)
            load.close()
            last_sent = max(o.sent for o in outcomes)
            time.sleep(5)
            stop.set()
            sampler.join()
            (cap_after, wrong), after_cores = cores_during(probe, server.proc.pid)
            probe_wrong += wrong
            answered = summarize(outcomes, args.duration)
            # per core of the server: on a small host the open-loop client's CPU (more requests to send than at
            # capacity) is taken from the server, which a client on another host would not take
            per_core = max(cap / max(probe_cores["server"], 0.01), cap_after / max(after_cores["server"], 0.01))
            served_per_core = answered["ok"] / args.duration / max(load_cores["server"], 0.01)
            bound, timeout_us = queue_bound(target.config)
            result = {"repo": str(args.repo), "model": spec.name, "max_queue_size": bound,
                      "queue_timeout_ms": timeout_us / 1000, "capacity_rps": round(cap, 1),
                      "capacity_after_rps": round(cap_after, 1), "rate_asked": round(rate, 1),
                      "answered_vs_capacity": round(answered["ok"] / args.duration / max(cap, cap_after), 3),
                      "per_server_core_vs_capacity": round(served_per_core / per_core, 3),
                      "duration_s": args.duration, **answered, "probes_wrong": probe_wrong,
                      "drain_s": round(max(o.done for o in outcomes) - last_sent, 2),
                      "rss_mb": {"before": round(before), "peak": round(max(peak)), "after": round(peak[-1])},
                      "cpus": {"server": server_cpus, "client": client_cpus},
                      "cores": {"probe": probe_cores, "overload": load_cores, "probe_after": after_cores},
                      "model_log": [line.split("] ", 1)[-1].strip('"') for line in server.log_text().splitlines()
                                    if f"{spec.name}_" in line and ("overload" in line or "core" in line)][-12:]}
        print(json.dumps(result))
        return 1 if answered["wrong"] or answered["failed"] or probe_wrong else 0


if __name__ == "__main__":
    sys.exit(main())
