"""Served performance: the Python half of perf/run_perf.sh (the seed's perf_client table, with perf_analyzer).

run_perf.sh parses its flags, then
  1. ``python -m mnv3kit.perf prepare``: finds perf_analyzer (and libcudart.so.12, which it loads even on CPU), checks
     that it starts, asks the server (tritonclient) for its version, the ready models and their configs, plans one
     point per model x batch size and writes OUT/run.json; prints shell assignments the script evaluates;
  2. runs ``perf_analyzer -m MODEL -b BATCH ... -f OUT/csv/MODEL_bBATCH.csv --verbose-csv`` per point (bash);
  3. ``python -m mnv3kit.perf report OUT``: reads those CSVs (csv module) into OUT/report.md, OUT/results.csv and
     OUT/throughput_vs_p99.png. A point without a CSV is reported as failed with the last line of its log; the
     points that were measured are kept. Rerun ``report`` on OUT after an interrupted run.

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
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from .errors import KitError, cli_errors
from .spec import ADMIN_KEY_ENV, DEFAULT_URLS, MODELS, MODELS_BY_NAME, PROTOCOLS, admin_headers
from .validate import ModelConfig

HOW_TO_INSTALL = ("install the kit's environment with `make venv`: tritonclient[all]==2.51.0 ships perf_analyzer, "
                  "nvidia-cuda-runtime-cu12 its libcudart.so.12, scripts/install_system_deps.sh its libb64-0d")
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


def hardware() -> dict:
    """CPU model, core count and GPUs of THIS host (for a remote server it is the client's, said so in reports)."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = []
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False).stdout
        gpus = [line.strip() for line in out.splitlines() if line.strip()]
    # other work on the host skews every number: record how busy it was when the run started
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": gpus, "load_1min": round(os.getloadavg()[0], 2)}


def hardware_line(hw: dict, load: bool = True) -> str:
    line = f"{hw['cpu']}, {hw['cores']} cores; GPU: {', '.join(hw['gpus']) or 'none'}"
    return line + (f"; load average at start {hw['load_1min']}" if load else "")


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def model_order(name: str) -> int:
    """The seed's row order: pt, then onnx, then trt; other models after them."""
    names = [m.name for m in MODELS]
    return names.index(name) if name in names else len(names)


def short_name(model: str) -> str:
    """``pt`` for mobilenetv3_pt, as the seed's ``Model/Batch_Size`` column (``trt/1``)."""
    spec = MODELS_BY_NAME.get(model)
    return spec.key if spec else model


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- prepare

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
        raise KitError(f"perf_analyzer not found (neither in {beside.parent} nor on PATH): {HOW_TO_INSTALL}")
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
        raise KitError(f"{path} does not start ({lines[-1] if lines else f'exit {proc.returncode}'}): "
                       f"{HOW_TO_INSTALL}")
    text = (proc.stdout + proc.stderr).strip()  # 2.51 prints "Perf Analyzer Version 2.51.0 (commit ...)" on stderr
    return text.splitlines()[0] if text else "perf_analyzer (version unknown)"


class Server:
    """The few questions run_perf.sh asks the server, over HTTP or gRPC (tritonclient)."""

    def __init__(self, url: str, protocol: str, admin_key: Optional[str] = None):
        self.url, self.protocol = url, protocol
        self._admin = admin_headers(admin_key, protocol)  # the repository index is an admin API
        if protocol == "http":
            import tritonclient.http as client
        else:
            import tritonclient.grpc as client
        self._module = client
        self._client = client.InferenceServerClient(url)
        try:
            live = self._client.is_server_live()
        except Exception:  # noqa: BLE001 - connection refused / DNS / wrong protocol all mean "nothing answers"
            live = False
        if not live:
            raise KitError(f"no Triton server answers at {url} over {protocol.upper()}: start one "
                           f"(python serve.py --repo model_repository_local, or docker compose up triton) "
                           f"or pass its address with -u URL -i {'/'.join(PROTOCOLS)}")

    def metadata(self) -> dict:
        if self.protocol == "http":
            return self._client.get_server_metadata()
        return self._client.get_server_metadata(as_json=True)

    def index(self) -> List[dict]:
        """Repository index entries (name, version, state, reason)."""
        try:
            if self.protocol == "http":
                return self._client.get_model_repository_index(headers=self._admin)
            return self._client.get_model_repository_index(headers=self._admin, as_json=True).get("models", [])
        except Exception as exc:  # noqa: BLE001 - e.g. the endpoint is restricted on this server
            raise KitError(f"the server's model repository index is not available ({str(exc).splitlines()[0]}): "
                           f"name the models with -m, or give the server's admin key in ${ADMIN_KEY_ENV}") from None

    def is_ready(self, model: str) -> bool:
        try:
            return self._client.is_model_ready(model)
        except Exception:  # noqa: BLE001 - unknown model
            return False

    def warm_up(self, model: str, config: ModelConfig, batch: int, requests: int, image: bytes = b"") -> None:
        """Untimed requests of zeros (an encoded-image model: ``image``) at this batch size: TorchScript's profiling
        executor optimizes on the first calls per input shape (seconds each on a small CPU), which must not land in
        a measurement window."""
        from tritonclient.utils import triton_to_np_dtype

        inputs = []
        for spec in config.input:
            datatype = model_config_pb2.DataType.Name(spec.data_type).replace("TYPE_", "")
            data = (np.tile(np.frombuffer(image, np.uint8), (batch, 1)) if encoded_input(config)
                    else np.zeros([batch, *spec.dims], dtype=triton_to_np_dtype(datatype)))
            inp = self._module.InferInput(spec.name, list(data.shape), datatype)
            inp.set_data_from_numpy(data)
            inputs.append(inp)
        for _ in range(requests):
            self._client.infer(model, inputs)

    def config(self, model: str) -> ModelConfig:
        """The config the server actually runs (auto-completed), as Triton's ModelConfig protobuf."""
        if self.protocol == "http":
            return json_format.ParseDict(self._client.get_model_config(model), ModelConfig(),
                                          ignore_unknown_fields=True)
        return self._client.get_model_config(model).config


def encoded_input(config: ModelConfig) -> bool:
    """UINT8 [-1]: one encoded image file per batch item (the image ensemble)."""
    return (len(config.input) == 1 and config.input[0].data_type == model_config_pb2.TYPE_UINT8
            and list(config.input[0].dims) == [-1])


def image_files(folder: Optional[str]) -> List[Path]:
    """The JPEG/PNG files an encoded-image model is measured with: FOLDER's images, else scikit-learn's photos."""
    from .parity import sample_photos
    from .preprocess import is_image_file

    if folder is None:
        return sample_photos()
    files = sorted(p for p in Path(folder).iterdir() if is_image_file(p)) if Path(folder).is_dir() else []
    if not files:
        raise KitError(f"--images {folder}: no image files (jpg, png, ...) in it")
    return files


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


def prepare(args: argparse.Namespace) -> int:
    perf_analyzer = find_perf_analyzer()
    env = perf_analyzer_env()
    version = perf_analyzer_version(perf_analyzer, env)
    url = normalize_url(args.url or DEFAULT_URLS[args.protocol])
    server = Server(url, args.protocol, os.environ.get(ADMIN_KEY_ENV))
    host = hardware()  # before the warm-up below, whose own load must not count as the host's
    if args.models:
        models = [m for m in args.models.split(",") if m]
        not_ready = [m for m in models if not server.is_ready(m)]
        if not_ready:
            states = {e.get("name"): f"{e.get('state', '?')}{': ' + e['reason'] if e.get('reason') else ''}"
                      for e in server.index()}
            raise KitError("not ready on the server: " + "; ".join(f"{m} ({states.get(m, 'not in its repository')})"
                                                                   for m in not_ready))
    else:
        models = sorted({e["name"] for e in server.index() if e.get("state") == "READY"},
                        key=lambda m: (model_order(m), m))
        if not models:
            raise KitError(f"the server at {url} has no ready model")
    configs = {m: server.config(m) for m in models}
    if args.batch_sizes:
        batches = parse_batch_sizes(args.batch_sizes)
        too_big = {m: c.max_batch_size for m, c in configs.items() if max(batches) > c.max_batch_size}
        if too_big:
            raise KitError(f"--batch-sizes {args.batch_sizes}: batch {max(batches)} is above max_batch_size of "
                           + ", ".join(f"{m} ({b})" for m, b in too_big.items()))
    else:  # the seed measured 1..8 = max_batch_size; perf_analyzer itself rejects a batch above a model's maximum
        batches = list(range(1, min(max(c.max_batch_size, 1) for c in configs.values()) + 1))
    out = Path(args.out)
    encoded = [m for m in models if encoded_input(configs[m])]
    files = image_files(args.images) if encoded else []
    for sub in ("csv", "logs") + (("inputs",) if encoded else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    data = {(m, b): f"inputs/{m}{'' if b == 1 else '_padded'}.json" for m in encoded for b in batches}
    sent = {(m, b): write_input_data(configs[m], files, out / path, b > 1) for (m, b), path in data.items()}
    for model in models if args.warmup else ():
        print(f"warming up {model}: {args.warmup} request(s) per batch size", file=sys.stderr, flush=True)
        for batch in batches:
            try:
                server.warm_up(model, configs[model], batch, args.warmup, files[0].read_bytes() if files else b"")
            except Exception:  # noqa: BLE001 - that point's perf_analyzer run reports the server's error itself
                pass
    points = [{"model": m, "batch": b, **point_files(m, b), "input_data": data.get((m, b), ""),
               "bytes_per_image": sent.get((m, b)) or tensor_bytes(configs[m])} for b in batches for m in models]
    run = {"date": now(), "url": url, "protocol": args.protocol, "server": server.metadata(),
           "perf_analyzer": {"path": str(perf_analyzer), "version": version, "args": args.perf_args},
           "hardware": host, "models": {m: describe_config(c) for m, c in configs.items()},
           "batch_sizes": batches, "points": points,
           "images": [str(f) for f in files]}
    (out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    headers = admin_headers(os.environ.get(ADMIN_KEY_ENV), args.protocol)
    assignments = {"PERF_ANALYZER": str(perf_analyzer), "PA_LD_LIBRARY_PATH": env["LD_LIBRARY_PATH"], "URL": url,
                   "PA_HEADER": "".join(f"{k}:{v}" for k, v in headers.items()),
                   "POINTS": "\n".join(f"{p['model']}\t{p['batch']}\t{out / p['csv']}\t{out / p['log']}\t"
                                        f"{out / p['input_data'] if p['input_data'] else ''}" for p in points)}
    print("\n".join(f"{k}={shlex.quote(v)}" for k, v in assignments.items()))
    return 0


# ---------------------------------------------------------------- report

def read_point(out: Path, point: dict) -> List[dict]:
    """The CSV rows of one model x batch point (one per concurrency level), latencies in ms; [] if none."""
    path = out / point["csv"]
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        raw = list(csv.DictReader(f))
    rows = []
    for r in raw:
        missing = [c for c in ("Concurrency", "Inferences/Second", *BREAKDOWN, *LATENCIES) if c not in r]
        if missing:
            raise KitError(f"{path}: perf_analyzer CSV without column(s) {missing} (run_perf.sh passes "
                           f"--verbose-csv; perf_analyzer drops 'Avg latency' when --percentile is given)")
        row = {"model": point["model"], "batch": point["batch"], "concurrency": int(r["Concurrency"]),
               "throughput": float(r["Inferences/Second"])}
        row.update({name: float(r[col]) / 1000.0 for col, name in {**LATENCIES, **BREAKDOWN}.items()})
        rows.append(row)
    return sorted(rows, key=lambda row: row["concurrency"])


def failure_reason(out: Path, point: dict) -> str:
    try:
        lines = [ln.strip() for ln in (out / point["log"]).read_text(errors="replace").splitlines() if ln.strip()]
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
    import matplotlib

    matplotlib.use("Agg")  # files only: CI and servers have no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
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
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (infer/sec)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
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
    import matplotlib.pyplot as plt

    fig = figure(rows, title, failed)
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def report(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    try:
        run = json.loads((out / RUN_FILE).read_text())
    except FileNotFoundError:
        raise KitError(f"{out} has no {RUN_FILE}: not a run_perf.sh output directory") from None
    engine = read_engine(args.compare)
    rows, failures, failed = [], [], []
    for point in run["points"]:
        measured = [{**row, "bytes_per_image": point.get("bytes_per_image")} for row in read_point(out, point)]
        if not measured:
            failures.append(f"`{point['model']}` batch {point['batch']}: {failure_reason(out, point)} "
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mnv3kit.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--prog", default="python -m mnv3kit.perf", help=argparse.SUPPRESS)  # run_perf.sh's name in errors
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prepare", help="check perf_analyzer and the server, plan the points, write run.json")
    pr.add_argument("--url")
    pr.add_argument("--protocol", choices=PROTOCOLS, default="http")
    pr.add_argument("--models", help="comma-separated; default every ready model")
    pr.add_argument("--batch-sizes", help="e.g. 1-8 or 1,8; default 1..max_batch_size")
    pr.add_argument("--out", required=True)
    pr.add_argument("--images", help="folder of JPEG/PNG files for encoded-image models (default: sklearn photos)")
    pr.add_argument("--warmup", type=int, default=5, help="untimed requests per model x batch size first (default 5)")
    pr.add_argument("perf_args", nargs="*", help="perf_analyzer arguments shared by every point (recorded)")
    rp = sub.add_parser("report", help="CSV files of a run -> report.md, results.csv, throughput_vs_p99.png")
    rp.add_argument("dir")
    rp.add_argument("--compare", type=Path, help="perf/bench_engine.py JSON: adds served / in-process throughput")
    args = p.parse_args(argv)
    with cli_errors(args.prog):
        return prepare(args) if args.command == "prepare" else report(args)


if __name__ == "__main__":
    sys.exit(main())
