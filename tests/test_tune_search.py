"""The tuner's search rules with a fake measurer (scores as a function of the candidate, optionally with seeded noise
or scripted runs; a clock that advances one unit per measurement). No server: these run in milliseconds."""

import math
import random
from dataclasses import replace

import pytest

from mnv3kit.tune import (GRAPH_CHOICES, MARKERS, MIN_GAIN, NOISE, PREFERRED_CHOICES, PRUNE_RUNTIME, REPEATS,
                          RUNTIMES, TORCH_KEYS, UNSTABLE, Candidate, Result, Search, Space, default_candidate,
                          graph_sizes, preferred_for)

BUDGET_MS = 100.0
CLIENTS = 8  # max batch 16 is over it: never measured


class FakeMeasurer:
    """Scores ``surface(candidate)`` (0: over the budget) times a seeded noise factor in 1 +- ``noise``; a candidate's
    ``script`` scores come first, one per run."""

    def __init__(self, surface, noise=0.0, seed=0, script=None):
        self.surface, self.noise, self.rng = surface, noise, random.Random(seed)
        self.script = {c: list(scores) for c, scores in (script or {}).items()}
        self.calls = []  # (candidate, stage, tag) of every measurement
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def measure(self, candidate, stage, tag=""):
        self.calls.append((candidate, stage, tag))
        self.now += 1
        scripted = self.script.get(candidate)
        score = (scripted.pop(0) if scripted else
                 self.surface(candidate) * (1 + self.rng.uniform(-self.noise, self.noise)))
        if score is None:  # perf_analyzer's windows never agreed
            return Result(candidate, stage, [], f"{UNSTABLE}.")
        p99 = BUDGET_MS / 2 if score > 0 else BUDGET_MS * 2
        return Result(candidate, stage, [{"concurrency": CLIENTS, "throughput": score, "p99_ms": p99}])


def searcher(measurer, space, deadline=math.inf):
    return Search(measurer, space, CLIENTS, BUDGET_MS, deadline, clock=measurer.clock)


def choice(c: Candidate) -> str:
    return next(p for p in PREFERRED_CHOICES if preferred_for(p, c.max_batch) == c.preferred)


# a separable surface: the product of one factor per dimension
RUNTIME = {"pt": 0.9, "onnx": 1.0}
INSTANCES = {1: 1.0, 2: 1.5, 3: 1.8, 4: 1.6}
MAX_BATCH = {1: 0.6, 2: 0.8, 4: 1.2, 8: 1.0, 16: 2.0}
DELAY_US = {0: 0.9, 100: 1.0, 1000: 1.2, 5000: 0.7}
PREFERRED = {"none": 1.0, "max": 1.3, "both": 1.1}
FULL = Space(["pt", "onnx"], [1, 2, 3, 4], [1, 2, 4, 8, 16], list(PREFERRED_CHOICES), [0, 100, 1000, 5000])


def separable(c: Candidate) -> float:
    batching = DELAY_US[c.delay_us] * PREFERRED[choice(c)] if c.max_batch > 1 else 1.0
    return 100 * RUNTIME[c.runtime] * INSTANCES[c.instances] * MAX_BATCH[c.max_batch] * batching


def flat(**factors):
    """100, times factors[name][value] for the dimensions named (``preferred`` by choice: none, max, both)."""
    def surface(c: Candidate) -> float:
        values = {**vars(c), "preferred": choice(c)}
        return 100 * math.prod(f.get(values[name], 1.0) for name, f in factors.items())
    return surface


def small(**dims):
    """One runtime's default config, with the dimensions given varied."""
    d = default_candidate("onnx")
    return Space(["onnx"], dims.get("instances", [d.instances]), dims.get("max_batches", [d.max_batch]),
                 dims.get("preferred", ["both"]), dims.get("delays_us", [d.delay_us]))


def optimum(space: Space, surface) -> Candidate:
    reachable = [c for c in space.grid() if c.max_batch <= CLIENTS]
    return max(reachable, key=surface)


def test_finds_the_optimum_of_a_separable_surface_in_fewer_runs_than_the_grid():
    fake = FakeMeasurer(separable)
    search = searcher(fake, FULL)
    winner = search.search()
    assert winner == optimum(FULL, separable) == Candidate("onnx", 3, 4, (4,), 1000)
    assert search.runs == len(fake.calls) < len(FULL.grid()) / 3
    first = [c for c, stage, _ in fake.calls if stage != "repeat"]
    assert len(first) == len(set(first)) == len(search.results)  # a candidate's first run is never repeated as one
    assert all(len(runs) <= 1 + REPEATS for runs in search.results.values())


@pytest.mark.parametrize("seed", range(10))
def test_finds_the_optimum_through_noise(seed):
    fake = FakeMeasurer(separable, noise=0.05, seed=seed)
    search = searcher(fake, FULL)
    assert search.search() == optimum(FULL, separable)
    assert search.runs <= len(FULL.grid())


@pytest.mark.parametrize("ratio, refined", [(PRUNE_RUNTIME - 0.01, False), (PRUNE_RUNTIME + 0.01, True)])
def test_a_runtime_below_prune_runtime_is_not_refined(ratio, refined):
    fake = FakeMeasurer(flat(runtime={"pt": ratio}, instances={2: 1.5}))
    search = searcher(fake, FULL)
    assert search.search().runtime == "onnx"
    pt = [c for c in search.results if c.runtime == "pt"]
    assert pt[0] == default_candidate("pt") and (len(pt) > 1) == refined


def test_max_batch_sizes_over_the_clients_are_never_measured():
    search = searcher(FakeMeasurer(separable), FULL)
    search.search()
    assert max(c.max_batch for c in search.results) == CLIENTS  # 16 would score 2x: never tried


DEFAULT = default_candidate("onnx")
TWO = replace(DEFAULT, instances=2)


@pytest.mark.parametrize("gain, moves", [(MIN_GAIN - 0.01, False), (MIN_GAIN + 0.01, True)])
def test_moves_only_for_a_gain_of_min_gain(gain, moves):
    # more instances cost more; preferred sizes cost the same: either way a move needs MIN_GAIN
    to_max = replace(DEFAULT, preferred=preferred_for("max", DEFAULT.max_batch))
    for surface, space, moved in ((flat(instances={2: gain}), small(instances=[1, 2]), TWO),
                                  (flat(preferred={"max": gain}), small(preferred=["both", "max"]), to_max)):
        assert searcher(FakeMeasurer(surface), space).search() == (moved if moves else DEFAULT)


def test_ties_go_to_the_cheaper_config():
    # among challengers: 2 and 3 instances tie above 1
    search = searcher(FakeMeasurer(flat(instances={2: 1.5, 3: 1.5})), small(instances=[1, 2, 3]))
    assert search.search().instances == 2
    # against the incumbent: max batch 4 ties the default's 8 and wins; 2, cheaper still but lower, does not
    search = searcher(FakeMeasurer(flat(max_batch={2: 0.99})), small(max_batches=[2, 4, 8]))
    assert search.search().max_batch == 4
    # everything ties: the cheapest config
    search = searcher(FakeMeasurer(flat()), FULL)
    assert search.search() == Candidate("pt", 1, 1, (), 0)


def lucky(first: float, then: float):
    """The default scores 100 every run; two instances score ``first`` once, then ``then``."""
    fake = FakeMeasurer(lambda c: then if c.instances == 2 else 100.0, script={TWO: [first]})
    return fake, searcher(fake, small(instances=[1, 2])), TWO


def test_a_lucky_near_tie_is_measured_again_and_loses_on_the_medians():
    fake, search, two = lucky(110, 100)
    assert MIN_GAIN * 100 <= 110 < NOISE * 100
    one = DEFAULT
    assert search.search() == one
    assert [(c.instances, stage, tag) for c, stage, tag in fake.calls] == [
        (1, "default", ""), (2, "refine", ""),
        (1, "repeat", "_repeat1"), (2, "repeat", "_repeat1"), (1, "repeat", "_repeat2"), (2, "repeat", "_repeat2")]
    assert search.scores(two) == [110, 100, 100] and search.scores(one) == [100, 100, 100]
    assert search.runs == 2 + 2 * REPEATS


def test_a_real_near_tie_gain_survives_the_repeats():
    fake, search, two = lucky(110, 110)
    assert search.search() == two
    assert search.scores(two) == [110] * (1 + REPEATS)


def test_a_lead_beyond_the_noise_moves_without_repeats():
    fake, search, two = lucky(NOISE * 100, NOISE * 100)
    assert search.search() == two
    assert search.runs == len(search.results) == 2


def test_through_seeded_noise_repeats_take_back_most_lucky_wins():
    # two instances are truly no better; 10 % noise gives them a lead of MIN_GAIN..NOISE in about a third of the
    # seeds, which one run each would take
    seeds = range(400)
    lucky_first = set()
    for s in seeds:  # the search's first two measurements: the default's, then two instances'
        rng = random.Random(s)
        one, two = (100 * (1 + rng.uniform(-0.1, 0.1)) for _ in range(2))
        if two >= MIN_GAIN * one:
            lucky_first.add(s)
    moved = {s for s in seeds
             if searcher(FakeMeasurer(flat(), noise=0.1, seed=s), small(instances=[1, 2])).search() == TWO}
    assert moved <= lucky_first and len(moved) < 2 / 3 * len(lucky_first), (len(moved), len(lucky_first))


def test_the_deadline_stops_the_search():
    fake = FakeMeasurer(separable)
    search = searcher(fake, FULL, deadline=4.5)
    winner = search.search()
    assert len(fake.calls) == search.runs == 5 and search.out_of_time()  # measured at t = 0 .. 4
    assert winner == search.best(search.results)
    assert searcher(FakeMeasurer(separable), FULL, deadline=-1).search() is None


def test_a_run_that_could_not_stabilise_is_made_once_more():
    """On a busy host perf_analyzer's windows may never agree: the default's first run failing that way does not end
    the search; a second such failure counts."""
    space = Space(["onnx"], [1, 2], [8], ["both"], [100])
    default, two = default_candidate("onnx"), replace(default_candidate("onnx"), instances=2)
    fake = FakeMeasurer(lambda c: 100.0 * c.instances, script={default: [None]})
    search = searcher(fake, space)
    assert search.search() == two and search.scores(default) == [100.0]
    assert [(c, tag) for c, _, tag in fake.calls[:2]] == [(default, ""), (default, "_again")] and search.runs == 3
    fake = FakeMeasurer(lambda c: 100.0 * c.instances, script={default: [None, None]})
    search = searcher(fake, space)
    assert search.search() is None and UNSTABLE in search.results[default][0].error and search.runs == 2


def test_max_runs_stops_the_search_and_the_confirmation_still_runs():
    fake = FakeMeasurer(separable)
    search = Search(fake, FULL, CLIENTS, BUDGET_MS, math.inf, clock=fake.clock, max_runs=7)
    winner = search.search()
    assert len(fake.calls) == search.runs == 7 and search.out_of_time()
    assert winner == search.best(search.results)
    search.confirm(winner, search.best(FULL.defaults()), 2)
    assert search.runs == 11 and [stage for _, stage, _ in fake.calls[7:]] == ["confirm"] * 4


def test_the_deadline_cuts_repeats_short_and_the_medians_still_decide():
    fake, search, two = lucky(110, 100)
    search.deadline = 3.5
    assert search.search() == DEFAULT
    assert len(fake.calls) == 4 and search.scores(two) == [110, 100]  # the lower middle of an even count


def test_nothing_within_the_budget_is_no_winner():
    search = searcher(FakeMeasurer(flat(runtime={"pt": 0, "onnx": 0})), FULL)
    assert search.search() is None and search.runs > 2  # refined from the default closest to the budget


def test_defaults_over_the_budget_are_refined_from_the_closest():
    # no default meets the budget (their p99 differs); CUDA graphs bring the compiled u8 model within it
    def surface(c):
        return 100.0 if c.graphs != "none" else 0.0

    def p99(c):
        return {"pt": 60.0, "u8": 50.0, "onnx": 70.0}[c.runtime] - 5 * c.compiled

    class OverBudget(FakeMeasurer):
        def measure(self, candidate, stage, tag=""):
            result = super().measure(candidate, stage, tag)
            if not result.rows[0]["throughput"]:
                result.rows[0]["p99_ms"] = BUDGET_MS + p99(candidate)
            return result

    search = searcher(OverBudget(surface), GPU)
    winner = search.search()
    assert search.closest(GPU.defaults()) == default_candidate("u8", compiled=True)
    assert winner.runtime == "u8" and winner.compiled and winner.graphs != "none"


def test_confirmation_alternates_and_counts_its_runs():
    fake = FakeMeasurer(flat(instances={2: 1.5}))
    search = searcher(fake, small(instances=[1, 2]))
    winner = search.search()
    before = search.runs
    assert search.confirm(winner, DEFAULT, 2) == {"winner": [150, 150], "default": [100, 100]}
    assert search.runs == before + 4
    assert [(c.instances, tag) for c, _, tag in fake.calls[before:]] == [(1, "_confirm1"), (2, "_confirm1"),
                                                                          (1, "_confirm2"), (2, "_confirm2")]


# the GPU space: the torch models (pt, u8) also compiled and with CUDA graphs; onnx has neither
GPU = Space(["pt", "u8", "onnx"], [1, 2, 4], [1, 8, 16], list(PREFERRED_CHOICES), [0, 100, 1000], [False, True],
            list(GRAPH_CHOICES))
GPU_RUNTIME = {"pt": 0.9, "u8": 1.1, "onnx": 1.0}
COMPILED = {False: 1.0, True: 1.6}
GRAPHS = {"none": 1.0, "preferred": 1.4, "all": 1.3}


def gpu_surface(c: Candidate) -> float:
    batching = DELAY_US[c.delay_us] * PREFERRED[choice(c)] if c.max_batch > 1 else 1.0
    return (100 * GPU_RUNTIME[c.runtime] * COMPILED[c.compiled] * GRAPHS[c.graphs] * INSTANCES[c.instances]
            * MAX_BATCH[c.max_batch] * batching)


def test_every_runtime_has_its_marker_in_the_plot():
    assert len(MARKERS) == len(set(MARKERS)) == len(RUNTIMES)


def test_graph_sizes():
    assert graph_sizes("none", 8, (4, 8)) == ()
    assert graph_sizes("preferred", 8, (4, 8)) == (4, 8) and graph_sizes("preferred", 6, ()) == (6,)
    assert graph_sizes("all", 8, ()) == (1, 2, 4, 8) and graph_sizes("all", 12, (6, 12)) == (1, 2, 4, 8, 12)
    c = replace(default_candidate("pt", compiled=True), graphs="preferred")
    assert c.graph_batches == (4, 8) and c.label == "pt compiled i1 b8 p4,8 d100 g4,8"


def test_the_gpu_space_searches_compiled_and_graphs_for_the_torch_models_only():
    assert GPU.defaults() == [default_candidate("pt"), default_candidate("pt", True), default_candidate("u8"),
                              default_candidate("u8", True), default_candidate("onnx")]
    grid = GPU.grid()
    assert all(c.runtime in TORCH_KEYS or (not c.compiled and c.graphs == "none") for c in grid)
    fake = FakeMeasurer(gpu_surface)
    search = searcher(fake, GPU)
    winner = search.search()
    assert winner == optimum(GPU, gpu_surface) == Candidate("u8", 4, 8, (8,), 1000, True, "preferred")
    assert search.runs < len(grid) / 5
    assert all(c.runtime in TORCH_KEYS or (not c.compiled and c.graphs == "none") for c in search.results)


def test_a_slow_compiled_runtime_is_not_refined():
    fake = FakeMeasurer(lambda c: gpu_surface(c) * (0.5 if c.compiled else 1.0) / COMPILED[c.compiled])
    search = searcher(fake, GPU)
    assert not search.search().compiled
    assert [c for c in search.results if c.compiled] == [default_candidate("pt", True), default_candidate("u8", True)]
