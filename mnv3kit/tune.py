"""Tune: the serving configuration with the most throughput while p99 stays under a budget (mnv3-tune).

Candidates vary the model and its runtime (pt: TorchScript, u8: the same behind the UINT8 pixel contract, onnx: ONNX
Runtime, ov / ov_u8: OpenVINO; the torch models also TorchInductor, --runtime compiled, given a repository built with
it), the instance count, max_batch_size, the preferred batch sizes, the max queue delay and, on a GPU, the CUDA graphs
the torch models capture (none, one per preferred size, or one per power of two up to max batch). Each is rendered by the kit's templates from a built --target local repository's
artifacts (mnv3kit.build.render_model), loaded into the embedded Triton through the repository API (explicit model
control: a new config swaps in without a restart) and measured with perf_analyzer over the client's concurrency range
(mnv3kit.perf.measure_point, one request = one image, as clients send). A candidate's score is its best throughput
at a concurrency whose p99 is within the budget.

The search (Search), instead of the full grid:
  1. the kit's default config (1 instance, max batch 8, preferred 4,8, 100 us, no CUDA graphs) per model and torch
     runtime: the single-instance
     curve. Runtimes scoring below PRUNE_RUNTIME x the best are dropped, and max batch sizes above the largest
     concurrency (which closed-loop clients can never fill) are dropped;
  2. coordinate search from the best: one dimension at a time (model, torch runtime, instances, max batch, CUDA
     graphs, queue delay, preferred sizes), every value of it with the others fixed; the best of everything measured replaces the incumbent when it
     beats it by MIN_GAIN, or, when it is the cheaper config (fewer instances, smaller batches, shorter delay), when
     it ties or beats it; again while a pass moved, within --budget-min and --max-runs.
A run perf_analyzer could not stabilise (UNSTABLE) is made once more before it counts. A challenger whose lead is enough but under NOISE (what one lucky window on a busy host makes) does not move the search
at once: both are measured again, alternately, up to REPEATS more runs each, and the medians decide. Then the winner
and the best default are measured again, alternately (--confirm N times each): the margin is the ratio of their
medians. The winner is written as a repository (atomically, validated), with report.md (every run's score, the
spread of the winner's and the default's), tune.json, the candidates' CSVs and pareto.png (throughput against p99 of
every measured point, the front joined).

Search only proposes candidates and reads their scores; a Measurer scores them: TritonMeasurer in the embedded
Triton, a fake one in tests/test_tune_search.py.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from itertools import product
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Protocol, Tuple

from .backend.classifier_model import bucket_sizes
from .build import BuildOptions, build, built_config, render_model, rerender
from .errors import KitError
from .perf import PointFailed, Settings, concurrency_range, measure_point
from .report import hardware, hardware_line, latency_axes, markdown_table, now, save
from .render import QUEUE_BATCHES, Batching, ConfigOptions, GpuOptions, Instances
from .server import LocalTriton
from .spec import ONNX, OV, OV_U8, PT, U8

RUNTIMES = {spec.key: spec for spec in (PT, U8, ONNX, OV, OV_U8)}  # what the tuner can serve a candidate with
TORCH_KEYS = (PT.key, U8.key)  # the models --runtime (torchscript | compiled) applies to
GRAPH_CHOICES = ("none", "preferred", "all")
MARKERS = "osv^D"  # pareto.png: one per RUNTIMES key, in order

PRUNE_RUNTIME = 0.8  # a runtime whose default scores below this fraction of the best one's is not refined
MIN_GAIN = 1.03  # a move must beat the incumbent by 3 %: less is within a busy machine's noise
NOISE = 1.25  # a lead under 25 % can be one lucky perf_analyzer window on a busy 2-core host: measured again
REPEATS = 2  # more runs of each side of such a near-tie, at most: a median of 3 outvotes one lucky window
# perf_analyzer's words when its windows never agreed: a busy host's noise, not the candidate's fault, so such a run
# is made once more before it counts as the candidate's failure (one failed default would end the search)
UNSTABLE = "Failed to obtain stable measurement"
DIMENSIONS = ("runtime", "compiled", "graphs", "instances", "max_batch", "delay_us", "preferred")  # the coordinate search's order
REPORT_MD, RESULT_JSON, PARETO_PNG = "report.md", "tune.json", "pareto.png"
WINNER_DIR = "model_repository"
DEFAULT = Batching()  # the kit's defaults, as build_repo.py writes them
DEFAULT_MAX_BATCH = ConfigOptions().max_batch_size


@dataclass(frozen=True)
class Candidate:
    runtime: str  # spec key of the model served: a key of RUNTIMES
    instances: int
    max_batch: int
    preferred: Tuple[int, ...]
    delay_us: int
    compiled: bool = False  # a torch model run by TorchInductor (--runtime compiled) instead of TorchScript
    graphs: str = "none"  # CUDA graphs a torch model captures on a GPU: a GRAPH_CHOICES value

    @property
    def label(self) -> str:
        return (f"{self.runtime}{' compiled' if self.compiled else ''} i{self.instances} b{self.max_batch} "
                f"p{','.join(map(str, self.preferred)) or '-'} d{self.delay_us}"
                + (f" g{','.join(map(str, self.graph_batches))}" if self.graph_batches else ""))

    @property
    def graph_batches(self) -> Tuple[int, ...]:
        return graph_sizes(self.graphs, self.max_batch, self.preferred)

    @property
    def stem(self) -> str:
        return self.label.replace(" ", "_").replace(",", "-")

    @property
    def spec(self):
        return RUNTIMES[self.runtime]

    def config(self, base: ConfigOptions, kind: str, clients: int) -> ConfigOptions:
        """The options to render; each instance's queue bound holds at least ``clients`` requests: the planned load
        is served, not refused (the kit's bound, QUEUE_BATCHES full batches per instance, is smaller at max batch 1;
        and Triton may hand one instance most of the requests, its queue being the model's own)."""
        queue = max(QUEUE_BATCHES * self.max_batch, clients) * self.instances
        return replace(base, max_batch_size=self.max_batch, instances=Instances(kind, self.instances),
                       batching=Batching(True, self.preferred, self.delay_us, max_queue_size=queue),
                       runtime="compiled" if self.compiled else "torchscript",
                       gpu=replace(base.gpu, cuda_graph_batches=self.graph_batches))


def graph_sizes(choice: str, max_batch: int, preferred: Tuple[int, ...]) -> Tuple[int, ...]:
    """The batch sizes CUDA graphs are captured for (a batch runs padded to the next one): none; the preferred sizes
    and max batch (what the batcher forms most); or every power of two up to max batch, and max batch."""
    if choice == "none":
        return ()
    if choice == "preferred":
        return tuple(sorted({*preferred, max_batch}))
    return tuple(bucket_sizes(max_batch))


def source_of(sources: Dict[bool, Path], candidate: Candidate) -> Path:
    """The built repository ``candidate``'s artifact comes from: its torch runtime's (onnx, ov: any has them)."""
    return sources.get(candidate.compiled) or next(iter(sources.values()))


def default_candidate(runtime: str, compiled: bool = False) -> Candidate:
    return Candidate(runtime, 1, DEFAULT_MAX_BATCH, DEFAULT.preferred, DEFAULT.queue_delay_us, compiled)


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
    compiled: List[bool] = field(default_factory=lambda: [False])  # torch runtimes: [False] TorchScript, True compiled
    graphs: List[str] = field(default_factory=lambda: ["none"])  # GRAPH_CHOICES to try (torch models on a GPU)

    def torch_runtimes(self, runtime: str) -> List[bool]:
        return self.compiled if runtime in TORCH_KEYS else [False]

    def graph_choices(self, runtime: str) -> List[str]:
        return self.graphs if runtime in TORCH_KEYS else ["none"]

    def defaults(self) -> List[Candidate]:
        """The kit's default config of every model and torch runtime."""
        return [default_candidate(r, c) for r in self.runtimes for c in self.torch_runtimes(r)]

    def grid(self) -> List[Candidate]:
        """Every distinct config (max batch 1 once per runtime and instance count: nothing to batch)."""
        return list({Candidate(r, i, b, pref, d if b > 1 else 0, c, g)
                     for r in self.runtimes for c in self.torch_runtimes(r) for g in self.graph_choices(r)
                     for i, b, p, d in product(self.instances, self.max_batches, self.preferred, self.delays_us)
                     for pref in [preferred_for(p, b) if b > 1 else ()]})


def cost(c: Candidate) -> Tuple[int, int, int]:
    """What a config spends, compared in this order: instances (memory, cores), max batch (a batch's latency), queue
    delay (waiting); the lower of two is the cheaper."""
    return c.instances, c.max_batch, c.delay_us


def needed_gain(challenger: Candidate, incumbent: Candidate) -> float:
    """The score ratio over the incumbent a challenger needs to replace it: a cheaper one wins a tie, any other must
    beat it by MIN_GAIN."""
    return 1.0 if cost(challenger) < cost(incumbent) else MIN_GAIN


def with_max_batch(c: Candidate, max_batch: int, choice: str) -> Candidate:
    """``c`` at another max batch, preferred sizes by ``choice``; batches of one have neither preferred sizes nor a
    delay, so that they are one config, as in Space.grid."""
    if max_batch == 1:
        return replace(c, max_batch=1, preferred=(), delay_us=0)
    return replace(c, max_batch=max_batch, preferred=preferred_for(choice, max_batch))


def neighbours(c: Candidate, dim: str, space: Space) -> List[Candidate]:
    """Every value of ``dim`` in ``space``, the other dimensions as in ``c``."""
    preferred = next((p for p in PREFERRED_CHOICES if preferred_for(p, c.max_batch) == c.preferred), "both")
    if dim == "runtime":  # another model keeps the torch runtime where it can, and drops graphs it cannot capture
        return [replace(c, runtime=r, compiled=c.compiled and r in TORCH_KEYS,
                        graphs=c.graphs if r in TORCH_KEYS else "none") for r in space.runtimes if r != c.runtime]
    if dim == "compiled":
        return [replace(c, compiled=x) for x in space.torch_runtimes(c.runtime) if x != c.compiled]
    if dim == "graphs":
        return [replace(c, graphs=g) for g in space.graph_choices(c.runtime) if g != c.graphs]
    if dim == "instances":
        return [replace(c, instances=i) for i in space.instances]
    if dim == "max_batch":
        return [with_max_batch(c, b, preferred) for b in space.max_batches]
    if c.max_batch == 1 and dim in ("delay_us", "preferred"):
        return []  # batches of one: the batcher's delay and preferred sizes change nothing
    if dim == "delay_us":
        return [replace(c, delay_us=d) for d in space.delays_us]
    return [replace(c, preferred=preferred_for(p, c.max_batch)) for p in space.preferred]


class Measurer(Protocol):
    """What Search needs to score a candidate."""

    def measure(self, candidate: Candidate, stage: str, tag: str = "") -> Result:
        """One measurement of ``candidate`` (no cache); ``tag`` tells its files from the candidate's other runs'."""


class TritonMeasurer:
    """Measures candidates one after another in one embedded Triton, swapping configs through the repository API."""

    def __init__(self, sources: Dict[bool, Path], out: Path, triton: LocalTriton, work: Path, base: ConfigOptions,
                 kind: str, protocol: str, settings: Settings, budget_ms: float, deadline: float):
        """``sources``: the built repository of each torch runtime (False: TorchScript, True: compiled)."""
        self.sources, self.out, self.triton, self.work = sources, out, triton, work
        self.copied: Dict[str, Path] = {}  # model name -> the source its directory in ``work`` was copied from
        self.base, self.kind, self.protocol, self.settings = base, kind, protocol, settings
        self.budget_ms, self.deadline = budget_ms, deadline
        self.loaded: Optional[Candidate] = None
        self.count = 0  # numbers the progress lines
        self.clients = max(concurrency_range(settings.concurrency))

    @property
    def url(self) -> str:
        return self.triton.http_url if self.protocol == "http" else self.triton.grpc_url

    def measure(self, candidate: Candidate, stage: str, tag: str = "") -> Result:
        """Load ``candidate`` and measure it; a failure is a Result with its reason."""
        self.count += 1
        print(f"[{self.count}] {candidate.label} ({stage}) ... ", end="", file=sys.stderr, flush=True)
        name = candidate.spec.name
        try:
            # one model at a time: an idle one would still hold memory. And on a CPU, a new instance count loads the
            # model anew: Triton would add or remove instances in place, and the ones it adds get the model's config
            # as first loaded, so they would split the cores for the old count (cpu_threads)
            if self.loaded and (self.loaded.spec.name != name or (
                    self.kind == "KIND_CPU" and self.loaded.instances != candidate.instances)):
                self.triton.unload(self.loaded.spec.name)
                self.loaded = None
            source = source_of(self.sources, candidate)
            if self.copied.get(name, source) != source:  # the other torch runtime's artifact: copied anew
                shutil.rmtree(self.work / name)
            render_model(source, self.work, candidate.spec, candidate.config(self.base, self.kind, self.clients))
            self.copied[name] = source
            self.triton.load(name)  # a changed config: Triton loads it anew (instances, batcher) before answering
            self.loaded = candidate
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


class Search:
    """Decides what to measure and which candidate wins; ``measurer`` scores the candidates. Every run of a
    candidate is kept (``results``, the first run first); its score is their median."""

    def __init__(self, measurer: Measurer, space: Space, clients: int, budget_ms: float, deadline: float,
                 clock: Callable[[], float] = time.monotonic, max_runs: int = 0):
        self.measurer, self.space, self.clients = measurer, space, clients
        self.budget_ms, self.deadline, self.clock = budget_ms, deadline, clock
        self.max_runs = max_runs  # of the search (first runs and repeats); 0: no limit
        self.results: Dict[Candidate, List[Result]] = {}
        self.runs = 0  # measurements: first runs, repeats and confirmation rounds

    def out_of_time(self) -> bool:
        """Past the deadline, or the search's runs spent: nothing new is measured (the confirmation still runs)."""
        return self.clock() > self.deadline or 0 < self.max_runs <= self.runs

    def run(self, candidate: Candidate, stage: str, tag: str = "") -> Result:
        self.runs += 1
        return self.measurer.measure(candidate, stage, tag)

    def record(self, candidate: Candidate, stage: str) -> None:
        """One more run of ``candidate`` into its results (a run that could not stabilise: made once more)."""
        runs = self.results.get(candidate, [])
        tag = f"_{stage}{len(runs)}" if runs else ""
        result = self.run(candidate, stage, tag)
        if UNSTABLE in result.error and not self.out_of_time():
            result = self.run(candidate, stage, f"{tag}_again")
        self.results[candidate] = runs + [result]

    def measure(self, candidate: Candidate, stage: str) -> None:
        if candidate not in self.results:
            self.record(candidate, stage)

    def scores(self, candidate: Candidate) -> List[float]:
        return [r.score(self.budget_ms) for r in self.results[candidate]]

    def score(self, candidate: Candidate) -> float:
        """The median of its runs' scores (of an even count the lower middle one: a measured score, the cautious)."""
        return statistics.median_low(self.scores(candidate))

    def result(self, candidate: Candidate) -> Result:
        """The run that scored the median."""
        return self.results[candidate][self.scores(candidate).index(self.score(candidate))]

    def best(self, among: Iterable[Candidate]) -> Optional[Candidate]:
        """The highest scoring of ``among`` that were measured, ties to the cheaper; None: none met the budget."""
        scored = [c for c in among if c in self.results and self.score(c) > 0]
        return min(scored, key=lambda c: (-self.score(c), cost(c)), default=None)

    def search(self) -> Optional[Candidate]:
        """The winner: the best of the runtimes' defaults (or, when none met the budget, the closest), refined (None:
        nothing measured met the budget)."""
        defaults = self.space.defaults()
        for c in defaults:
            if not self.out_of_time():
                self.measure(c, "default")
        start = self.best(defaults) or self.closest(defaults)
        if start is None:
            return None
        winner = self.refine(start, self.pruned(self.score(start)))
        return winner if self.score(winner) > 0 else None

    def closest(self, among: Iterable[Candidate]) -> Optional[Candidate]:
        """Of candidates none of which met the budget, the one with the lowest p99 at any concurrency: where the
        search starts when no default meets it (e.g. a GPU's defaults with batches of new sizes still to warm)."""
        p99 = {c: min(r["p99_ms"] for r in self.result(c).rows) for c in among if c in self.results
               and self.result(c).rows}
        return min(p99, key=lambda c: (p99[c], cost(c)), default=None)

    def pruned(self, top: float) -> Space:
        """The space without the models and torch runtimes whose defaults scored under PRUNE_RUNTIME x ``top`` and
        without the max batch sizes over the clients' concurrency, which closed-loop clients never fill."""
        kept = [c for c in self.space.defaults() if c in self.results and self.score(c) >= PRUNE_RUNTIME * top
                and (top > 0 or c == self.closest(self.space.defaults()))]
        runtimes = [r for r in self.space.runtimes if any(c.runtime == r for c in kept)]
        compiled = [x for x in self.space.compiled if any(c.compiled == x for c in kept)] or [False]
        batches = [b for b in self.space.max_batches if b <= self.clients] or [min(self.space.max_batches)]
        return replace(self.space, runtimes=runtimes, compiled=compiled, max_batches=batches)

    def refine(self, current: Candidate, space: Space) -> Candidate:
        """Coordinate search: every value of one dimension at a time, then a move to the best of everything measured
        if it beats ``current``; again while a pass moved, within the deadline."""
        moved = True
        while moved and not self.out_of_time():
            moved = False
            for dim in DIMENSIONS:
                for c in neighbours(current, dim, space):
                    if self.out_of_time():
                        break
                    self.measure(c, "refine")
                challenger = self.best(c for c in self.results if c != current)
                if challenger and self.beats(challenger, current):
                    current, moved = challenger, True
        return current

    def beats(self, challenger: Candidate, incumbent: Candidate) -> bool:
        """Whether ``challenger`` replaces ``incumbent`` (needed_gain); a lead within the noise is decided on the
        medians of repeated runs."""
        need = needed_gain(challenger, incumbent)
        if need * self.score(incumbent) <= self.score(challenger) < NOISE * self.score(incumbent):
            self.repeat(incumbent, challenger)
        return self.score(challenger) >= need * self.score(incumbent)

    def repeat(self, *candidates: Candidate) -> None:
        """Each candidate measured again, alternately, up to 1 + REPEATS runs in all, within the deadline."""
        for _ in range(REPEATS):
            for c in candidates:
                if len(self.results[c]) <= REPEATS and not self.out_of_time():
                    self.record(c, "repeat")

    def confirm(self, winner: Candidate, default: Candidate, rounds: int) -> Dict[str, List[float]]:
        """Both again, alternately, ``rounds`` times each: on a shared host one measurement can be off by 2x."""
        scores: Dict[str, List[float]] = {"winner": [], "default": []}
        for n in range(1, rounds + 1):
            for key, candidate in (("default", default), ("winner", winner)):
                scores[key].append(self.run(candidate, "confirm", f"_confirm{n}").score(self.budget_ms))
        return scores


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
    fig, ax = latency_axes(title, fontsize=9)
    for runtime, marker in zip(RUNTIMES, MARKERS):
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
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)


def every_score(search: Search, winner: Optional[Candidate], default: Optional[Candidate],
                confirmed: Optional[Dict[str, List[float]]]) -> Dict[str, List[float]]:
    """Every score of the winner and of the default (once when the winner is the default): the search's runs, then
    the confirmation's."""
    picked = {"winner": winner, "default": default if default != winner else None}
    return {key: search.scores(c) + (confirmed[key] if confirmed else []) for key, c in picked.items() if c}


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
             f"{info['grid']} candidates ({info['grid_points']} points); {info['runs']} perf_analyzer runs in all: "
             f"{info['search_runs']} of the search ({info['repeats']} repeats of near-ties included), "
             f"{info['runs'] - info['search_runs']} of the confirmation; {info['minutes']:.1f} min"
             + (" (stopped at --budget-min or --max-runs)" if info["out_of_time"] else "")]
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
    spread = info["spread"]
    if spread:
        lines += ["- Every run (search and confirmation; infer/s within the budget): "
                  + "; ".join(f"{key} {min(scores):.1f}-{max(scores):.1f} ({len(scores)} run"
                              f"{'s' if len(scores) > 1 else ''})" for key, scores in spread.items())]
    headers = ["Candidate", "Stage", "Runtime", "Instances", "Max batch", "Preferred", "Delay (us)",
               "Best infer/s within budget", "at concurrency", "p99 there (ms)", "Lowest p99 (ms)",
               "Every run's infer/s", "Note"]
    rows = []
    for r in info["candidates"]:
        c = r["candidate"]
        best = r["best"]
        rows.append([f"`{r['label']}`", r["stage"], c["runtime"], c["instances"], c["max_batch"],
                     ",".join(map(str, c["preferred"])) or "-", c["delay_us"],
                     f"{best['throughput']:.1f}" if best else "-", best["concurrency"] if best else "-",
                     f"{best['p99_ms']:.1f}" if best else "-",
                     f"{min(x['p99_ms'] for x in r['rows']):.1f}" if r["rows"] else "-",
                     ", ".join(f"{s:.1f}" for s in r["scores"]),
                     r["error"] or ("winner" if winner and r["label"] == winner["label"] else "")])
    lines += ["", "## Every measured candidate", "", markdown_table(headers, rows), "",
              f"![throughput vs p99]({PARETO_PNG})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- CLI

def tune(args: argparse.Namespace, ports) -> int:
    """Runs the search mnv3-tune's arguments ask for (mnv3kit/cli/tune.py) on an embedded Triton on ``ports``."""
    started, date = time.monotonic(), now()
    import torch

    kind = "KIND_GPU" if torch.cuda.is_available() else "KIND_CPU"
    compiled = [runtime == "compiled" for runtime in args.torch_runtimes]
    if kind != "KIND_GPU" and (True in compiled or args.cuda_graphs != ["none"]):
        raise KitError("--torch-runtimes compiled and --cuda-graphs other than none need a CUDA GPU (KIND_GPU "
                       "instances); none is visible here")
    sources = {runtime == "compiled": repo for runtime, repo in zip(args.torch_runtimes, args.repo or [])}
    for repo in args.repo or []:
        built_config(repo)  # a repository that cannot be tuned is refused before anything is written
    out = args.output or Path("perf/out") / f"tune-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    winner_dir = args.winner or out / WINNER_DIR
    host = hardware()
    space = Space(args.runtimes, args.instances or list(range(1, (os.cpu_count() or 1) + 1)), args.max_batch_sizes,
                  args.preferred, args.queue_delays_us, compiled, args.cuda_graphs)
    settings = Settings(args.concurrency, args.shared_memory, args.window, None if args.window else args.count or 30,
                        args.stability)
    with tempfile.TemporaryDirectory(prefix="mnv3kit-tune-") as tmp:
        for x in compiled if not sources else ():  # --arch: one build per torch runtime, for every max batch tried
            sources[x] = build(BuildOptions(
                arch=args.arch, weights=args.weights, output=Path(tmp) / f"built-{'compiled' if x else 'torchscript'}",
                models=tuple(r for r in args.runtimes if not x or r in TORCH_KEYS),
                config=ConfigOptions(target="local", instances=Instances(kind), max_batch_size=max(args.max_batch_sizes),
                                     runtime="compiled" if x else "torchscript",
                                     gpu=replace(GpuOptions(), precision=args.precision))))
        manifest, base = built_config(sources[compiled[0]])
        base = replace(base, gpu=replace(base.gpu, precision=args.precision))
        work = Path(tmp) / "repository"
        work.mkdir()
        first = space.defaults()[0]
        render_model(source_of(sources, first), work, first.spec,
                     first.config(base, kind, max(concurrency_range(args.concurrency))))
        deadline = started + args.budget_min * 60
        with LocalTriton(work, ports, log_path=out / "tritonserver.log") as triton:
            measurer = TritonMeasurer(sources, out, triton, work, base, kind, args.protocol, settings,
                                      args.p99_ms, deadline)
            measurer.loaded, measurer.copied[first.spec.name] = first, source_of(sources, first)
            search = Search(measurer, space, measurer.clients, args.p99_ms, deadline, max_runs=args.max_runs)
            best = search.search()
            search_runs, out_of_time = search.runs, search.out_of_time()
            default = search.best(space.defaults())
            confirmed = (search.confirm(best, default, args.confirm) if args.confirm and best and default
                         and best != default else None)
        if best is not None:
            rerender(Path(source_of(sources, best)), winner_dir, best.spec, best.config(base, kind, measurer.clients),
                     {"tuned": {"p99_ms": args.p99_ms, "concurrency": args.concurrency, "protocol": args.protocol,
                                "candidate": asdict(best), "report": str(out / REPORT_MD)}})
        arch = manifest.get("arch", "?")
        source_text = (", ".join(map(str, args.repo)) if args.repo else
                       f"built here from --arch {args.arch} ({', '.join(args.torch_runtimes)})")
    levels = len(concurrency_range(args.concurrency))

    def point(candidate: Optional[Candidate]) -> Optional[dict]:
        row = search.result(candidate).best(args.p99_ms) if candidate else None
        return {**row, "label": candidate.label} if row else None

    def entry(candidate: Candidate) -> dict:
        median = search.result(candidate)
        return {"label": candidate.label, "stage": search.results[candidate][0].stage, "candidate": asdict(candidate),
                "rows": median.rows, "best": median.best(args.p99_ms), "error": median.error,
                "scores": search.scores(candidate), "score": search.score(candidate)}

    grid = set(space.grid()) | set(space.defaults())
    info = {"date": date, "hardware": host, "kind": kind, "protocol": args.protocol,
            "shared_memory": args.shared_memory, "concurrency": args.concurrency, "perf_args": settings.args(),
            "p99_ms": args.p99_ms, "source": source_text, "arch": arch, "repository": str(winner_dir),
            "measured": len(search.results), "runs": search.runs, "search_runs": search_runs,
            "max_runs": args.max_runs,
            "points": sum(len(runs[0].rows) or levels for runs in search.results.values()),
            "repeats": sum(len(runs) - 1 for runs in search.results.values()), "confirmed": confirmed,
            "spread": every_score(search, best, default, confirmed),
            "grid": len(grid), "grid_points": len(grid) * levels,
            "minutes": (time.monotonic() - started) / 60, "out_of_time": out_of_time,
            "winner": point(best), "default": point(default),
            "candidates": [entry(c) for c in search.results]}
    (out / RESULT_JSON).write_text(json.dumps(info, indent=2) + "\n")
    points = [{**row, "runtime": c.runtime, "label": c.label} for c, runs in search.results.items() for r in runs
              for row in r.rows]
    if points:
        plot(points, args.p99_ms, info["winner"], info["default"],
             f"MobileNetV3 {arch}, {kind} - {hardware_line(host, load=False)}", out / PARETO_PNG)
    text = render_report(info)
    (out / REPORT_MD).write_text(text)
    print(text)
    print(f"wrote {out / REPORT_MD}" + (f" and the winner repository {winner_dir}" if best else ""), file=sys.stderr)
    return 0 if best else 1
