#!/usr/bin/env python3
"""The tuner run several separate times on one host, each winner served under sustained load with every answer
checked: is its margin over the kit's default reproducible?

  python perf/tune_runs.py --runs 3 -o perf/out/tune-runs -- --repo model_repository_local -m onnx --p99-ms 50 -c 4:16:6

Everything after `--` goes to mnv3-tune (python -m mnv3kit.cli.tune; it needs --repo or --arch); -o and --winner
are set here for each run. A run is the search (its report.md, tune.json, pareto.png and log in OUT/runN/), then its
winner repository served by the embedded Triton on free ports (mnv3-perf soak) at each of --soak-levels for
--soak-seconds, every answer compared with in-process logits (OUT/runN/soak/). OUT/REPORT.md has one row per run:
the winner, the kit's default, winner / default as the search measured them and as the confirmation's medians (the
tuner's --confirm rounds, winner and default measured again alternately), and the soak's answers, wrong and failed.
Exit status: 0 every run found a winner within the budget and its soak answered every request right; 1 otherwise;
2 bad input (one line).
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mnv3kit.errors import KitError, cli_errors
from mnv3kit.report import hardware, hardware_line, markdown_table, now


def run_logged(cmd: list, log: Path) -> int:
    """Run cmd, its output shown here and written to log line by line (kept if this is stopped); its exit status."""
    with open(log, "w", buffering=1) as out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            out.write(line)
    return proc.returncode


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def summarize(run: int, out: Path) -> dict:
    """One run's row from its tune.json and soak.json (absent when that step did not finish)."""
    row = {"run": run, "winner": None}
    tune = out / "tune.json"
    if tune.is_file():
        info = json.loads(tune.read_text())
        winner, default, confirmed = info["winner"], info["default"], info["confirmed"] or {}
        row.update(winner=winner and winner["label"], default=default and default["label"],
                   search=[winner and winner["throughput"], default and default["throughput"]],
                   confirmed=[statistics.median(confirmed[k]) if confirmed.get(k) else None
                              for k in ("winner", "default")],
                   runs=info["runs"], minutes=info["minutes"])
    soak = out / "soak" / "soak.json"
    if soak.is_file():
        rows = json.loads(soak.read_text())["rows"]
        row["soak"] = {key: sum(r[key] for r in rows) for key in ("ok", "wrong", "failed")}
    return row


def report(rows: list, tune_args: list, args, host: dict) -> str:
    table = []
    for r in rows:
        search, confirmed, soak = r.get("search", [0, 0]), r.get("confirmed", [None, None]), r.get("soak")
        table.append([r["run"], f"`{r['winner']}`" if r["winner"] else "none within the budget",
                      f"`{r['default']}`" if r.get("default") else "-",
                      f"{search[0] or 0:.1f} / {search[1] or 0:.1f} = {ratio(search[0] or 0, search[1] or 0)}",
                      f"{confirmed[0]:.1f} / {confirmed[1]:.1f} = {ratio(confirmed[0], confirmed[1])}"
                      if None not in confirmed else "the default won: none" if r["winner"] == r.get("default") else "-",
                      f"{soak['ok']} / {soak['wrong']} / {soak['failed']}" if soak else "not run",
                      f"{r.get('runs', '-')} / {r.get('minutes', 0):.1f}"])
    return "\n".join([
        "# The tuner, run again and again", "",
        f"{now()}; {hardware_line(host)}; {len(rows)} separate runs of `python -m mnv3kit.cli.tune "
        f"{' '.join(tune_args)}`, each winner soaked at concurrency {args.soak_levels}, {args.soak_seconds:g} s each "
        "(every answer checked against in-process logits).", "",
        markdown_table(["run", "winner", "kit default", "infer/s within the budget, search: winner / default",
                        "confirmed (medians): winner / default", "soak answers: ok / wrong / failed",
                        "perf_analyzer runs / minutes"], table), "",
        "Each run's report, every candidate and the Pareto plot: `runN/report.md`; the soak: `runN/soak/soak.md`.", ""])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, tune_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="perf/tune_runs.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="separate runs of the tuner (default 3)")
    p.add_argument("--soak-levels", default="4,16", metavar="LIST",
                   help="concurrency levels of each winner's soak (default 4,16)")
    p.add_argument("--soak-seconds", type=float, default=5.0, help="seconds per soak level (default 5)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory (a new one)")
    args = p.parse_args(ours)
    with cli_errors(p.prog):
        if args.runs < 1 or args.soak_seconds <= 0:
            raise KitError("--runs must be >= 1 and --soak-seconds > 0")
        if not {"--repo", "--arch"} & set(tune_args):
            raise KitError("give mnv3-tune's flags after --, with --repo REPO or --arch large|small "
                           "(python -m mnv3kit.cli.tune --help)")
        if {"-o", "--output", "--winner"} & set(tune_args):
            raise KitError("-o and --winner are set per run here: leave them out of the flags after --")
        if args.output.exists() and any(args.output.iterdir()):
            raise KitError(f"{args.output} is not empty: give a new -o folder")
    args.output.mkdir(parents=True, exist_ok=True)
    host, rows, failed = hardware(), [], False
    with tempfile.TemporaryDirectory(prefix="mnv3kit-tune-runs-") as work:
        for run in range(1, args.runs + 1):
            out, winner = args.output / f"run{run}", Path(work) / f"winner{run}"
            out.mkdir()
            print(f"== run {run} of {args.runs}: the search", flush=True)
            status = run_logged([sys.executable, "-m", "mnv3kit.cli.tune", *tune_args, "-o", str(out),
                                 "--winner", str(winner)], out / "tune.log")
            if status == 2:  # bad flags: the tuner said which, in one line, said again here as this script's
                said = [line for line in (out / "tune.log").read_text().splitlines() if ": error: " in line]
                with cli_errors(p.prog):
                    raise KitError(said[-1].split(": error: ", 1)[1] if said else "mnv3-tune refused its flags")
            for bulky in ("csv", "logs", "candidates"):  # each candidate's perf_analyzer files: in the log already
                shutil.rmtree(out / bulky, ignore_errors=True)
            if (winner / "manifest.json").is_file():
                print(f"== run {run} of {args.runs}: its winner under load, every answer checked", flush=True)
                status = run_logged([sys.executable, "-m", "mnv3kit.cli.perf", "soak", "--repo", str(winner),
                                     "-c", args.soak_levels, "--seconds", f"{args.soak_seconds:g}",
                                     "-o", str(out / "soak")], out / "soak.log")
            failed |= status != 0
            rows.append(summarize(run, out))
    text = report(rows, tune_args, args, host)
    (args.output / "REPORT.md").write_text(text)
    (args.output / "runs.json").write_text(json.dumps(rows, indent=1))
    print(text)
    print(f"wrote {args.output / 'REPORT.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
