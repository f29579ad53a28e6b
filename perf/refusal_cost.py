#!/usr/bin/env python3
"""What a refused request costs the server, in CPU, against an answered one.

  python perf/refusal_cost.py --repo model_repository_local -m mobilenetv3_onnx

Starts serve.py's server on loopback (random ports) and runs three closed loops of batch-1 gRPC requests of real
photographs, --seconds each, --rounds times, measuring the CPU time of the server's process tree (tritonserver and
its stubs) during each:
  answers     2 x max_batch_size clients, every answer checked against logits computed in-process from the
              repository's artifact (the soak's reference);
  core        the same requests with a shape the config does not allow (the same bytes): tritonserver refuses them
              itself, before any backend, the cheapest refusal it can make;
  queue       --overload-clients clients (more than the model's queue admits): the model's own bound refuses the
              excess in its stub (UNAVAILABLE "Exceeds maximum queue size"), answers are checked as above.
It prints one JSON object per loop, then a summary: server CPU ms per answer, per core refusal, and per queue
refusal (the queue loop's CPU less its answers at the answers loop's cost per answer), each refusal's cost r in
answers, and the share of capacity left at 2 x capacity if the server's cores were the only limit:
(1 - 2r) / (1 - r). On a small host the client's CPU is taken from the server; on a host with cores to spare,
--server-cpus and --client-cpus keep the two apart.
Exit status: 0, or 1 when an answer was wrong or a request failed other than by the refusal the loop expects.
"""

import argparse
import json
import sys
import time

from mnv3kit.cli import add_cpu_sets, add_model, add_repo
from mnv3kit.errors import cli_errors
from mnv3kit.spec import ONNX, OVERLOADED


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_repo(p, help="a --target local repository")
    add_model(p, ONNX.name)
    p.add_argument("--seconds", type=float, default=10.0, help="per loop (default 10)")
    p.add_argument("--rounds", type=int, default=2, help="times the three loops run (default 2)")
    p.add_argument("--overload-clients", type=int, default=96,
                   help="clients of the queue loop (default 96: three times the kit's default bound of 32)")
    add_cpu_sets(p)
    args = p.parse_args(argv)
    with cli_errors():
        from tritonclient.grpc import service_pb2

        from mnv3kit.measure.loadgen import Requests, capacity, closed_loop, model_target
        from mnv3kit.process import cpu_seconds, pin_threads, split_cpus
        from mnv3kit.server import LocalTriton, Ports

        spec, target = model_target(args.repo, args.model)
        clients = 2 * max(1, target.config.max_batch_size)
        requests = Requests(target)
        misshapen = service_pb2.ModelInferRequest.FromString(requests.message(0))
        misshapen.inputs[0].shape.append(1)  # [1, 3, 224, 224, 1]: the same bytes, a rank the config refuses
        misshapen = misshapen.SerializeToString()
        loops = (("answers", clients, requests.message, ()),
                 ("core", clients, lambda n: misshapen, ("unexpected shape",)),
                 ("queue", args.overload_clients, requests.message, OVERLOADED))
        rows, bad = [], 0
        server_cpus, client_cpus = split_cpus(args.server_cpus, args.client_cpus)
        with LocalTriton(args.repo, Ports.free()) as server:
            pin_threads(client_cpus)
            url, pid = server.grpc_url, server.proc.pid
            capacity(url, target, 3.0, clients)  # warm-up: every batch size once
            for round_ in range(args.rounds):
                for name, n_clients, message, expected in loops:
                    time.sleep(2)  # let the last loop's requests drain
                    cpu0, start = cpu_seconds(pid), time.monotonic()
                    answers, wrong, errors = closed_loop(url, n_clients, args.seconds, message, requests.check)
                    wall, cpu = time.monotonic() - start, cpu_seconds(pid) - cpu0
                    refused = sum(count for why, count in errors.items() if any(e in why for e in expected))
                    failed = sum(errors.values()) - refused
                    bad += wrong + failed
                    rows.append({"round": round_ + 1, "loop": name, "clients": n_clients, "answers": answers,
                                 "refused": refused, "wrong": wrong, "failed": failed,
                                 "server_cores": round(cpu / wall, 2), "server_cpu_s": round(cpu, 2),
                                 "errors": errors})
                    print(json.dumps(rows[-1]), flush=True)

        def total(loop, key):
            return sum(r[key] for r in rows if r["loop"] == loop)

        per_answer = total("answers", "server_cpu_s") / max(total("answers", "answers"), 1)
        per_core = total("core", "server_cpu_s") / max(total("core", "refused"), 1)
        # the queue loop's CPU less its answers, each at the answers loop's cost
        queue_refusals_s = max(0.0, total("queue", "server_cpu_s") - per_answer * total("queue", "answers"))
        per_queue = queue_refusals_s / max(total("queue", "refused"), 1)
        cost_ms = {"answer": per_answer, "core_refusal": per_core, "queue_refusal": per_queue}
        summary = {"model": spec.name, "cpus": {"server": server_cpus, "client": client_cpus},
                   "server_cpu_ms": {key: round(1000 * value, 3) for key, value in cost_ms.items()}}
        for name, cost in (("core", per_core), ("queue", per_queue)):
            r = cost / per_answer
            summary[f"r_{name}"] = round(r, 3)
            summary[f"share_at_2x_{name}"] = round((1 - 2 * r) / (1 - r), 3) if r < 0.5 else 0.0
        summary["wrong_or_failed"] = bad
        print(json.dumps(summary))
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
