#!/usr/bin/env python3
"""Served answers against the build's: each python-backend torch model of a repository, through the running server.

  python perf/served_parity.py --repo model_repository_local -u localhost:8001

Every such model carries parity.npz (photographs and their eager FP32 logits, written by the build and checked inside
the model when it loads). This sends those photographs to the server over gRPC, as a client would (FP32 tensors, or
pixels for a UINT8 model), and compares the answers with the stored logits at the tolerance in the model's config.
A fast server that answers wrongly (a broken data path between Triton and the backend) fails here, not in
perf_analyzer. Prints one line per model; exit 1 when any model differs or did not answer, 2 on bad input.
"""

import argparse
import sys

from mnv3kit.cli import add_repo
from mnv3kit.errors import cli_errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_repo(p, help="the repository the server serves (parity.npz files and configs are read from it)")
    p.add_argument("-u", "--url", default="localhost:8001", metavar="HOST:PORT",
                   help="the server's gRPC endpoint (default localhost:8001)")
    args = p.parse_args(argv)
    with cli_errors():
        from mnv3kit.parity import served_parity

        rows = served_parity(args.url, args.repo)
    for r in rows:
        if "error" in r:
            print(f"{r['model']} v{r['version']}: FAILED: {r['error']}")
        else:
            print(f"{r['model']} v{r['version']}: max |logit difference| {r['max_abs_diff']:.3e} on {r['images']} "
                  f"photographs (limit {r['limit']:.1e}), top-1 {'same' if r['top1_same'] else 'DIFFERS'}: "
                  f"{'ok' if r['ok'] else 'FAILED'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
