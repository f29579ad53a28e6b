"""Served performance with perf_analyzer: ``python -m mnv3kit.cli.perf run`` (perf/run_perf.sh is its wrapper).

``run`` finds perf_analyzer (and libcudart.so.12, which it loads even on CPU), checks that it starts, asks the server
(tritonclient) for its version, the ready models and their configs, plans one point per model x batch size and writes
OUT/run.json; then measures each point with ``perf_analyzer -m MODEL -b BATCH ... -f OUT/csv/MODEL_bBATCH.csv
--verbose-csv`` (``measure_point``: one process group per point, killed past its timeout) and turns the CSVs into
OUT/report.md, OUT/results.csv and OUT/throughput_vs_p99.png. A point without a CSV is reported as failed with the
last line of its log; the points that were measured are kept. ``report OUT`` redoes the last step (after an
interrupted run, or to add ``--compare``).

perf_analyzer's CSV gives latencies in microseconds: Client Send, Network+Server Send/Recv, Server Queue, Server
Compute Input/Infer/Output, Client Recv (averages per request) and p50/p90/p95/p99; --verbose-csv adds Avg latency.
"""

import argparse
import csv
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tritonclient.grpc import model_config_pb2

from .errors import HOW_TO_INSTALL, KitError
from .report import hardware, hardware_line, latency_axes, markdown_table, model_order, now, save, short_name
from .spec import ADMIN_KEY_ENV, DEFAULT_URLS, PROTOCOLS, admin_headers
from .triton import Restricted, Triton
from .validate import ModelConfig

# perf_analyzer ships in tritonclient[all]; it loads libcudart.so.12 (nvidia-cuda-runtime-cu12) and libb64
# (scripts/install_system_deps.sh) even without a GPU
PERF_ANALYZER_PARTS = "tritonclient[all] (perf_analyzer), nvidia-cuda-runtime-cu12 and libb64-0d"
RUN_FILE = "run.json"
REPORT_MD = "report.md"
RESULTS_CSV = "results.csv"
PLOT_PNG = "throughput_vs_p99.png"

# perf_analyzer CSV column (usec) -> our name (ms). Order = the order the request's time is spent.
BREAKDOWN = {"Client Send": "client_send_ms", "Network+Server Send/Recv": "network_ms",
             "Server Queue": "server_queue_ms", "Server Compute Input": "server_compute_input_ms",
             "Server Compute Infer": "server_compute_infer_ms", "Server Compute Output": "server_compute_output_ms",
             "Client Recv": "client_recv_ms"}
LATENCIES = {"Avg latency": "avg_ms", "p50 latency": "p50_ms", "p90 latency": "p90_ms", "p95 latency": "p95_ms",
             "p99 latency": "p99_ms"}


# ---------------------------------------------------------------- shared with the engine benchmark (mnv3kit/bench.py)

def parse_batch_sizes(text: str) -> List[int]:
    """``1-8``, ``1,2,4,8`` or a mix (``1-4,8``) -> sorted distinct positive sizes."""
    sizes = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            low, _, high = part.partition("-")
            sizes.update(range(int(low), int(high or low) + 1))
    except ValueError:
        sizes = set()
    if not sizes or min(sizes) < 1:
        raise KitError(f"bad batch sizes {text!r}: use e.g. 1-8 or 1,2,4,8 (positive integers)")
    return sorted(sizes)


# ---------------------------------------------------------------- plan

def find_perf_analyzer() -> Path:
    """$PERF_ANALYZER, else the one beside this Python (the venv's bin), else PATH."""
    if os.environ.get("PERF_ANALYZER"):
        path = Path(os.environ["PERF_ANALYZER"])
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise KitError(f"PERF_ANALYZER={path} is not an executable file")
        return path
    beside = Path(sys.executable).parent / "perf_analyzer"  # not resolved: the venv's bin, not the base Python's
    found = beside if beside.is_file() else shutil.which("perf_analyzer")
    if not found:
        raise KitError(f"perf_analyzer not found (neither in {beside.parent} nor on PATH): it comes with "
                       f"{PERF_ANALYZER_PARTS}; {HOW_TO_INSTALL}")
    return Path(found)


def perf_analyzer_env() -> Dict[str, str]:
    """LD_LIBRARY_PATH with the nvidia-cuda-runtime-cu12 wheel's lib dir first: perf_analyzer links libcudart.so.12."""
    spec = importlib.util.find_spec("nvidia.cuda_runtime") if importlib.util.find_spec("nvidia") else None
    dirs = [str(Path(p) / "lib") for p in (spec.submodule_search_locations or [])] if spec else []
    current = os.environ.get("LD_LIBRARY_PATH", "")
    return {"LD_LIBRARY_PATH": os.pathsep.join([d for d in dirs if Path(d).is_dir()] + ([current] if current else []))}


def perf_analyzer_version(path: Path, env: Dict[str, str]) -> str:
    proc = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=False,
                          env={**os.environ, **env})
    if proc.returncode != 0:
        lines = (proc.stderr + proc.stdout).strip().splitlines()
        raise KitError(f"{path} does not start ({lines[-1] if lines else f'exit {proc.returncode}'}): it needs "
                       f"{PERF_ANALYZER_PARTS}; {HOW_TO_INSTALL}")
    text = (proc.stdout + proc.stderr).strip()  # 2.51 prints "Perf Analyzer Version 2.51.0 (commit ...)" on stderr
    return text.splitlines()[0] if text else "perf_analyzer (version unknown)"


def connect(url: str, protocol: str) -> Triton:
    """The server to measure (mnv3kit.triton), with the admin key from the environment for the repository index."""
    server = Triton(url, protocol, os.environ.get(ADMIN_KEY_ENV), timeout=60.0)
    if not server.live():
        raise KitError(f"no Triton server answers at {url} over {protocol.upper()}: start one "
                       f"(python serve.py --repo model_repository_local, or `docker compose up triton`; Compose v1: "
                       f"`docker-compose up triton`) "
                       f"or pass its address with -u URL -i {'/'.join(PROTOCOLS)}")
    return server


# Where the admin key comes from, for messages that ask for it.
KEY_HINT = (f"export {ADMIN_KEY_ENV}=$(cat KEYFILE), with the file serve.py names on its 'admin' line (or the key "
            f"the server was started with)")


def index(server: Triton) -> List[dict]:
    try:
        return server.index()
    except Restricted:
        raise KitError(f"the server's model repository index is restricted (an admin API), and so are the statistics "
                       f"perf_analyzer reads: {KEY_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - any other failure of the call, in one line
        raise KitError(f"the server's model repository index is not available ({str(exc).splitlines()[0]}): "
                       f"give the server's admin key: {KEY_HINT}") from None


def command_line(url: str, protocol: str, model: str, batch: int, input_data: str, key_set: bool) -> str:
    """The perf_analyzer command a user can paste: its library path, the admin header for ``protocol`` (read from
    $TRITON_ADMIN_KEY, never written out) and input data the models accept (perf_analyzer's default random bytes
    include NaN and Inf, which the kit's models refuse)."""
    env = perf_analyzer_env()["LD_LIBRARY_PATH"]
    header = next(iter(admin_headers("KEY", protocol)))
    auth = f' -H "{header}:${ADMIN_KEY_ENV}"' if key_set else ""
    return (f"LD_LIBRARY_PATH={shlex.quote(env)} {shlex.quote(str(find_perf_analyzer()))} -m {model} -b {batch} "
            f"-u {url} -i {protocol}{auth} --input-data {shlex.quote(input_data)}")


def warm_up(server: Triton, model: str, config: ModelConfig, batch: int, requests: int, image: bytes = b"") -> None:
    """Untimed requests of zeros (an encoded-image model: ``image``) at this batch size: TorchScript's profiling
    executor optimizes on the first calls per input shape (seconds each on a small CPU), which must not land in
    a measurement window."""
    from tritonclient.utils import triton_to_np_dtype

    inputs = []
    for spec in config.input:
        datatype = model_config_pb2.DataType.Name(spec.data_type).replace("TYPE_", "")
        data = (np.tile(np.frombuffer(image, np.uint8), (batch, 1)) if encoded_input(config)
                else np.zeros([batch, *spec.dims], dtype=triton_to_np_dtype(datatype)))
        inp = server.module.InferInput(spec.name, list(data.shape), datatype)
        inp.set_data_from_numpy(data)
        inputs.append(inp)
    for _ in range(requests):
        server.client.infer(model, inputs)


def encoded_input(config: ModelConfig) -> bool:
    """UINT8 [-1]: one encoded image file per batch item (the image ensemble)."""
    return (len(config.input) == 1 and config.input[0].data_type == model_config_pb2.TYPE_UINT8
            and list(config.input[0].dims) == [-1])


def write_input_data(config: ModelConfig, files: Sequence[Path], path: Path, pad: bool) -> int:
    """perf_analyzer --input-data JSON: each file's bytes (b64) as one batch item, with its own shape. perf_analyzer
    batches consecutive items into one request, which needs equal lengths: ``pad`` zero-pads every file to the
    longest (JPEG and PNG decoders stop at the image's end marker). Returns the mean bytes sent per image."""
    import base64

    blobs = [f.read_bytes() for f in files]
    if pad:
        blobs = [b.ljust(max(map(len, blobs)), b"\0") for b in blobs]
    name = config.input[0].name
    path.write_text(json.dumps({"data": [{name: {"b64": base64.b64encode(b).decode("ascii"), "shape": [len(b)]}}
                                         for b in blobs]}))
    return round(sum(map(len, blobs)) / len(blobs))


def tensor_bytes(config: ModelConfig) -> int:
    """What one image costs on the wire as the model's input tensor."""
    from tritonclient.utils import triton_to_np_dtype

    datatype = model_config_pb2.DataType.Name(config.input[0].data_type).replace("TYPE_", "")
    return int(np.prod(config.input[0].dims)) * np.dtype(triton_to_np_dtype(datatype)).itemsize


def describe_config(config: ModelConfig) -> str:
    """One line: backend, batching and instances, the settings that shape the numbers."""
    params = {k: v.string_value for k, v in config.parameters.items()}
    if config.backend == "python":
        runtime = "python backend" + (f" ({params['runtime']}, {params['artifact']})" if "runtime" in params else "")
    else:
        runtime = config.platform or config.backend
    if config.HasField("dynamic_batching"):
        db = config.dynamic_batching
        batching = (f"dynamic batching (preferred {list(db.preferred_batch_size) or 'none'}, "
                    f"max queue delay {db.max_queue_delay_microseconds} µs)")
    else:
        batching = "no dynamic batching"
    kind = model_config_pb2.ModelInstanceGroup.Kind.Name
    instances = ", ".join(f"{g.count} x {kind(g.kind)}" for g in config.instance_group)
    return f"{runtime}; max_batch_size {config.max_batch_size}; {batching}; instances {instances or 'default'}"


def normalize_url(url: str) -> str:
    """tritonclient and perf_analyzer want host:port; accept a pasted http://host:port too."""
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    return url.rstrip("/")


def point_files(model: str, batch: int) -> Dict[str, str]:
    """Relative to the output directory, so a report can be rerun from anywhere."""
    stem = f"{model}_b{batch}"
    return {"csv": f"csv/{stem}.csv", "log": f"logs/{stem}.log"}


def plan(out: Path, url: Optional[str], protocol: str, models: Optional[List[str]], batch_sizes: Optional[str],
         images: Optional[str], warmup: int, perf_args: List[str]) -> dict:
    """Check perf_analyzer and the server, plan one point per model x batch size, warm the models up; write and
    return OUT/run.json's content (with the perf_analyzer path and its environment, which are not written)."""
    perf_analyzer = find_perf_analyzer()
    env = perf_analyzer_env()
    version = perf_analyzer_version(perf_analyzer, env)
    url = normalize_url(url or DEFAULT_URLS[protocol])
    server = connect(url, protocol)
    host = hardware()  # before the warm-up below, whose own load must not count as the host's
    if models:
        not_ready = [m for m in models if not server.model_ready(m)]
        if not_ready:
            states = {e.get("name"): f"{e.get('state', '?')}{': ' + e['reason'] if e.get('reason') else ''}"
                      for e in index(server)}
            raise KitError("not ready on the server: " + "; ".join(f"{m} ({states.get(m, 'not in its repository')})"
                                                                   for m in not_ready))
    else:
        models = sorted({e["name"] for e in index(server) if e.get("state") == "READY"},
                        key=lambda m: (model_order(m), m))
        if not models:
            raise KitError(f"the server at {url} has no ready model")
    try:  # perf_analyzer reads them every window; refused, it fails each point (with --collect-metrics it hangs)
        server.statistics(models[0])
    except Restricted:
        raise KitError(f"perf_analyzer reads the server's inference statistics, an admin API this server restricts: "
                       f"give the server's admin key in ${ADMIN_KEY_ENV} (serve.py prints the file it wrote the key "
                       f"to)") from None
    configs = {m: server.model_config(m) for m in models}
    if batch_sizes:
        batches = parse_batch_sizes(batch_sizes)
        too_big = {m: c.max_batch_size for m, c in configs.items() if max(batches) > c.max_batch_size}
        if too_big:
            raise KitError(f"--batch-sizes {batch_sizes}: batch {max(batches)} is above max_batch_size of "
                           + ", ".join(f"{m} ({b})" for m, b in too_big.items()))
    else:  # 1..8 = max_batch_size as the original project; perf_analyzer itself rejects a batch above a model's maximum
        batches = list(range(1, min(max(c.max_batch_size, 1) for c in configs.values()) + 1))
    encoded = [m for m in models if encoded_input(configs[m])]
    from .parity import photo_set  # torch and scikit-learn only where images are needed

    files = photo_set(images, "--images") if encoded else []
    for sub in ("csv", "logs") + (("inputs",) if encoded else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    data = {(m, b): f"inputs/{m}{'' if b == 1 else '_padded'}.json" for m in encoded for b in batches}
    sent = {(m, b): write_input_data(configs[m], files, out / path, b > 1) for (m, b), path in data.items()}
    for model in models if warmup else ():
        print(f"warming up {model}: {warmup} request(s) per batch size", file=sys.stderr, flush=True)
        for batch in batches:
            try:
                warm_up(server, model, configs[model], batch, warmup, files[0].read_bytes() if files else b"")
            except Exception:  # noqa: BLE001 - that point's perf_analyzer run reports the server's error itself
                pass
    points = [{"model": m, "batch": b, **point_files(m, b), "input_data": data.get((m, b), ""),
               "bytes_per_image": sent.get((m, b)) or tensor_bytes(configs[m])} for b in batches for m in models]
    run = {"date": now(), "url": url, "protocol": protocol, "server": server.metadata(),
           "perf_analyzer": {"path": str(perf_analyzer), "version": version, "args": perf_args},
           "hardware": host, "models": {m: describe_config(c) for m, c in configs.items()},
           "batch_sizes": batches, "points": points,
           "images": [str(f) for f in files]}
    (out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    return run


# ---------------------------------------------------------------- measure

MAX_TRIALS = 10  # perf_analyzer's default --max-trials: windows per concurrency level before it gives up
REQUEST_S = 1.0  # a generous bound on one request (Large at batch 8 on a busy 2-core CPU: ~0.3 s)
START_S = 60.0  # perf_analyzer's start, its connection and the first requests


def concurrency_range(text: str) -> List[int]:
    """START[:END[:STEP]] -> the concurrency levels perf_analyzer visits."""
    try:
        start, end, step = ([int(x) for x in text.split(":")] + [0, 0])[:3] if text.count(":") <= 2 else (0, 0, 0)
    except ValueError:
        start = end = step = 0
    end, step = end or start, step or 1
    if start < 1 or end < start or (text.count(":") == 2 and int(text.split(":")[2]) < 1):
        raise argparse.ArgumentTypeError(f"must be START[:END[:STEP]] (positive integers, END >= START), "
                                         f"got {text!r}")
    return list(range(start, end + 1, step))


@dataclass
class Settings:
    """How perf_analyzer measures a point: the arguments every point of a run shares (the report records them)."""

    concurrency: str = "1"  # START[:END[:STEP]]
    shared_memory: str = "none"
    window_ms: Optional[int] = None  # time windows (perf_analyzer's default: 5000 ms)
    count: Optional[int] = None  # count windows: each lasts until this many requests completed (>= 1 s)
    stability: Optional[int] = None
    metrics: Optional[str] = None
    extra: Sequence[str] = ()

    def args(self) -> List[str]:
        args = ["--concurrency-range", self.concurrency, "--shared-memory", self.shared_memory]
        if self.window_ms:
            args += ["--measurement-interval", str(self.window_ms)]
        if self.count:
            args += ["--measurement-mode", "count_windows", "--measurement-request-count", str(self.count)]
        if self.stability:
            args += ["--stability-percentage", str(self.stability)]
        if self.metrics:
            args += ["--collect-metrics", "--metrics-url", self.metrics]
        return args + list(self.extra)

    def default_timeout(self) -> float:
        """A bound for a hung point, not a slow one: every concurrency level spends all of perf_analyzer's trials
        on windows twice as long as asked (a count window: REQUEST_S per request), plus START_S."""
        window = max(1.0, self.count * REQUEST_S) if self.count else (self.window_ms or 5000) / 1000
        return START_S + len(concurrency_range(self.concurrency)) * MAX_TRIALS * 2 * window


class PointFailed(Exception):
    """perf_analyzer measured nothing for a point; the message says why (the last line of its log)."""


def measure_point(url: str, protocol: str, model: str, batch: int, settings: Settings, csv_path: Path,
                  log_path: Path, timeout: Optional[float] = None, input_data: str = "zero",
                  admin_key: Optional[str] = None, perf_analyzer: Optional[Path] = None) -> List[dict]:
    """One perf_analyzer run: ``model`` at ``batch`` over every concurrency level of ``settings``; returns its rows
    (read_csv). perf_analyzer runs in its own process group, killed when it outlives ``timeout`` seconds (default
    ``settings.default_timeout()``) or when this process is interrupted. Raises PointFailed with the reason, which
    also ends the log."""
    perf_analyzer = perf_analyzer or find_perf_analyzer()
    timeout = timeout or settings.default_timeout()
    # The admin key as a header, outside settings.args(): those are recorded in the report.
    auth = [a for k, v in admin_headers(admin_key, protocol).items() for a in ("-H", f"{k}:{v}")]
    cmd = [str(perf_analyzer), "-m", model, "-b", str(batch), "-u", url, "-i", protocol, *settings.args(), *auth,
           "--input-data", input_data, "-f", str(csv_path), "--verbose-csv"]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.unlink(missing_ok=True)  # a stale CSV must not pass for this run's measurement
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **perf_analyzer_env()}, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.flush()
            log.write(f"\ntimed out after {timeout:g} s: perf_analyzer killed\n")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # perf_analyzer and whatever it started
                proc.wait()
    rows = read_csv(csv_path, model, batch) if proc.returncode == 0 else []
    if not rows:
        raise PointFailed(failure_reason(log_path))
    return rows


# ---------------------------------------------------------------- report

def read_csv(path: Path, model: str, batch: int) -> List[dict]:
    """The rows of perf_analyzer's CSV of one model x batch point (one per concurrency level), latencies in ms;
    [] if there is none."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        raw = list(csv.DictReader(f))
    rows = []
    for r in raw:
        missing = [c for c in ("Concurrency", "Inferences/Second", *BREAKDOWN, *LATENCIES) if c not in r]
        if missing:
            raise KitError(f"{path}: perf_analyzer CSV without column(s) {missing} (the kit passes --verbose-csv; "
                           f"perf_analyzer drops 'Avg latency' when --percentile is given)")
        row = {"model": model, "batch": batch, "concurrency": int(r["Concurrency"]),
               "throughput": float(r["Inferences/Second"])}
        row.update({name: float(r[col]) / 1000.0 for col, name in {**LATENCIES, **BREAKDOWN}.items()})
        rows.append(row)
    return sorted(rows, key=lambda row: row["concurrency"])


def failure_reason(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return "not run"
    return lines[-1] if lines else "perf_analyzer wrote no CSV and no message"


def read_engine(path: Optional[Path]) -> Optional[dict]:
    """A perf/bench_engine.py JSON with its rows keyed (model, batch), for the served / in-process columns."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
        return {**data, "by_point": {(r["model"], r["batch"]): r for r in data["rows"]}}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KitError(f"--compare {path}: not a JSON written by perf/bench_engine.py --out ({exc})") from None


LABEL_OFFSETS = [(4, 4), (4, -11), (-20, 4), (-20, -11), (4, 15), (4, -22), (-20, 15), (-20, -22)]  # points


def figure(rows: List[dict], title: str, failed: Sequence[Tuple[str, int]] = ()):
    """Throughput against p99, one line per model, each point labelled bB (cC); labels placed where they overlap
    no other label. Points that were not measured are listed on the plot (a line joins the measured ones only)."""
    fig, ax = latency_axes(title)
    several = len({r["concurrency"] for r in rows}) > 1
    points = []
    for model in sorted({r["model"] for r in rows}, key=model_order):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: (r["concurrency"], r["batch"]))
        ax.plot([r["p99_ms"] for r in mine], [r["throughput"] for r in mine], marker="o", label=model)
        points += [(f"b{r['batch']}" + (f"c{r['concurrency']}" if several else ""), (r["p99_ms"], r["throughput"]))
                   for r in mine]
    if failed:
        ax.text(0.99, 0.01, "not measured (see report): " + ", ".join(f"{short_name(m)} b{b}" for m, b in failed),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="tab:red")
    ax.legend()
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    placed = []
    for text, xy in points:
        for offset in LABEL_OFFSETS:  # the first offset whose box is free; else the last one tried
            label = ax.annotate(text, xy, textcoords="offset points", xytext=offset, fontsize=8)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or offset == LABEL_OFFSETS[-1]:
                break
            label.remove()
        placed.append(box)
    return fig


def plot(rows: List[dict], title: str, path: Path, failed: Sequence[Tuple[str, int]] = ()) -> None:
    save(figure(rows, title, failed), path)


def render_report(run: dict, rows: List[dict], failures: List[str], engine: Optional[dict]) -> str:
    pa = run["perf_analyzer"]
    template = " ".join(["perf_analyzer", "-m", "MODEL", "-b", "BATCH", "-u", run["url"], "-i", run["protocol"],
                         *map(shlex.quote, pa["args"]), "--input-data", "DATA",
                         "-f", "csv/MODEL_bBATCH.csv", "--verbose-csv"])
    lines = [f"# Served performance: Triton {run['server'].get('version', '?')}", "",
             f"- Date: {run['date']}",
             f"- Server: Triton {run['server'].get('version', '?')} at {run['url']} over {run['protocol'].upper()}",
             f"- Hardware (host that ran perf_analyzer): {hardware_line(run['hardware'])}",
             f"- Client: {pa['version']}; per point `{template}` (DATA: `zero`, or an encoded-image model's "
             f"files as inputs/MODEL.json)",
             "- Models (config as served):"]
    if run.get("images"):
        lines.insert(-1, f"- Encoded-image models send these files, one per batch item: "
                         f"{', '.join(Path(f).name for f in run['images'])}")
    lines += [f"  - `{model}`: {desc}" for model, desc in run["models"].items()]
    if engine:
        lines.append(f"- In-process reference: perf/bench_engine.py of {engine.get('date', '?')} "
                     f"({engine.get('repo', '?')}, one call at a time). Measure both back to back: a shared or "
                     f"virtual host's speed drifts between runs")
    label = lambda r: f"{short_name(r['model'])}/{r['batch']}"  # noqa: E731
    ms = lambda v: f"{v:.2f}"  # noqa: E731
    headers = ["Model/Batch_Size", "Concurrency", "Throughput (infer/sec)", "Bytes sent / image", "Avg latency (ms)",
               "p50 latency (ms)", "p90 latency (ms)", "p95 latency (ms)", "p99 latency (ms)"]
    sent = lambda r: f"{r['bytes_per_image']:,}" if r.get("bytes_per_image") else "-"  # noqa: E731
    table = [[label(r), r["concurrency"], f"{r['throughput']:.1f}", sent(r), *(ms(r[k]) for k in LATENCIES.values())]
             for r in rows]
    if engine:
        headers += ["In-process (infer/sec)", "Served / in-process"]
        for row, r in zip(table, rows):
            e = engine["by_point"].get((r["model"], r["batch"]))
            row += [f"{e['throughput']:.1f} ({e['device']})", f"{r['throughput'] / e['throughput']:.2f}"] if e else \
                ["-", "-"]
    lines += ["", "## Throughput and latency", "", markdown_table(headers, table) if rows else "(no point measured)"]
    if rows:
        lines += ["", "## Where the time goes (average per request, ms)", "",
                  "Client columns are measured by perf_analyzer; queue and compute come from Triton's statistics "
                  "(compute input/output = moving tensors into/out of the backend; for python-backend models that "
                  "includes the shared-memory hand-off to the stub process).", "",
                  markdown_table(["Model/Batch_Size", "Concurrency", "Client send", "Network + server send/recv",
                                  "Server queue", "Server compute input", "Server compute infer",
                                  "Server compute output", "Client recv"],
                                 [[label(r), r["concurrency"], *(ms(r[k]) for k in BREAKDOWN.values())]
                                  for r in rows]),
                  "", f"![throughput vs p99 latency]({PLOT_PNG})"]
    if failures:
        lines += ["", "## Failed points", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"


def report(out: Path, compare: Optional[Path] = None) -> int:
    """OUT's CSVs -> report.md (also printed), results.csv, the plot; 1 when a point has no CSV, else 0."""
    try:
        run = json.loads((out / RUN_FILE).read_text())
    except FileNotFoundError:
        raise KitError(f"{out} has no {RUN_FILE}: not an output directory of `python -m mnv3kit.cli.perf run`") from None
    engine = read_engine(compare)
    rows, failures, failed = [], [], []
    for point in run["points"]:
        measured = [{**row, "bytes_per_image": point.get("bytes_per_image")}
                    for row in read_csv(out / point["csv"], point["model"], point["batch"])]
        if not measured:
            failures.append(f"`{point['model']}` batch {point['batch']}: {failure_reason(out / point['log'])} "
                            f"(log: {point['log']})")
            failed.append((point["model"], point["batch"]))
        rows += measured
    rows.sort(key=lambda r: (r["batch"], r["concurrency"], model_order(r["model"]), r["model"]))
    if rows:
        with open(out / RESULTS_CSV, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        plot(rows, f"Triton {run['server'].get('version', '?')} {run['protocol'].upper()} - "
                   f"{hardware_line(run['hardware'], load=False)}", out / PLOT_PNG, failed)
    text = render_report(run, rows, failures, engine)
    (out / REPORT_MD).write_text(text)
    print(text)
    print(f"wrote {out / REPORT_MD}" + (f", {out / RESULTS_CSV}, {out / PLOT_PNG}" if rows else ""), file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(run['points'])} point(s) failed, listed in the report", file=sys.stderr)
        return 1
    return 0
