"""Serve a --target local model repository with the embedded Triton (no Docker, no GPU needed).

  python serve.py --repo model_repository_local

Starts the real tritonserver 2.51.0 bundled in the nvidia-pytriton wheel (python backend), waits until
/v2/health/ready answers, prints the endpoints and ready models, and runs until Ctrl-C, SIGTERM or SIGHUP, then
stops the server and its backend processes. The server listens on 127.0.0.1 unless --address says otherwise; its
admin APIs (shared memory, model repository, statistics, trace, logging) need the header `admin-key: KEY`, with KEY
from $TRITON_ADMIN_KEY or generated per start and written to a file only you can read. A watchdog reloads a model
whose backend process died (Triton itself keeps reporting it ready) and loads the repository again when build_repo.py
rebuilds it (the old models serve until the new ones are ready). A tritonserver that dies (a crash, a request that
kills it, kill -9) is started again on the same ports with the same admin key, at most --restarts times in 10 minutes.
Repositories for NVIDIA's image (--target ngc) need `docker compose up triton` instead.

exit codes: 0 stopped cleanly, 1 stopped but the server had to be killed or left something behind,
            2 bad input, the repository failed to load, or the server died more than --restarts times in 10 minutes
"""

import argparse
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path

from mnv3kit.cli import add_repo
from mnv3kit.errors import KitError, cli_errors, prog_name
from mnv3kit.server import ALLOCATORS
from mnv3kit.spec import ADMIN_HEADER, ADMIN_KEY_ENV


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_repo(p, help="repository built with build_repo.py --target local")
    p.add_argument("--address", default="127.0.0.1",
                   help="address the HTTP, gRPC and metrics endpoints listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 for every interface)")
    p.add_argument("--admin-key-file", type=Path,
                   help=f"write the generated admin key here, mode 0600 (default: the server's temporary directory; "
                   f"ignored when ${ADMIN_KEY_ENV} gives the key)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log-file", type=Path, help="server log (default: a temporary file, printed at start)")
    p.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level (default 0)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness (default 120)")
    p.add_argument("--allocator", choices=ALLOCATORS, default="auto",
                   help="the server's malloc: jemalloc (auto: where installed, as Debian's libjemalloc2) gives "
                   "the memory of large or refused requests back within a second; glibc's keeps it (default auto)")
    p.add_argument("--restarts", type=int, default=3, metavar="N",
                   help="start a tritonserver that died again, at most N times in 10 minutes; one more death ends "
                   "serve.py with exit 2 (default 3; 0: never)")
    p.add_argument("--no-watchdog", action="store_true",
                   help="neither reload a model whose backend stub process died nor load a rebuilt repository "
                   "(both on by default, checked every 0.5 s)")
    return p.parse_args(argv)


RESTART_WINDOW_S = 600  # --restarts counts the deaths within this many seconds


def _stop_on_signal(*_):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors():
        from mnv3kit.repository import read_manifest
        from mnv3kit.server import LocalTriton, Ports
        from mnv3kit.watchdog import Watchdog

        manifest = read_manifest(args.repo) if args.repo.is_dir() else {}
        if manifest.get("target") == "ngc":
            raise KitError(f"{args.repo} targets NVIDIA's Triton image (native backends); the embedded Triton runs "
                           f"only python-backend models: build with `build_repo.py --target local` or use "
                           f"`docker compose up triton`")
        # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then keeps it ignored
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _stop_on_signal)
        if args.restarts < 0:
            raise KitError(f"--restarts {args.restarts}: give 0 or more")

        def new_server(admin_key):
            return LocalTriton(args.repo, Ports(args.http_port, args.grpc_port, args.metrics_port),
                               log_path=args.log_file, verbose=args.log_verbose, address=args.address,
                               admin_key=admin_key, allocator=args.allocator)

        def new_watchdog(server):
            if args.no_watchdog:
                return None
            watchdog = Watchdog(server, log=lambda line: print(line, file=sys.stderr, flush=True))
            watchdog.start()
            return watchdog

        server = new_server(os.environ.get(ADMIN_KEY_ENV))
        stopping, watchdog, deaths = False, None, deque()
        try:
            server.start(timeout=args.timeout)
            if os.environ.get(ADMIN_KEY_ENV):
                key_line = f"from ${ADMIN_KEY_ENV}"
            else:
                key_line = f"in {server.write_admin_key(args.admin_key_file)}"
            print(f"Triton {server.version()} ready: {', '.join(server.ready_models())}")
            print(f"  HTTP    http://{server.http_url}   gRPC  {server.grpc_url}   "
                  f"metrics http://{server.host}:{server.ports.metrics}/metrics")
            print(f"  admin   header '{ADMIN_HEADER}', key {key_line}")
            print(f"  log     {server.log_path}")
            print(f"  malloc  {server.jemalloc or 'glibc'}")
            print("Ctrl-C stops it.", flush=True)
            watchdog = new_watchdog(server)
            while True:
                while server.proc.poll() is None:
                    time.sleep(0.5)
                died = f"tritonserver exited with code {server.proc.returncode}"
                deaths.append(time.monotonic())
                while deaths[0] < deaths[-1] - RESTART_WINDOW_S:
                    deaths.popleft()
                if len(deaths) > args.restarts:
                    raise KitError(f"{died}, {len(deaths)} time(s) in 10 minutes (--restarts {args.restarts}):\n"
                                   + "\n".join(server.error_lines()[-15:]))
                print(f"{prog_name()}: {died}; starting it again ({len(deaths)} of --restarts {args.restarts} in 10 "
                      f"minutes). Its last log lines:\n" + "\n".join(server.error_lines()[-5:]), file=sys.stderr,
                      flush=True)
                if watchdog:
                    watchdog.stop()
                server.close()
                server = new_server(server.admin_key)  # the same key: clients and the key file stay valid
                server.start(timeout=args.timeout)
                print(f"tritonserver ready again: {', '.join(server.ready_models())} (log {server.log_path})",
                      file=sys.stderr, flush=True)
                watchdog = new_watchdog(server)
        except KeyboardInterrupt:
            print("stopping Triton...", file=sys.stderr, flush=True)
            stopping = True
        finally:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # a second signal must not cut the cleanup
                signal.signal(sig, signal.SIG_IGN)
            if watchdog:
                watchdog.stop()
            clean = server.close()
        if not clean:
            print(f"{prog_name()}: error: tritonserver did not stop cleanly (killed after its exit timeout, or it left "
                  "shared memory behind)", file=sys.stderr)
        return 0 if stopping and clean else 1


if __name__ == "__main__":
    sys.exit(main())
