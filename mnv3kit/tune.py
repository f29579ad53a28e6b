"""Tune: the serving configuration with the most throughput while p99 stays under a budget (python -m mnv3kit.tune).

Candidates vary the runtime (pt: TorchScript, onnx: ONNX Runtime), the instance count, max_batch_size, the preferred
batch sizes and the max queue delay. Each is rendered by the kit's templates from a built --target local repository's
artifacts (mnv3kit.build.render_model), loaded into the embedded Triton through the repository API (explicit model
control: a new config swaps in without a restart) and measured with perf_analyzer over the client's concurrency range
(mnv3kit.perf.measure_point, one request = one image, as clients send). A candidate's score is its best throughput
at a concurrency whose p99 is within the budget.

The search, instead of the full grid:
  1. the kit's default config (1 instance, max batch 8, preferred 4,8, 100 us) per runtime: the single-instance
     curve. Runtimes scoring below PRUNE_RUNTIME x the best are dropped, and max batch sizes above the largest
     concurrency (which closed-loop clients can never fill) are dropped;
  2. coordinate search from the best: one dimension at a time (instances, max batch, queue delay, preferred sizes),
     every value of it with the others fixed, moving to a candidate only when it beats the best by MIN_GAIN; again
     while a pass moved, within --budget-min.
Then the winner and the best default are measured again, alternately (--confirm N times each): the margin is the
ratio of their medians, which one lucky window on a shared host does not make. The winner is written as a repository (atomically, validated), with report.md, tune.json, the candidates' CSVs and
pareto.png (throughput against p99 of every measured point, the front joined).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from itertools import product
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .build import BuildOptions, build, built_config, render_model, rerender
from .cli import add_output, add_ports, model_names, ports_of
from .errors import KitError, cli_errors, prog_name
from .perf import (PointFailed, Settings, concurrency_range, concurrency_text, hardware, hardware_line,
                   markdown_table, measure_point, now, positive)
from .render import QUEUE_BATCHES, Batching, ConfigOptions, Instances
from .server import LocalTriton
from .spec import ONNX, PROTOCOLS, PT

PRUNE_RUNTIME = 0.8  # a runtime whose default scores below this fraction of the best one's is not refined
MIN_GAIN = 1.03  # a move must beat the best by 3 %: less is within a busy machine's noise
REPORT_MD, RESULT_JSON, PARETO_PNG = "report.md", "tune.json", "pareto.png"
WINNER_DIR = "model_repository"
DEFAULT = Batching()  # the kit's defaults, as build_repo.py writes them
DEFAULT_MAX_BATCH = ConfigOptions().max_batch_size


@dataclass(frozen=True)
class Candidate:
    runtime: str  # spec key: pt or onnx
    instances: int
    max_batch: int
    preferred: Tuple[int, ...]
    delay_us: int

    @property
    def label(self) -> str:
        return (f"{self.runtime} i{self.instances} b{self.max_batch} "
                f"p{','.join(map(str, self.preferred)) or '-'} d{self.delay_us}")

    @property
    def stem(self) -> str:
        return self.label.replace(" ", "_").replace(",", "-")

    @property
    def spec(self):
        return {PT.key: PT, ONNX.key: ONNX}[self.runtime]

    def config(self, base: ConfigOptions, kind: str, clients: int) -> ConfigOptions:
        """The options to render; the queue bound holds at least ``clients`` requests: the planned load is served,
        not refused (the kit's bound, QUEUE_BATCHES full batches per instance, is smaller at max batch 1)."""
        queue = max(QUEUE_BATCHES * self.max_batch * self.instances, clients)
        return replace(base, max_batch_size=self.max_batch, instances=Instances(kind, self.instances),
                       batching=Batching(True, self.preferred, self.delay_us, max_queue_size=queue))


def default_candidate(runtime: str) -> Candidate:
    return Candidate(runtime, 1, DEFAULT_MAX_BATCH, DEFAULT.preferred, DEFAULT.queue_delay_us)


def preferred_for(choice: str, max_batch: int) -> Tuple[int, ...]:
    """none: the batcher sends what it has; max: it waits (up to the delay) for a full batch; both: for half or
    full batches (the kit's default: 4,8 at max batch 8)."""
    return {"none": (), "max": (max_batch,), "both": tuple(sorted({max(1, max_batch // 2), max_batch}))}[choice]


PREFERRED_CHOICES = ("none", "max", "both")


@dataclass
class Result:
    candidate: Candidate
    stage: str
    rows: List[dict]
    error: str = ""

    def best(self, budget_ms: float) -> Optional[dict]:
        """The row with the most throughput whose p99 is within the budget (None: no such row)."""
        within = [r for r in self.rows if r["p99_ms"] <= budget_ms]
        return max(within, key=lambda r: r["throughput"]) if within else None

    def score(self, budget_ms: float) -> float:
        row = self.best(budget_ms)
        return row["throughput"] if row else 0.0


@dataclass
class Space:
    runtimes: List[str]
    instances: List[int]
    max_batches: List[int]
    preferred: List[str]
    delays_us: List[int]

    def grid(self) -> List[Candidate]:
        """Every distinct config (max batch 1 once per runtime and instance count: nothing to batch)."""
        return list({Candidate(r, i, b, preferred_for(p, b) if b > 1 else (), d if b > 1 else 0)
                     for r, i, b, p, d in product(self.runtimes, self.instances, self.max_batches, self.preferred,
                                                  self.delays_us)})


class Tuner:
    """Measures candidates one after another in one embedded Triton, swapping configs through the repository API."""

    def __init__(self, source: Path, out: Path, triton: LocalTriton, work: Path, base: ConfigOptions, kind: str,
                 protocol: str, settings: Settings, budget_ms: float, deadline: float):
        self.source, self.out, self.triton, self.work = source, out, triton, work
        self.base, self.kind, self.protocol, self.settings = base, kind, protocol, settings
        self.budget_ms, self.deadline = budget_ms, deadline
        self.results: Dict[Candidate, Result] = {}
        self.loaded: Optional[str] = None
        self.runs = 0  # perf_analyzer runs, confirmations included
        self.clients = max(concurrency_range(settings.concurrency))

    @property
    def url(self) -> str:
        return self.triton.http_url if self.protocol == "http" else self.triton.grpc_url

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    def run(self, candidate: Candidate, stage: str, tag: str = "") -> Result:
        """Load ``candidate`` and measure it (no cache); a failure is a Result with its reason."""
        print(f"[{self.runs + 1}] {candidate.label} ({stage}) ... ", end="", file=sys.stderr, flush=True)
        self.runs += 1
        name = candidate.spec.name
        try:
            if self.loaded and self.loaded != name:  # one model at a time: an idle one would still hold memory
                self.triton.unload(self.loaded)
                self.loaded = None
            render_model(self.source, self.work, candidate.spec, candidate.config(self.base, self.kind, self.clients))
            self.triton.load(name)  # a changed config: Triton loads it anew (instances, batcher) before answering
            self.loaded = name
            stem = candidate.stem + tag
            files = (self.out / "csv" / f"{stem}.csv", self.out / "logs" / f"{stem}.log")
            timeout = max(60.0, min(self.settings.default_timeout(), self.deadline - time.monotonic()))
            rows = measure_point(self.url, self.protocol, name, 1, self.settings, *files, timeout,
                                 admin_key=self.triton.admin_key)
            result = Result(candidate, stage, rows)
        except (PointFailed, KitError, OSError) as exc:
            result = Result(candidate, stage, [], str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - the repository API's HTTP error: the candidate did not load
            result = Result(candidate, stage, [], f"did not load: {str(exc).splitlines()[0]}")
        best = result.best(self.budget_ms)
        print(f"FAILED: {result.error}" if result.error else
              f"{best['throughput']:.1f} infer/s at concurrency {best['concurrency']} (p99 {best['p99_ms']:.1f} ms)"
              if best else f"over budget at every concurrency (p99 {min(r['p99_ms'] for r in result.rows):.1f} ms "
                           f"at best)", file=sys.stderr)
        return result

    def measure(self, candidate: Candidate, stage: str) -> Result:
        if candidate not in self.results:
            self.results[candidate] = self.run(candidate, stage)
        return self.results[candidate]

    def confirm(self, winner: Candidate, default: Candidate, rounds: int) -> Dict[str, List[float]]:
        """Both again, alternately, ``rounds`` times each: on a shared host one measurement can be off by 2x."""
        scores: Dict[str, List[float]] = {"winner": [], "default": []}
        for n in range(1, rounds + 1):
            for key, candidate in (("default", default), ("winner", winner)):
                scores[key].append(self.run(candidate, "confirm", f"_confirm{n}").score(self.budget_ms))
        return scores

    def best(self, among: Optional[Sequence[Candidate]] = None) -> Optional[Result]:
        results = [self.results[c] for c in (among or self.results) if c in self.results]
        scored = [r for r in results if r.score(self.budget_ms) > 0]
        # ties (within noise) go to the cheaper config: fewer instances, smaller batches, shorter delay
        return max(scored, key=lambda r: (r.score(self.budget_ms), -r.candidate.instances,
                                          -r.candidate.max_batch, -r.candidate.delay_us), default=None)

    def search(self, space: Space) -> Optional[Result]:
        defaults = [default_candidate(r) for r in space.runtimes]
        for c in defaults:
            if not self.out_of_time():
                self.measure(c, "default")
        best = self.best(defaults)
        if best is None:
            return None
        top = best.score(self.budget_ms)
        keep = [r for r in space.runtimes if self.results.get(default_candidate(r)) and
                self.results[default_candidate(r)].score(self.budget_ms) >= PRUNE_RUNTIME * top]
        levels = concurrency_range(self.settings.concurrency)
        batches = [b for b in space.max_batches if b <= max(levels)] or [min(space.max_batches)]
        space = replace(space, runtimes=keep, max_batches=batches)
        current = best.candidate
        moved = True
        while moved and not self.out_of_time():
            moved = False
            for dim in ("runtime", "instances", "max_batch", "delay_us", "preferred"):
                for c in self.neighbours(current, dim, space):
                    if self.out_of_time():
                        break
                    self.measure(c, "refine")
                new = self.best()
                if new.candidate != current and new.score(self.budget_ms) >= MIN_GAIN * self.results[
                        current].score(self.budget_ms):
                    current, moved = new.candidate, True
        return self.results[current]

    @staticmethod
    def neighbours(c: Candidate, dim: str, space: Space) -> List[Candidate]:
        preferred = next((p for p in PREFERRED_CHOICES if preferred_for(p, c.max_batch) == c.preferred), "both")
        if dim == "runtime":
            return [replace(c, runtime=r) for r in space.runtimes if r != c.runtime]
        if dim == "instances":
            return [replace(c, instances=i) for i in space.instances]
        if dim == "max_batch":
            return [replace(c, max_batch=b, preferred=preferred_for(preferred, b)) for b in space.max_batches]
        if c.max_batch == 1 and dim in ("delay_us", "preferred"):
            return []  # batches of one: the batcher's delay and preferred sizes change nothing
        if dim == "delay_us":
            return [replace(c, delay_us=d) for d in space.delays_us]
        return [replace(c, preferred=preferred_for(p, c.max_batch)) for p in space.preferred]


# ---------------------------------------------------------------- report

def pareto(points: List[dict]) -> List[dict]:
    """The points no other point beats on both throughput (higher) and p99 (lower), by p99."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p["p99_ms"], -p["throughput"])):
        if p["throughput"] > best:
            front.append(p)
            best = p["throughput"]
    return front


def plot(points: List[dict], budget_ms: float, winner: Optional[dict], default: Optional[dict], title: str,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for runtime, marker in ((PT.key, "o"), (ONNX.key, "s")):
        mine = [p for p in points if p["runtime"] == runtime]
        if mine:
            ax.scatter([p["p99_ms"] for p in mine], [p["throughput"] for p in mine], marker=marker, alpha=0.4,
                       label=f"{runtime}: every candidate x concurrency")
    front = pareto(points)
    ax.plot([p["p99_ms"] for p in front], [p["throughput"] for p in front], color="black", label="Pareto front")
    ax.axvline(budget_ms, color="tab:red", linestyle="--", label=f"p99 budget {budget_ms:g} ms")
    for point, name, color in ((default, "default", "tab:gray"), (winner, "winner", "tab:green")):
        if point:
            ax.scatter([point["p99_ms"]], [point["throughput"]], s=120, facecolors="none", edgecolors=color,
                       linewidths=2, label=f"{name}: {point['label']} c{point['concurrency']}")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (infer/sec)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render_report(info: dict) -> str:
    budget = info["p99_ms"]
    winner, default = info["winner"], info["default"]
    lines = [f"# Tune: most throughput with p99 <= {budget:g} ms", "",
             f"- Date: {info['date']}; hardware: {hardware_line(info['hardware'])}",
             f"- Server: the embedded Triton, {info['kind']} instances; perf_analyzer over "
             f"{info['protocol'].upper()}, shared memory {info['shared_memory']}, concurrency "
             f"{info['concurrency']}, one image per request; `{' '.join(info['perf_args'])}`",
             f"- Source repository: {info['source']} ({info['arch']})",
             f"- Measurements: {info['measured']} candidates ({info['points']} perf_analyzer points) of a full grid of "
             f"{info['grid']} candidates ({info['grid_points']} points); {info['runs']} perf_analyzer runs in all "
             f"(confirmation included), {info['minutes']:.1f} min"
             + (" (stopped at --budget-min)" if info["out_of_time"] else "")]
    if winner:
        lines += [f"- Winner: `{winner['label']}`: {winner['throughput']:.1f} infer/s at concurrency "
                  f"{winner['concurrency']}, p99 {winner['p99_ms']:.1f} ms; written to {info['repository']}"]
    else:
        lines += ["- Winner: none: no candidate kept p99 within the budget at any concurrency"]
    if winner and default:
        lines += [f"- Kit default (best runtime, `{default['label']}`): {default['throughput']:.1f} infer/s at "
                  f"concurrency {default['concurrency']}, p99 {default['p99_ms']:.1f} ms; winner / default: "
                  f"**{winner['throughput'] / default['throughput']:.2f}x**"]
    elif winner:
        lines += ["- Kit default: no runtime's default kept p99 within the budget"]
    confirmed = info["confirmed"]
    if confirmed:
        medians = {k: statistics.median(v) for k, v in confirmed.items()}
        rounds = len(confirmed["winner"])
        met = {k: sum(1 for v in scores if v > 0) for k, scores in confirmed.items()}
        lines += [f"- Measured again, alternately, {rounds} times each (infer/s within the budget, 0: over it at "
                  f"every concurrency): default {', '.join(f'{v:.1f}' for v in confirmed['default'])}; winner "
                  f"{', '.join(f'{v:.1f}' for v in confirmed['winner'])}; "
                  + (f"median winner / median default: **{medians['winner'] / medians['default']:.2f}x**"
                     if medians["default"] else
                     f"the default met the budget in {met['default']} of {rounds} rounds, the winner in "
                     f"{met['winner']}")]
    headers = ["Candidate", "Stage", "Runtime", "Instances", "Max batch", "Preferred", "Delay (us)",
               "Best infer/s within budget", "at concurrency", "p99 there (ms)", "Lowest p99 (ms)", "Note"]
    rows = []
    for r in info["candidates"]:
        c = r["candidate"]
        best = r["best"]
        rows.append([f"`{r['label']}`", r["stage"], c["runtime"], c["instances"], c["max_batch"],
                     ",".join(map(str, c["preferred"])) or "-", c["delay_us"],
                     f"{best['throughput']:.1f}" if best else "-", best["concurrency"] if best else "-",
                     f"{best['p99_ms']:.1f}" if best else "-",
                     f"{min(x['p99_ms'] for x in r['rows']):.1f}" if r["rows"] else "-",
                     r["error"] or ("winner" if winner and r["label"] == winner["label"] else "")])
    lines += ["", "## Every measured candidate", "", markdown_table(headers, rows), "",
              f"![throughput vs p99]({PARETO_PNG})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- CLI

def int_list(text: str) -> List[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def choice_list(choices: Sequence[str]):
    def parse(text: str) -> List[str]:
        values = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in values if x not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"expected comma-separated values of {', '.join(choices)}, got {text!r}")
        return values
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog_name("mnv3kit.tune"), description=__doc__.split("\n\n")[0],
                                epilog="Exit status: 0 a winner written; 1 no candidate met the budget; 2 bad input.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--repo", type=Path, metavar="DIR", help="a repository built with build_repo.py --target local")
    src.add_argument("--arch", choices=("large", "small"), help="build one first (--target local, pt and onnx)")
    p.add_argument("--weights", type=Path, help="with --arch: the weights to build with (default: seeded random)")
    p.add_argument("--p99-ms", type=float, required=True, metavar="MS", help="latency budget: p99 of a request")
    p.add_argument("-c", "--concurrency", type=concurrency_text, default="1:8:1", metavar="RANGE",
                   help="the client load to plan for: outstanding requests START[:END[:STEP]] (default 1:8:1)")
    p.add_argument("-i", "--protocol", choices=PROTOCOLS, default="http", help="default http")
    p.add_argument("--shared-memory", choices=("none", "system"), default="none",
                   help="how perf_analyzer passes tensors (default none)")
    p.add_argument("-m", "--models", type=model_names, default=[PT.name, ONNX.name], metavar="LIST",
                   help="runtimes to try: pt (TorchScript), onnx (ONNX Runtime) (default pt,onnx)")
    p.add_argument("--instances", type=int_list, metavar="LIST",
                   help="instance counts to try (default 1..the host's cores)")
    p.add_argument("--max-batch-sizes", type=int_list, default=[1, 2, 4, 8, 16], metavar="LIST",
                   help="max_batch_size values to try (default 1,2,4,8,16)")
    p.add_argument("--queue-delays-us", type=int_list, default=[0, 100, 1000, 5000], metavar="LIST",
                   help="max_queue_delay_microseconds values to try (default 0,100,1000,5000)")
    p.add_argument("--preferred", type=choice_list(PREFERRED_CHOICES), default=list(PREFERRED_CHOICES),
                   metavar="LIST", help="preferred batch sizes to try: none, max (max batch), both (half and max; "
                                        "the kit's default) (default none,max,both)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--count", type=positive, default=None, metavar="N",
                      help="count windows of N requests (default 30)")
    size.add_argument("-p", "--window", type=positive, metavar="MS", help="time windows of MS instead")
    p.add_argument("--stability", type=positive, default=20, metavar="PCT",
                   help="allowed spread of perf_analyzer's last 3 windows (default 20)")
    p.add_argument("--confirm", type=int, default=2, metavar="N",
                   help="then measure the winner and the kit's default again, alternately, N times each, and report "
                        "the medians' ratio (default 2; 0: no confirmation)")
    p.add_argument("--budget-min", type=float, default=30.0, metavar="MIN",
                   help="stop measuring new candidates after this many minutes (default 30)")
    add_output(p, help="report directory (default perf/out/tune-YYYYmmdd-HHMMSS); the winner repository goes to "
                       f"DIR/{WINNER_DIR} unless --winner")
    p.add_argument("--winner", type=Path, metavar="DIR", help="where the winner repository is written")
    add_ports(p, free=True)
    args = p.parse_args(argv)
    if args.weights and not args.arch:
        p.error("--weights goes with --arch (a --repo is already built)")
    runtimes = {PT.name: PT.key, ONNX.name: ONNX.key}
    bad = [m for m in args.models if m not in runtimes]
    if bad:
        p.error(f"--models {','.join(bad)}: the tuner tries {PT.key} and {ONNX.key}")
    args.runtimes = [runtimes[m] for m in args.models]
    if args.p99_ms <= 0 or args.budget_min <= 0 or args.confirm < 0:
        p.error("--p99-ms and --budget-min must be > 0, --confirm >= 0")
    if 0 in args.max_batch_sizes:
        p.error("--max-batch-sizes must be >= 1")
    if args.instances and 0 in args.instances:
        p.error("--instances must be >= 1")
    return args


def tune(args: argparse.Namespace) -> int:
    started, date = time.monotonic(), now()
    if args.repo:
        built_config(args.repo)  # a repository that cannot be tuned is refused before anything is written
    out = args.output or Path("perf/out") / f"tune-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    winner_dir = args.winner or out / WINNER_DIR
    host = hardware()
    import torch

    kind = "KIND_GPU" if torch.cuda.is_available() else "KIND_CPU"
    space = Space(args.runtimes, args.instances or list(range(1, (os.cpu_count() or 1) + 1)), args.max_batch_sizes,
                  args.preferred, args.queue_delays_us)
    settings = Settings(args.concurrency, args.shared_memory, args.window, None if args.window else args.count or 30,
                        args.stability)
    with tempfile.TemporaryDirectory(prefix="mnv3kit-tune-") as tmp:
        source = args.repo
        if source is None:
            source = build(BuildOptions(arch=args.arch, weights=args.weights, output=Path(tmp) / "built",
                                        models=tuple(args.runtimes),
                                        config=ConfigOptions(target="local", instances=Instances("KIND_CPU"))))
        manifest, base = built_config(source)
        work = Path(tmp) / "repository"
        work.mkdir()
        first = default_candidate(args.runtimes[0])
        render_model(source, work, first.spec, first.config(base, kind, max(concurrency_range(args.concurrency))))
        deadline = started + args.budget_min * 60
        with LocalTriton(work, ports_of(args), log_path=out / "tritonserver.log") as triton:
            tuner = Tuner(Path(source), out, triton, work, base, kind, args.protocol, settings, args.p99_ms, deadline)
            tuner.loaded = first.spec.name
            best = tuner.search(space)
            default = tuner.best([default_candidate(r) for r in args.runtimes])
            confirmed = (tuner.confirm(best.candidate, default.candidate, args.confirm) if args.confirm and best
                         and default and best.candidate != default.candidate else None)
        if best is not None:
            rerender(Path(source), winner_dir, best.candidate.spec, best.candidate.config(base, kind, tuner.clients),
                     {"tuned": {"p99_ms": args.p99_ms, "concurrency": args.concurrency, "protocol": args.protocol,
                                "candidate": asdict(best.candidate), "report": str(out / REPORT_MD)}})
        arch = manifest.get("arch", "?")
        source_text = str(args.repo) if args.repo else f"built here from --arch {args.arch}"
    levels = len(concurrency_range(args.concurrency))
    results = list(tuner.results.values())

    def point(result: Optional[Result]) -> Optional[dict]:
        row = result.best(args.p99_ms) if result else None
        return {**row, "label": result.candidate.label} if row else None

    grid = set(space.grid()) | {default_candidate(r) for r in args.runtimes}
    info = {"date": date, "hardware": host, "kind": kind, "protocol": args.protocol,
            "shared_memory": args.shared_memory, "concurrency": args.concurrency, "perf_args": settings.args(),
            "p99_ms": args.p99_ms, "source": source_text, "arch": arch, "repository": str(winner_dir),
            "measured": len(results), "points": sum(len(r.rows) or levels for r in results), "runs": tuner.runs,
            "confirmed": confirmed,
            "grid": len(grid), "grid_points": len(grid) * levels,
            "minutes": (time.monotonic() - started) / 60, "out_of_time": tuner.out_of_time(),
            "winner": point(best), "default": point(default),
            "candidates": [{"label": r.candidate.label, "stage": r.stage, "candidate": asdict(r.candidate),
                            "rows": r.rows, "best": r.best(args.p99_ms), "error": r.error} for r in results]}
    (out / RESULT_JSON).write_text(json.dumps(info, indent=2) + "\n")
    points = [{**row, "runtime": r.candidate.runtime, "label": r.candidate.label} for r in results for row in r.rows]
    if points:
        plot(points, args.p99_ms, info["winner"], info["default"],
             f"MobileNetV3 {arch}, {kind} - {hardware_line(host, load=False)}", out / PARETO_PNG)
    text = render_report(info)
    (out / REPORT_MD).write_text(text)
    print(text)
    print(f"wrote {out / REPORT_MD}" + (f" and the winner repository {winner_dir}" if best else ""), file=sys.stderr)
    return 0 if best else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors(prog_name("mnv3kit.tune")):
        return tune(args)


if __name__ == "__main__":
    sys.exit(main())
