"""Ask a Triton server from a shell script.

  python -m mnv3kit.cli.triton ready -u localhost:8000 --wait 120 [--pid PID]   # exit 0 once /v2/health/ready is 200
"""

import argparse
import sys

from mnv3kit.cli import add_server
from mnv3kit.errors import cli_errors
from mnv3kit.process import pid_alive
from mnv3kit.triton import Triton


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mnv3kit.cli.triton", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("ready", help="exit 0 when the server is ready, 1 when it is not (after --wait seconds)")
    add_server(r)
    r.add_argument("--wait", type=float, default=0.0, metavar="S", help="keep asking for this long (default 0)")
    r.add_argument("--pid", type=int, help="stop waiting when this process (the server's) has exited")
    args = p.parse_args(argv)
    with cli_errors(p.prog):
        triton = Triton(args.url, args.protocol, timeout=5.0)
        if triton.wait_ready(args.wait, alive=lambda: args.pid is None or pid_alive(args.pid)) or triton.ready():
            return 0
        why = f"process {args.pid} exited" if args.pid and not pid_alive(args.pid) else (
            f"after {args.wait:g} s" if args.wait else "")
        print(f"{p.prog}: Triton at {triton.url} ({args.protocol}) is not ready{' (' + why + ')' if why else ''}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
