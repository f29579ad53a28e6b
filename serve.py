#!/usr/bin/env python3
"""Serve a --target local model repository with the embedded Triton (no Docker, no GPU needed).

  python serve.py --repo model_repository_local

Starts the real tritonserver 2.51.0 bundled in the nvidia-pytriton wheel (python backend), waits until
/v2/health/ready answers, prints the endpoints and ready models, and runs until Ctrl-C or SIGTERM, then stops the
server and its backend processes. A repository that fails to load prints the server's errors and exits non-zero.
Repositories for NVIDIA's image (--target ngc) need `docker compose up triton` instead.
"""

import argparse
import signal
import sys
import time
from pathlib import Path

from mnv3kit.errors import KitError, cli_errors


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("model_repository_local"),
                   help="repository built with build_repo.py --target local (default model_repository_local)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log-file", type=Path, help="server log (default: a temporary file, printed at start)")
    p.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level (default 0)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness (default 120)")
    return p.parse_args(argv)


def _stop_on_sigterm(*_):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors("serve.py"):
        from mnv3kit.repository import read_manifest
        from mnv3kit.server import LocalTriton, Ports

        manifest = read_manifest(args.repo) if args.repo.is_dir() else {}
        if manifest.get("target") == "ngc":
            raise KitError(f"{args.repo} targets NVIDIA's Triton image (native backends); the embedded Triton runs "
                           f"only python-backend models: build with `build_repo.py --target local` or use "
                           f"`docker compose up triton`")
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        server = LocalTriton(args.repo, Ports(args.http_port, args.grpc_port, args.metrics_port),
                             log_path=args.log_file, verbose=args.log_verbose)
        try:
            server.start(timeout=args.timeout)
            print(f"Triton {server.version()} ready: {', '.join(server.ready_models())}")
            print(f"  HTTP    http://{server.http_url}   gRPC  {server.grpc_url}   "
                  f"metrics http://localhost:{server.ports.metrics}/metrics")
            print(f"  log     {server.log_path}")
            print("Ctrl-C stops it.", flush=True)
            while server.proc.poll() is None:
                time.sleep(0.5)
            raise KitError(f"tritonserver exited with code {server.proc.returncode}:\n"
                           + "\n".join(server.error_lines()[-15:]))
        except KeyboardInterrupt:
            print("stopping Triton...", file=sys.stderr)
            return 0
        finally:
            server.close()


if __name__ == "__main__":
    sys.exit(main())
