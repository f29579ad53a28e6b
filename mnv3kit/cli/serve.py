"""Serve a --target local model repository with the embedded Triton (no Docker, no GPU needed).

  python serve.py --repo model_repository_local

Starts the real tritonserver 2.51.0 bundled in the nvidia-pytriton wheel (python backend), waits until
/v2/health/ready answers, prints the endpoints and ready models, and runs until Ctrl-C, SIGTERM or SIGHUP, then
stops the server and its backend processes. The server listens on 127.0.0.1 unless --address says otherwise; its
admin APIs (shared memory, model repository, statistics, trace, logging) need the header `admin-key: KEY`, with KEY
from $TRITON_ADMIN_KEY or generated per start and written to a file only you can read. The key keeps other hosts'
clients out, not this host's users: Triton 2.51 takes it only on its command line, which any local user reads with
ps unless /proc is mounted with hidepid=2. A watchdog reloads a model whose backend process died (Triton itself
keeps reporting it ready) and loads the repository again when build_repo.py rebuilds it (the old models serve until
the new ones are ready). A tritonserver that dies (a crash, a request that kills it, kill -9), serving or loading
after a restart, is started again on the same ports with the same admin key, at most --restarts times in
{window}; the dead server's log is kept as LOG.1 (older ones .2, .3) and the restart line says where. Status lines
on stderr start with the local time. Repositories for NVIDIA's image (--target ngc) need `docker compose up triton`
instead.

exit codes: 0 stopped cleanly, 1 stopped but the server had to be killed or left something behind,
            2 bad input, the repository failed to load, or the server died more than --restarts times in {window}
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from mnv3kit.cli import add_ports, add_repo, ports_of
from mnv3kit.errors import KitError, cli_errors, prog_name
from mnv3kit.server import ALLOCATORS, CUDA_POOL_MB
from mnv3kit.spec import ADMIN_HEADER, ADMIN_KEY_ENV
from mnv3kit.watchdog import RESTART_WINDOW_S

WINDOW = f"{RESTART_WINDOW_S / 60:g} minutes"


def parse_args(argv=None) -> argparse.Namespace:
    doc = __doc__.format(window=WINDOW)
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_repo(p, help="repository built with build_repo.py --target local")
    p.add_argument("--address", default="127.0.0.1",
                   help="address the HTTP, gRPC and metrics endpoints listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 for every interface)")
    p.add_argument("--admin-key-file", type=Path,
                   help=f"write the generated admin key here, mode 0600 (default: the server's temporary directory; "
                   f"ignored when ${ADMIN_KEY_ENV} gives the key)")
    add_ports(p)
    p.add_argument("--log-file", type=Path, help="server log (default: a temporary file, printed at start)")
    p.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level (default 0)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness (default 120)")
    p.add_argument("--allocator", choices=ALLOCATORS, default="auto",
                   help="the server's malloc: jemalloc (auto: where installed, as Debian's libjemalloc2) gives "
                   "the memory of large or refused requests back within a second; glibc's keeps it (default auto)")
    p.add_argument("--cuda-pool-mb", type=int, default=CUDA_POOL_MB, metavar="MB",
                   help=f"Triton's CUDA memory pool on each GPU, through which GPU tensors pass between Triton and "
                   f"the python-backend models without a CUDA IPC handle per tensor (default {CUDA_POOL_MB}; "
                   f"Triton's own default is 64; no effect without a GPU)")
    p.add_argument("--restarts", type=int, default=3, metavar="N",
                   help=f"start a tritonserver that died again, at most N times in {WINDOW}; one more death ends "
                   "serve.py with exit 2 (default 3; 0: never)")
    p.add_argument("--no-watchdog", action="store_true",
                   help="neither reload a model whose backend stub process died nor load a rebuilt repository "
                   "(both on by default, checked every 0.5 s)")
    return p.parse_args(argv)


def _stop_on_signal(*_):
    raise KeyboardInterrupt


def say(line: str) -> None:
    """A status line on stderr, stamped with the local time (when a reload or restart happened)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors():
        from mnv3kit.repository import read_manifest
        from mnv3kit.server import LocalTriton
        from mnv3kit.watchdog import Supervisor

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
        if args.cuda_pool_mb < 0:
            raise KitError(f"--cuda-pool-mb {args.cuda_pool_mb}: give 0 or more")

        server = LocalTriton(args.repo, ports_of(args),
                             log_path=args.log_file, verbose=args.log_verbose, address=args.address,
                             admin_key=os.environ.get(ADMIN_KEY_ENV), allocator=args.allocator,
                             cuda_pool_mb=args.cuda_pool_mb)
        supervisor = Supervisor(server, restarts=args.restarts, watchdog=not args.no_watchdog, timeout=args.timeout,
                                log=say)
        stopping = False
        try:
            supervisor.start()
            try:
                version, models = server.version(), server.ready_models()
            except Exception as exc:  # noqa: BLE001 - any failure of these two calls, in one line
                raise KitError(f"tritonserver stopped answering right after it was ready ({exc})") from None
            if os.environ.get(ADMIN_KEY_ENV):
                key_line = f"from ${ADMIN_KEY_ENV}"
            else:
                key_line = f"in {server.write_admin_key(args.admin_key_file)}"
            print(f"Triton {version} ready: {', '.join(models)}")
            print(f"  HTTP    http://{server.http_url}   gRPC  {server.grpc_url}   "
                  f"metrics http://{server.host}:{server.ports.metrics}/metrics")
            print(f"  admin   header '{ADMIN_HEADER}', key {key_line}")
            print(f"  log     {server.log_path}")
            print(f"  malloc  {server.jemalloc or 'glibc'}")
            print("Ctrl-C stops it.", flush=True)
            supervisor.run()
        except KeyboardInterrupt:
            say("stopping Triton...")
            stopping = True
        finally:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # a second signal must not cut the cleanup
                signal.signal(sig, signal.SIG_IGN)
            clean = supervisor.stop()
        if not clean:
            print(f"{prog_name()}: error: tritonserver did not stop cleanly (killed after its exit timeout, or it left "
                  "shared memory behind)", file=sys.stderr)
        return 0 if stopping and clean else 1


if __name__ == "__main__":
    sys.exit(main())
