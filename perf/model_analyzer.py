#!/usr/bin/env python3
"""Triton Model Analyzer against mnv3-tune: each searches the serving config with the most throughput within a p99
budget, on this machine, for the same model; then every winner is measured again the same way and its answers checked.

  make analyzer-venv                                      # once: Model Analyzer 1.58.0 in .venv-analyzer
  python perf/model_analyzer.py --p99-ms 100 -c 1:8 --rounds 3 -o perf/out/analyzer

The model (-m runtime; default the demo's trained Small) is built once as the kit's default --target local repository
(max batch 8, preferred 4,8, queue delay 100 us): mnv3-tune's source. Model Analyzer's base repository is rendered
from it with max batch 1, no preferred sizes and a queue bound of 64 (build_repo.py --max-batch-size 1 --opt-batch 1
--preferred-batch-sizes "" --max-queue-size 64): Model Analyzer varies max_batch_size and the instance count only,
and the kit's preferred 4,8 and its batch-8 warmup make its smaller variants illegal.

Each round runs, in this order: Model Analyzer's quick search and its brute search (`model-analyzer profile`,
--triton-launch-mode local, instances 1..--max-instances, max batch 1..--max-batch in powers of 2, concurrency in
powers of 2 from the range's start to its end, a restart of tritonserver per config), then mnv3-tune (the same
instances and max batch sizes, every preferred-size and queue-delay choice, configs reloaded in place, every level of
the range per perf_analyzer run; its own defaults otherwise: --budget-min 30, --confirm 2). All measure with
perf_analyzer over gRPC, zero input, count windows of 30 requests, 20 % stability. Model Analyzer starts the kit's embedded tritonserver through OUT/tritonserver-kit.sh and the kit's
perf_analyzer through OUT/perf_analyzer-kit.sh, both generated here from mnv3kit.server and mnv3kit.perf.

Then the winner of every run (its most throughput within the budget, as the tool reported it) is rendered by the kit
from the config.pbtxt the tool wrote (instances, max batch, preferred sizes, queue delay), served by the kit's
LocalTriton and measured by one perf_analyzer run over the whole range (one it could not stabilise made once more),
the winners alternately, --remeasure rounds; then a soak of --soak-seconds at the top concurrency checks every answer
against logits computed in-process.

Writes OUT/REPORT.md (the table, the ratios kit / MA quick and kit / MA brute of the re-measured medians),
OUT/result.json, the Model Analyzer YAMLs (OUT/ma-rN-MODE.yaml) and every tool's own output under OUT/runs/.
Exit status: 0 done and every winner answered right; 1 a tool failed or found no winner within the budget, or a
winner answered wrong or failed requests; 2 bad input.
"""

import argparse
import csv
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mnv3kit.cli import add_output, concurrency_text, positive
from mnv3kit.errors import KitError, cli_errors
from mnv3kit.model import ARCHS
from mnv3kit.spec import ONNX, PT

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = ROOT / "demo" / "weights" / "MobileNetV3_Small.pth"
DEFAULT_LABELS = ROOT / "demo" / "weights" / "class_indices.json"
DEFAULT_VENV = ROOT / ".venv-analyzer"  # make analyzer-venv
RUNTIMES = {PT.key: PT, ONNX.key: ONNX}
MODES = ("quick", "brute", "kit")  # Model Analyzer's two automatic searches, then mnv3-tune
TOOL = {"quick": "Model Analyzer quick", "brute": "Model Analyzer brute", "kit": "mnv3-tune"}
COUNT, STABILITY = 30, 20  # perf_analyzer's count windows and stability: every search and the re-measurement
MA_BASE_QUEUE = 64  # the base repository's queue bound: MA keeps it in every variant it writes
SERVER_WRAPPER, PA_WRAPPER = "tritonserver-kit.sh", "perf_analyzer-kit.sh"
MA_CSV = Path("results") / "results" / "metrics-model-inference.csv"  # under export_path
MA_COLUMNS = ("Model Config Path", "Concurrency", "Satisfies Constraints", "Throughput (infer/sec)", "p99 Latency (ms)")
# LocalTriton.command()'s flags that Model Analyzer passes itself (repository, ports, model control) or that lock it
# out: --load-model=* (it loads each variant through the repository API) and the admin-key restrictions (it sends no
# key; the server listens on loopback only)
MA_OWNS = ("--model-repository", "--http-port", "--grpc-port", "--metrics-port", "--model-control-mode",
           "--load-model", "--http-restricted-api", "--grpc-restricted-protocol")
SHM_FLAG = "--backend-config=python,shm-region-prefix-name="
PID = "@PID@"  # written as $$ in the wrapper: after exec, tritonserver's own pid
# The variables the kit prepends to: the wrappers read the caller's values when they run, not this process's.
SHELL_VARS = ("PATH", "LD_LIBRARY_PATH", "LD_PRELOAD")
STOP_WAIT_S = 120  # after Ctrl-C: how long a tool may take to stop its own server before it is killed


# ---------------------------------------------------------------- wrappers for Model Analyzer

def dquote(text: str) -> str:
    """``text`` as one double-quoted shell word, nothing expanded."""
    return '"' + re.sub(r'([\\"$`])', r"\\\1", text) + '"'


def shell_value(value: str, marks: Dict[str, str]) -> str:
    """A double-quoted shell word for ``value``, each mark of ``marks`` read as its variable when the script runs:
    a separator before it is kept only when the variable is set (an empty LD_LIBRARY_PATH entry is the current
    directory)."""
    pattern = re.compile("([:\\s]?)(" + "|".join(map(re.escape, marks.values())) + ")")
    names = {mark: var for var, mark in marks.items()}
    words, last = [], 0
    for match in pattern.finditer(value):
        sep, var = match.group(1), names[match.group(2)]
        words += [dquote(value[last:match.start()])[1:-1], f"${{{var}:+{sep}${var}}}" if sep else f"${{{var}:-}}"]
        last = match.end()
    return '"' + "".join(words) + dquote(value[last:])[1:-1] + '"'


def shell_exports(make_env: Callable[[], Dict[str, str]]) -> List[str]:
    """`export` lines for what ``make_env()`` (the full environment a kit function derives from os.environ) adds or
    changes. The variables of SHELL_VARS are exported last, so that every line reads the caller's values."""
    marks = {var: f"@{var}@" for var in SHELL_VARS}
    saved = {var: os.environ.get(var) for var in SHELL_VARS}
    os.environ.update(marks)
    try:
        before = dict(os.environ)
        env = make_env()
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    changed = sorted((k for k, v in env.items() if before.get(k) != v), key=lambda k: (k in SHELL_VARS, k))
    return [f"export {key}={shell_value(env[key], marks)}" for key in changed]


def server_wrapper(backends: Path) -> str:
    """Model Analyzer's triton_server_path: the kit's embedded tritonserver with server_env()'s environment and
    LocalTriton.command()'s flags, less MA_OWNS; python backend from ``backends`` (prepare_backends)."""
    from mnv3kit.server import SHM_PREFIX, LocalTriton, prepare_backends, pytriton_root, server_env

    root = pytriton_root()
    prepare_backends(root, backends)
    triton = LocalTriton(backends)  # only for its command and allocator; nothing is started
    try:
        command, jemalloc = triton.command(root), triton.jemalloc
    finally:
        triton.close()
    flags = []
    for arg in command[1:]:
        name = arg.split("=", 1)[0]
        if name in MA_OWNS:
            continue
        if name == "--backend-directory":
            arg = f"--backend-directory={backends}"
        elif arg.startswith(SHM_FLAG):  # named after the server's pid: remove_stale() cleans up after a killed one
            arg = f"{SHM_FLAG}{SHM_PREFIX}{PID}_ma_"
        flags.append(arg)
    exports = shell_exports(lambda: server_env(root, jemalloc))
    words = [dquote(w).replace(PID, "$$") for w in (command[0], *flags)]
    return "\n".join([
        "#!/bin/bash",
        "# Model Analyzer's triton_server_path, generated by perf/model_analyzer.py from mnv3kit.server: the embedded",
        "# tritonserver with server_env()'s environment and LocalTriton.command()'s flags, less the repository, ports",
        "# and model control (Model Analyzer passes them) and the admin-key restrictions (Model Analyzer sends no key).",
        "# exec: Model Analyzer's SIGTERM reaches tritonserver itself, and $$, then tritonserver's pid, names its",
        "# shared-memory regions as the kit does, so that the next LocalTriton start removes those of a killed one.",
        *exports,
        "exec " + " \\\n  ".join(words) + ' \\\n  "$@"', ""])


def perf_analyzer_wrapper() -> str:
    """Model Analyzer's perf_analyzer_path: the kit's perf_analyzer with perf_analyzer_env() (its libcudart)."""
    from mnv3kit.perf import find_perf_analyzer, perf_analyzer_env

    path = find_perf_analyzer()
    exports = shell_exports(lambda: {**os.environ, **perf_analyzer_env()})
    return "\n".join([
        "#!/bin/bash",
        "# Model Analyzer's perf_analyzer_path, generated by perf/model_analyzer.py from mnv3kit.perf: the kit's",
        "# perf_analyzer with perf_analyzer_env(): it loads libcudart.so.12 even without a GPU.",
        *exports, f'exec {dquote(str(path))} "$@"', ""])


def write_wrappers(out: Path) -> Tuple[Path, Path]:
    """OUT/tritonserver-kit.sh (its python backend in OUT/backends) and OUT/perf_analyzer-kit.sh, executable."""
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / SERVER_WRAPPER, out / PA_WRAPPER)
    for path, text in zip(paths, (server_wrapper(out / "backends"), perf_analyzer_wrapper())):
        path.write_text(text)
        path.chmod(0o755)
    return paths


# ---------------------------------------------------------------- Model Analyzer's configuration and results

def ma_config(mode: str, run: Path, base_repo: Path, model: str, wrappers: Tuple[Path, Path], ports, p99_ms: int,
              concurrency: Sequence[int], max_instances: int, max_batch: int) -> dict:
    """`model-analyzer profile -f` YAML (as a dict) for one ``mode`` search, every output under ``run``."""
    return {
        "model_repository": str(base_repo),
        "output_model_repository_path": str(run / "output_model_repository"),
        "override_output_model_repository": True,
        "export_path": str(run / "results"),
        "checkpoint_directory": str(run / "checkpoints"),  # a checkpoint there would be resumed, not measured
        "triton_output_path": str(run / "tritonserver.log"),
        "triton_launch_mode": "local",
        "triton_server_path": str(wrappers[0]),
        "perf_analyzer_path": str(wrappers[1]),
        "perf_output": True,
        "perf_output_path": str(run / "perf_analyzer.log"),
        "triton_http_endpoint": f"127.0.0.1:{ports.http}",
        "triton_grpc_endpoint": f"127.0.0.1:{ports.grpc}",
        "triton_metrics_url": f"http://127.0.0.1:{ports.metrics}/metrics",
        "client_protocol": "grpc",
        "gpus": [],  # CPU only: KIND_CPU variants, no GPU metrics
        "collect_cpu_metrics": False,
        "skip_summary_reports": False,
        "skip_detailed_reports": True,
        "run_config_search_mode": mode,
        "run_config_search_max_instance_count": max_instances,
        "run_config_search_min_model_batch_size": 1,
        "run_config_search_max_model_batch_size": max_batch,
        "run_config_search_min_concurrency": min(concurrency),
        "run_config_search_max_concurrency": max(concurrency),
        "latency_budget": p99_ms,
        "objectives": ["perf_throughput"],
        "profile_models": {model: {"perf_analyzer_flags": {
            "input-data": "zero",  # random bytes include NaN and Inf, which the kit's models refuse
            "measurement-request-count": COUNT, "stability-percentage": STABILITY}}},
    }


def read_ma_csv(text: str) -> List[dict]:
    """The rows of Model Analyzer's metrics-model-inference.csv: one per config and concurrency."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in MA_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise KitError(f"Model Analyzer's CSV has no column(s) {', '.join(missing)}")
    return [{"config": r["Model Config Path"], "concurrency": int(r["Concurrency"]),
             "satisfies": r["Satisfies Constraints"].strip() == "Yes",
             "throughput": float(r["Throughput (infer/sec)"]), "p99_ms": float(r["p99 Latency (ms)"])}
            for r in reader]


def best_row(rows: Sequence[dict], p99_ms: float) -> Optional[dict]:
    """The row with the most throughput whose p99 is within the budget (and, from Model Analyzer, that it says
    satisfies its constraints); None when none is."""
    within = [r for r in rows if r["p99_ms"] <= p99_ms and r.get("satisfies", True)]
    return max(within, key=lambda r: r["throughput"], default=None)


def perf_analyzer_runs(log: str, wrapper: Path) -> int:
    """perf_analyzer runs in Model Analyzer's -v log (its re-runs with a larger request count included)."""
    return sum(1 for line in log.splitlines() if "DEBUG: Running [" in line and wrapper.name in line)


@dataclass(frozen=True)
class Serving:
    """What a winner's config.pbtxt sets among what the tools vary."""

    kind: str
    instances: int
    max_batch: int
    preferred: Tuple[int, ...]
    delay_us: int
    batcher: bool = True

    @property
    def label(self) -> str:
        text = (f"i{self.instances} b{self.max_batch} p{','.join(map(str, self.preferred)) or '-'} d{self.delay_us}"
                if self.batcher else f"i{self.instances} b{self.max_batch} no dynamic batcher")
        return text if self.kind == "KIND_CPU" else f"{text} {self.kind}"


def serving_of(config_path: Path) -> Serving:
    """The settings of ``config_path``, parsed with Triton's schema (tritonclient.grpc.model_config_pb2 and
    text_format: mnv3kit.validate.parse_config)."""
    from tritonclient.grpc import model_config_pb2

    from mnv3kit.validate import parse_config

    config = parse_config(config_path)
    groups = config.instance_group
    kind = model_config_pb2.ModelInstanceGroup.Kind.Name(groups[0].kind) if groups else "KIND_CPU"
    batching = config.dynamic_batching
    return Serving(kind, sum(g.count or 1 for g in groups) or 1, config.max_batch_size,
                   tuple(batching.preferred_batch_size), batching.max_queue_delay_microseconds,
                   config.HasField("dynamic_batching"))


# ---------------------------------------------------------------- runs

@dataclass
class Run:
    """One search by one tool, its winner and what the re-measurement found."""

    round: int
    mode: str
    wall_s: float = 0.0
    pa_runs: int = 0
    points: int = 0
    confirm_runs: int = 0  # of pa_runs, mnv3-tune's confirmation (winner vs default), after its search
    error: str = ""
    own: Optional[dict] = None  # the winner's row as the tool reported it: throughput, p99_ms, concurrency
    serving: Optional[Serving] = None
    config_path: str = ""
    repository: str = ""  # the winner rendered by the kit
    remeasured: List[dict] = field(default_factory=list)  # per round: score, p99_ms, concurrency, error
    soak: Optional[dict] = None

    @property
    def tag(self) -> str:
        return f"r{self.round}-{self.mode}"

    def scores(self) -> List[float]:
        return [m["score"] for m in self.remeasured]


def run_logged(cmd: Sequence[str], log: Path, cwd: Path) -> Tuple[int, float]:
    """Run ``cmd`` with its output in ``log``; (exit code, wall seconds). On Ctrl-C (which the tool gets too, in the
    same process group) it is given STOP_WAIT_S to stop its server, then killed."""
    started = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            proc.wait()
        except KeyboardInterrupt:
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    return proc.returncode, time.monotonic() - started


def last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.is_file() else []
    return lines[-1][:300] if lines else "no output"


def run_ma(run: Run, args: argparse.Namespace, out: Path, base_repo: Path, wrappers: Tuple[Path, Path]) -> None:
    import yaml

    from mnv3kit.perf import concurrency_range
    from mnv3kit.server import Ports

    rundir = out / "runs" / run.tag
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    config = ma_config(run.mode, rundir, base_repo, args.spec.name, wrappers, Ports.free(), args.p99_ms,
                       concurrency_range(args.concurrency), args.max_instances, args.max_batch)
    yaml_path = out / f"ma-{run.tag}.yaml"
    yaml_path.write_text(f"# Model Analyzer {args.versions['model_analyzer']}, {run.mode} search, round "
                         f"{run.round}: `model-analyzer profile -v -f {yaml_path.name}` (perf/model_analyzer.py)\n"
                         + yaml.safe_dump(config, sort_keys=False))
    log = rundir / "ma.out"
    code, run.wall_s = run_logged([args.analyzer_venv / "bin" / "model-analyzer", "profile", "-v", "-f", yaml_path],
                                  log, rundir)
    run.pa_runs = run.points = perf_analyzer_runs(log.read_text(errors="replace"), wrappers[1])
    table = rundir / MA_CSV
    if code != 0 or not table.is_file():
        run.error = f"model-analyzer exited {code}: {last_line(log)}"
        return
    run.own = best_row(read_ma_csv(table.read_text()), args.p99_ms)
    if run.own is None:
        run.error = "no config within the budget"
        return
    config_path = rundir / "output_model_repository" / run.own["config"] / "config.pbtxt"
    if not config_path.is_file():
        run.error = f"Model Analyzer reported {run.own['config']} but wrote no {config_path}"
        return
    run.config_path, run.serving = str(config_path), serving_of(config_path)


def run_kit(run: Run, args: argparse.Namespace, out: Path, kit_repo: Path) -> None:
    from mnv3kit.perf import read_csv

    rundir = out / "runs" / run.tag
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "mnv3kit.cli.tune", "--repo", kit_repo, "-m", args.spec.key,
           "--p99-ms", args.p99_ms, "-c", args.concurrency, "-i", "grpc",
           "--instances", ",".join(str(i) for i in range(1, args.max_instances + 1)),
           "--max-batch-sizes", ",".join(map(str, powers_of_two(args.max_batch))),
           "--count", COUNT, "--stability", STABILITY, "-o", rundir]
    if args.kit_max_runs:
        cmd += ["--max-runs", args.kit_max_runs]
    log = rundir / "tune.out"
    code, run.wall_s = run_logged(cmd, log, ROOT)
    result = rundir / "tune.json"
    if code not in (0, 1) or not result.is_file():
        run.error = f"mnv3-tune exited {code}: {last_line(log)}"
        return
    info = json.loads(result.read_text())
    run.pa_runs, run.confirm_runs = info["runs"], info["runs"] - info["search_runs"]
    # every run's points (repeats and confirmation included): Model Analyzer's count includes its re-runs too
    run.points = sum(len(read_csv(p, args.spec.name, 1)) for p in (rundir / "csv").glob("*.csv"))
    winner = info.get("winner")
    if not winner:
        run.error = "no config within the budget"
        return
    run.own = {"config": winner["label"], "concurrency": winner["concurrency"], "throughput": winner["throughput"],
               "p99_ms": winner["p99_ms"]}
    config_path = Path(info["repository"]) / args.spec.name / "config.pbtxt"
    run.config_path, run.serving = str(config_path), serving_of(config_path)


def powers_of_two(top: int) -> List[int]:
    return [2 ** n for n in range(top.bit_length()) if 2 ** n <= top]


# ---------------------------------------------------------------- the common measurement

def render_winner(run: Run, source: Path, out: Path, spec, clients: int) -> None:
    """The winner's settings rendered by the kit from ``source``'s artifacts (the queue bound as mnv3-tune sets it)."""
    from mnv3kit.build import built_config, rerender
    from mnv3kit.tune import Candidate

    s = run.serving
    _, base = built_config(source)
    cfg = Candidate(spec.key, s.instances, s.max_batch, s.preferred, s.delay_us).config(base, s.kind, clients)
    if not s.batcher:
        cfg = replace(cfg, batching=replace(cfg.batching, enabled=False))
    dest = out / "winners" / run.tag
    rerender(source, dest, spec, cfg, {"analyzer_winner": {"tool": TOOL[run.mode], "round": run.round,
                                                           "config": run.config_path}})
    run.repository = str(dest)


def remeasure(runs: List[Run], args: argparse.Namespace, out: Path) -> None:
    """--remeasure rounds; in each, every winner once, in the order the searches ran."""
    from mnv3kit.perf import PointFailed, Settings, measure_point
    from mnv3kit.server import LocalTriton, Ports
    from mnv3kit.tune import UNSTABLE

    settings = Settings(args.concurrency, "none", None, COUNT, STABILITY)
    for n in range(1, args.remeasure + 1):
        for run in runs:
            where = out / "remeasure" / run.tag
            where.mkdir(parents=True, exist_ok=True)
            print(f"[re-measure {n}/{args.remeasure}] {TOOL[run.mode]} round {run.round}: {run.serving.label} ... ",
                  end="", file=sys.stderr, flush=True)
            for attempt in ("", "b"):  # a run perf_analyzer could not stabilise is made once more, as the tuner does
                entry = {"score": 0.0, "p99_ms": None, "concurrency": None, "error": ""}
                try:
                    with LocalTriton(Path(run.repository), Ports.free(),
                                     log_path=where / f"tritonserver{n}{attempt}.log") as triton:
                        args.versions.setdefault("tritonserver", triton.version())
                        rows = measure_point(triton.grpc_url, "grpc", args.spec.name, 1, settings,
                                             where / f"m{n}{attempt}.csv", where / f"m{n}{attempt}.log",
                                             admin_key=triton.admin_key)
                    best = best_row(rows, args.p99_ms)
                    if best:
                        entry.update(score=best["throughput"], p99_ms=best["p99_ms"], concurrency=best["concurrency"])
                    else:
                        entry["error"] = (f"over the budget at every concurrency "
                                          f"(p99 {min(r['p99_ms'] for r in rows):.1f} ms at best)")
                except (PointFailed, KitError, OSError) as exc:
                    entry["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if UNSTABLE not in entry["error"]:
                    break
            run.remeasured.append(entry)
            print(entry["error"] or f"{entry['score']:.1f} infer/s at concurrency {entry['concurrency']} "
                                    f"(p99 {entry['p99_ms']:.1f} ms)", file=sys.stderr)


def soak_winners(runs: List[Run], args: argparse.Namespace, out: Path) -> None:
    """Every answer of a short load at the top concurrency checked against logits computed in-process."""
    from mnv3kit.measure.soak import SoakOptions, soak, targets, write
    from mnv3kit.perf import concurrency_range
    from mnv3kit.server import LocalTriton, Ports

    opts = SoakOptions((max(concurrency_range(args.concurrency)),), args.soak_seconds)
    for run in runs:
        repo, where = Path(run.repository), out / "soak" / run.tag
        where.mkdir(parents=True, exist_ok=True)
        print(f"[soak] {TOOL[run.mode]} round {run.round}: {run.serving.label}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="mnv3kit-soak-") as work:
            models = targets(repo, [args.spec.name], Path(work))  # reference logits before the server takes the CPU
            try:
                with LocalTriton(repo, Ports.free(), log_path=where / "tritonserver.log") as triton:
                    result = soak(triton.grpc_url, models, opts, lambda: triton.proc.pid,
                                  progress=lambda line: print(f"  {line}", file=sys.stderr))
            except (KitError, OSError) as exc:
                run.soak = {"ok": 0, "wrong": 0, "failed": 0, "rejected": 0, "error": str(exc).splitlines()[0]}
                continue
        write(where, result)
        rows = result["rows"]
        run.soak = {"ok": sum(r["ok"] for r in rows), "wrong": result["wrong"], "failed": result["failed"],
                    "rejected": sum(r["rejected"] for r in rows), "error": "",
                    "examples": [e for r in rows for e in r["examples"]]}


# ---------------------------------------------------------------- report

def median_entry(run: Run) -> Optional[dict]:
    """The re-measurement that scored the median (of an even count the lower middle one)."""
    scores = run.scores()
    return run.remeasured[scores.index(statistics.median_low(scores))] if scores else None


def pooled_median(runs: Sequence[Run], mode: str) -> Optional[float]:
    """The median of every re-measured score of ``mode``'s winners (all rounds of the search and of the
    re-measurement)."""
    scores = [s for r in runs if r.mode == mode for s in r.scores()]
    return statistics.median(scores) if scores else None


def ratios(runs: Sequence[Run]) -> Dict[str, Optional[float]]:
    kit = pooled_median(runs, "kit")
    out = {}
    for mode in ("quick", "brute"):
        ma = pooled_median(runs, mode)
        out[f"kit/{mode}"] = kit / ma if kit is not None and ma else None
    return out


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def table_row(run: Run, max_instances: int, max_batch: int) -> List[str]:
    own = (f"{run.own['throughput']:.1f} @ {run.own['p99_ms']:.1f} ms (c{run.own['concurrency']})" if run.own
           else "-")
    med = median_entry(run)
    if med is None:
        again = "-"
    else:
        scores = run.scores()
        again = (f"{med['score']:.1f} ({min(scores):.1f}–{max(scores):.1f}) @ "
                 + (f"{med['p99_ms']:.1f} ms (c{med['concurrency']})" if med["p99_ms"] is not None else med["error"]))
    if run.soak is None:
        checked = "-"
    elif run.soak["error"]:
        checked = f"soak failed: {run.soak['error']}"
    else:
        checked = f"{run.soak['wrong']} / {run.soak['failed']}" + (" **WRONG**" if run.soak["wrong"] else "")
    spent = f"{run.pa_runs} runs, {run.points} points"
    if run.confirm_runs:
        spent += f" ({run.pa_runs - run.confirm_runs} runs searching, {run.confirm_runs} confirming)"
    config = run.serving.label if run.serving else f"none: {run.error}"
    if run.serving and run.mode != "kit":
        config += f" (`{run.own['config']}`)"
    if run.serving and (run.serving.instances > max_instances or run.serving.max_batch > max_batch):
        config += " (outside the search bounds)"
    return [f"{TOOL[run.mode]} (round {run.round})", config, own, again, checked, spent, minutes(run.wall_s)]


def render_report(info: dict, runs: List[Run]) -> str:
    from mnv3kit.report import hardware_line, markdown_table

    v = info["versions"]
    r = info["ratios"]
    ratio = "; ".join(f"{k}: **{x:.2f}x**" if x else f"{k}: -" for k, x in r.items())
    lines = [
        f"# Model Analyzer against mnv3-tune: most throughput with p99 <= {info['p99_ms']} ms",
        "",
        f"- Date: {info['date']}; hardware: {hardware_line(info['hardware'])}; load average at the end "
        f"{info['load_end']}",
        f"- Versions: Model Analyzer {v['model_analyzer']}; {v['perf_analyzer']}; tritonserver "
        f"{v.get('tritonserver', '?')} (the kit's embedded one, nvidia-pytriton); mnv3kit {v['mnv3kit']}",
        f"- Model: MobileNetV3 {info['arch']}, {info['model']}, weights {info['weights']}; the kit's default "
        f"repository `{info['kit_repository']}`, Model Analyzer's base `{info['ma_repository']}` (max batch 1, no "
        f"preferred sizes, queue bound {MA_BASE_QUEUE})",
        f"- Search bounds: instances 1..{info['max_instances']}, max batch 1..{info['max_batch']} (powers of 2), "
        f"concurrency {info['concurrency']} (Model Analyzer: powers of 2 from {min(info['levels'])} to "
        f"{max(info['levels'])}); mnv3-tune also varies the preferred batch sizes and the queue delay"
        + (f", its search capped at {info['kit_max_runs']} perf_analyzer runs (--max-runs)"
           if info.get("kit_max_runs") else ""),
        f"- Every tool and the re-measurement: perf_analyzer over gRPC, zero input, count windows of {COUNT} requests, "
        f"{STABILITY} % stability; Model Analyzer restarts tritonserver for every config and measures one concurrency "
        f"per perf_analyzer run, mnv3-tune reloads in place and measures the whole range per run",
        f"- Model Analyzer's configurations: {', '.join(f'`{name}`' for name in info['ma_yamls']) or 'none'}; "
        f"wrappers `{SERVER_WRAPPER}`, `{PA_WRAPPER}` (generated from mnv3kit); each tool's own output in `runs/`",
        f"- Re-measured: each winner rendered by the kit from the config.pbtxt its tool wrote, served by the kit's "
        f"LocalTriton, one perf_analyzer run over {info['concurrency']} (one that could not stabilise made once "
        f"more), the winners alternately, {info['remeasure']} "
        f"round(s); then a {info['soak_seconds']:g} s soak at concurrency {max(info['levels'])}, every answer "
        f"checked against in-process logits",
        f"- Total wall time {minutes(info['wall_s'])}",
        "",
        markdown_table(["Tool / mode", "Winner config", "Its own report: infer/s @ p99",
                        "Re-measured infer/s median (min–max) @ p99", "Wrong / failed", "Measurements spent",
                        "Wall time"], [table_row(run, info["max_instances"], info["max_batch"]) for run in runs]),
        "",
        f"Ratios of the re-measured medians (every round of each tool pooled): {ratio}.",
        "",
        "Measurements spent: perf_analyzer runs and the concurrency points they measured (Model Analyzer: one point per "
        "run, its re-runs with a larger request count included; mnv3-tune: every run of its search, repeats and "
        "confirmation included).",
    ]
    if info["max_batch"] < info["kit_default_max_batch"] and "kit" in info["modes"]:
        lines += ["", f"mnv3-tune starts from the kit's default config (max batch {info['kit_default_max_batch']}) "
                      f"whatever --max-batch-sizes says, and keeps it when nothing inside the bounds beats it."]
    wrong = [f"- {TOOL[run.mode]} round {run.round}: " + "; ".join(run.soak["examples"]) for run in runs
             if run.soak and run.soak.get("examples")]
    if wrong:
        lines += ["", "First wrong or failed answers:", *wrong]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- CLI

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=ARCHS, default="small", help="MobileNetV3 variant (default small)")
    p.add_argument("--weights", type=Path, help=f"weights to build with (default, --arch small: {DEFAULT_WEIGHTS.relative_to(ROOT)})")
    p.add_argument("--labels", type=Path, help=f"labels (default with the default weights: "
                                               f"{DEFAULT_LABELS.relative_to(ROOT)})")
    p.add_argument("-m", "--model", choices=sorted(RUNTIMES), default=ONNX.key,
                   help="the runtime searched: onnx (ONNX Runtime) or pt (TorchScript) (default onnx)")
    p.add_argument("--p99-ms", type=positive, required=True, metavar="MS",
                   help="latency budget, whole milliseconds (Model Analyzer's latency_budget is an integer)")
    p.add_argument("-c", "--concurrency", type=concurrency_text, default="1:8", metavar="RANGE",
                   help="client load: outstanding requests START[:END[:STEP]] (default 1:8)")
    p.add_argument("--max-instances", type=positive, default=2, metavar="N", help="instance counts 1..N (default 2)")
    p.add_argument("--max-batch", type=positive, default=8, metavar="N",
                   help="max_batch_size 1..N in powers of 2, N one of them (default 8)")
    p.add_argument("--modes", default=",".join(MODES), metavar="LIST",
                   help="which searches run each round, of quick, brute (Model Analyzer) and kit (mnv3-tune) "
                        f"(default {','.join(MODES)})")
    p.add_argument("--rounds", type=positive, default=1, metavar="N", help="rounds of the searches (default 1)")
    p.add_argument("--remeasure", type=positive, default=2, metavar="N",
                   help="rounds of the common re-measurement of the winners (default 2)")
    p.add_argument("--soak-seconds", type=float, default=5.0, metavar="S",
                   help="soak of each winner at the top concurrency, every answer checked (default 5)")
    p.add_argument("--kit-max-runs", type=positive, metavar="N",
                   help="mnv3-tune's --max-runs: the perf_analyzer runs its search may spend (default: no limit)")
    p.add_argument("--analyzer-venv", type=Path, default=DEFAULT_VENV, metavar="DIR",
                   help=f"the venv with model-analyzer (default {DEFAULT_VENV.relative_to(ROOT)}: make analyzer-venv)")
    add_output(p, help="output directory (default perf/out/analyzer-YYYYmmdd-HHMMSS)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        raise KitError(f"--modes {','.join(bad) or '(empty)'}: choose among {', '.join(MODES)}")
    args.modes = [m for m in MODES if m in args.modes]
    if args.max_batch not in powers_of_two(args.max_batch):
        raise KitError(f"--max-batch {args.max_batch}: use a power of 2 (Model Analyzer doubles max_batch_size)")
    if args.soak_seconds <= 0:
        raise KitError("--soak-seconds must be > 0")
    if args.weights is None:
        if args.arch != "small":
            raise KitError(f"--arch {args.arch} needs --weights: the demo's weights are MobileNetV3-Small")
        args.weights, args.labels = DEFAULT_WEIGHTS, args.labels or DEFAULT_LABELS
    for flag, path in (("--weights", args.weights), ("--labels", args.labels)):
        if path is not None and not path.is_file():
            raise KitError(f"{flag} {path}: no such file")
    if {"quick", "brute"} & set(args.modes) and not (args.analyzer_venv / "bin" / "model-analyzer").is_file():
        raise KitError(f"no model-analyzer in {args.analyzer_venv}: `make analyzer-venv` (or --analyzer-venv DIR)")
    # absolute: Model Analyzer runs in its run directory and reads every path of its YAML from there
    args.output = (args.output or Path("perf/out") / f"analyzer-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    if args.output.exists() and any(args.output.iterdir()):
        raise KitError(f"-o {args.output} is not empty: give a new directory")
    args.spec = RUNTIMES[args.model]


def versions(args: argparse.Namespace) -> Dict[str, str]:
    from importlib.metadata import version

    from mnv3kit.perf import find_perf_analyzer, perf_analyzer_env, perf_analyzer_version

    found = {"mnv3kit": version("mnv3kit"),
             "perf_analyzer": perf_analyzer_version(find_perf_analyzer(), perf_analyzer_env()),
             "model_analyzer": "-"}
    if {"quick", "brute"} & set(args.modes):
        proc = subprocess.run([str(args.analyzer_venv / "bin" / "model-analyzer"), "--version"], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise KitError(f"{args.analyzer_venv}/bin/model-analyzer does not start: {last_line_of(proc)}; "
                           f"`make analyzer-venv`")
        found["model_analyzer"] = proc.stdout.strip().splitlines()[-1]
    return found


def last_line_of(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr + proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def build_repositories(args: argparse.Namespace, out: Path) -> Tuple[Path, Path]:
    """The kit's default repository (mnv3-tune's source, every winner's artifacts) and Model Analyzer's base,
    rendered from the same artifacts."""
    from mnv3kit.build import BuildOptions, build, built_config, rerender
    from mnv3kit.render import Batching, ConfigOptions, Instances

    kit_repo, ma_repo = out / "repos" / "kit-default", out / "repos" / "ma-base"
    try:
        build(BuildOptions(arch=args.arch, weights=args.weights, labels=args.labels, output=kit_repo,
                           models=(args.spec.key,), trt="skip",
                           config=ConfigOptions(target="local", instances=Instances("KIND_CPU"))))
    except (OSError, RuntimeError) as exc:
        raise KitError(f"build failed ({type(exc).__name__}: {exc})") from None
    _, base = built_config(kit_repo)
    cfg = replace(base, max_batch_size=1, instances=Instances("KIND_CPU", 1),
                  batching=Batching(True, (), Batching().queue_delay_us, max_queue_size=MA_BASE_QUEUE))
    rerender(kit_repo, ma_repo, args.spec, cfg, {"analyzer_base": "max batch 1, no preferred sizes, queue bound 64"})
    return kit_repo, ma_repo


def compare(args: argparse.Namespace) -> int:
    from mnv3kit.perf import concurrency_range
    from mnv3kit.report import hardware, now
    from mnv3kit.tune import DEFAULT_MAX_BATCH

    started, date, host = time.monotonic(), now(), hardware()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    args.versions = versions(args)
    kit_repo, ma_repo = build_repositories(args, out)
    wrappers = write_wrappers(out) if {"quick", "brute"} & set(args.modes) else None
    runs = []
    for n in range(1, args.rounds + 1):
        for mode in args.modes:
            run = Run(n, mode)
            print(f"[round {n}/{args.rounds}] {TOOL[mode]} ...", file=sys.stderr, flush=True)
            if mode == "kit":
                run_kit(run, args, out, kit_repo)
            else:
                run_ma(run, args, out, ma_repo, wrappers)
            print(f"[round {n}/{args.rounds}] {TOOL[mode]}: {minutes(run.wall_s)}, {run.pa_runs} perf_analyzer runs; "
                  + (f"winner {run.serving.label}: {run.own['throughput']:.1f} infer/s at concurrency "
                     f"{run.own['concurrency']} (p99 {run.own['p99_ms']:.1f} ms)" if run.serving else run.error),
                  file=sys.stderr)
            runs.append(run)
    winners = [run for run in runs if run.serving]
    clients = max(concurrency_range(args.concurrency))
    for run in winners:
        render_winner(run, kit_repo, out, args.spec, clients)
    remeasure(winners, args, out)
    soak_winners(winners, args, out)
    info = {"date": date, "hardware": host, "load_end": round(os.getloadavg()[0], 2), "versions": args.versions,
            "arch": args.arch, "model": args.spec.name, "weights": str(args.weights), "p99_ms": args.p99_ms,
            "concurrency": args.concurrency, "levels": concurrency_range(args.concurrency),
            "max_instances": args.max_instances, "max_batch": args.max_batch, "modes": args.modes,
            "kit_max_runs": args.kit_max_runs, "rounds": args.rounds, "remeasure": args.remeasure, "soak_seconds": args.soak_seconds,
            "kit_repository": str(kit_repo), "ma_repository": str(ma_repo), "kit_default_max_batch": DEFAULT_MAX_BATCH,
            "ma_yamls": sorted(p.name for p in out.glob("ma-*.yaml")), "wall_s": time.monotonic() - started,
            "ratios": ratios(runs), "runs": [{**asdict(run), "tool": TOOL[run.mode]} for run in runs]}
    (out / "result.json").write_text(json.dumps(info, indent=2) + "\n")
    text = render_report(info, runs)
    (out / "REPORT.md").write_text(text)
    print(text)
    print(f"wrote {out / 'REPORT.md'} and {out / 'result.json'}", file=sys.stderr)
    clean = all(run.serving and run.soak and not (run.soak["error"] or run.soak["wrong"] or run.soak["failed"])
                for run in runs)
    return 0 if clean else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors():
        check_args(args)
        return compare(args)


if __name__ == "__main__":
    sys.exit(main())
