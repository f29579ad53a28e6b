"""mnv3-tune: the serving configuration with the most throughput while p99 stays under a budget (mnv3kit.tune)."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import List, Sequence

from mnv3kit.cli import add_output, add_ports, concurrency_text, model_names, ports_of, positive
from mnv3kit.errors import cli_errors, prog_name
from mnv3kit.model import ARCHS
from mnv3kit.spec import MANIFEST_FILE, ONNX, OV, PROTOCOLS, PT
from mnv3kit.spec import RUNTIMES as TORCH_RUNTIMES
from mnv3kit.tune import GRAPH_CHOICES, PREFERRED_CHOICES, RUNTIMES, TORCH_KEYS, WINNER_DIR, tune
from mnv3kit.tune import __doc__ as TUNE_DOC


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
    p = argparse.ArgumentParser(prog=prog_name("mnv3kit.cli.tune"), description=TUNE_DOC.split("\n\n")[0],
                                epilog="Exit status: 0 a winner written; 1 no candidate met the budget; 2 bad input.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--repo", type=Path, action="append", metavar="DIR",
                     help="a repository built with build_repo.py --target local; twice (one built with --runtime "
                          "compiled, one with torchscript) to search both torch runtimes")
    src.add_argument("--arch", choices=ARCHS, help="build one first (--target local, the models asked for), one per "
                                                   "torch runtime asked for")
    p.add_argument("--weights", type=Path, help="with --arch: the weights to build with (default: seeded random)")
    p.add_argument("--p99-ms", type=float, required=True, metavar="MS", help="latency budget: p99 of a request")
    p.add_argument("-c", "--concurrency", type=concurrency_text, default="1:8:1", metavar="RANGE",
                   help="the client load to plan for: outstanding requests START[:END[:STEP]] (default 1:8:1)")
    p.add_argument("-i", "--protocol", choices=PROTOCOLS, default="http", help="default http")
    p.add_argument("--shared-memory", choices=("none", "system"), default="none",
                   help="how perf_analyzer passes tensors (default none)")
    p.add_argument("-m", "--models", type=model_names, default=None, metavar="LIST",
                   help="models to try: pt (TorchScript or compiled), u8 (the same on UINT8 pixels), onnx (ONNX "
                        "Runtime), ov, ov_u8 (OpenVINO) (default pt,onnx, and ov where OpenVINO is installed; with "
                        "--repo, the tuner's models the repositories hold)")
    p.add_argument("--torch-runtimes", type=choice_list(TORCH_RUNTIMES), default=None, metavar="LIST",
                   help="with --arch: how the torch models run, torchscript and/or compiled (TorchInductor, GPU only) "
                        "(default torchscript; with --repo: the repositories' own)")
    p.add_argument("--cuda-graphs", type=choice_list(GRAPH_CHOICES), default=["none"], metavar="LIST",
                   help="GPU: CUDA graphs the torch models capture, to try: none (calls padded to powers of two, "
                        "each run once at load), preferred (the preferred sizes and max batch), all (every power of "
                        "two up to max batch) (default none)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="GPU: the torch models' precision (fp16: computed in half, checked at load) (default fp32)")
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
    p.add_argument("--max-runs", type=positive, default=0, metavar="N",
                   help="stop measuring new candidates after N perf_analyzer runs of the search, first runs and "
                        "repeats (default: no limit; the confirmation's runs come after)")
    add_output(p, help="report directory (default perf/out/tune-YYYYmmdd-HHMMSS); the winner repository goes to "
                       f"DIR/{WINNER_DIR} unless --winner")
    p.add_argument("--winner", type=Path, metavar="DIR", help="where the winner repository is written")
    add_ports(p, free=True)
    args = p.parse_args(argv)
    if args.weights and not args.arch:
        p.error("--weights goes with --arch (a --repo is already built)")
    runtimes = {spec.name: key for key, spec in RUNTIMES.items()}
    if args.repo and all((r / MANIFEST_FILE).is_file() for r in args.repo):  # else: refused by tune(), with why
        manifests = [json.loads((r / MANIFEST_FILE).read_text()) for r in args.repo]
        held_by = [set(m.get("models", [])) for m in manifests]
        if args.torch_runtimes is not None:
            p.error("--torch-runtimes goes with --arch: a --repo's runtime is the one it was built with")
        args.torch_runtimes = [m.get("runtime", "torchscript") for m in manifests]
        if len(args.repo) > 2 or len(set(args.torch_runtimes)) < len(args.repo):
            p.error("--repo: one repository, or two built with different --runtime (torchscript and compiled)")
        if args.models is None:  # torch models: in every repository (one per runtime); the others: in any
            args.models = [name for name in runtimes if any(name in h for h in held_by)
                           and (runtimes[name] not in TORCH_KEYS or all(name in h for h in held_by))]
            if not args.models:
                p.error(f"--repo {', '.join(map(str, args.repo))}: none of the models the tuner serves "
                        f"({', '.join(runtimes)}) is there")
    args.torch_runtimes = args.torch_runtimes or ["torchscript"]
    if args.models is None:
        args.models = [PT.name, ONNX.name] + ([OV.name] if importlib.util.find_spec("openvino") else [])
    bad = [m for m in args.models if m not in runtimes]
    if bad:
        p.error(f"--models {','.join(bad)}: the tuner tries {', '.join(RUNTIMES)}")
    args.runtimes = [runtimes[m] for m in args.models]
    if args.p99_ms <= 0 or args.budget_min <= 0 or args.confirm < 0:
        p.error("--p99-ms and --budget-min must be > 0, --confirm >= 0")
    if 0 in args.max_batch_sizes:
        p.error("--max-batch-sizes must be >= 1")
    if args.instances and 0 in args.instances:
        p.error("--instances must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors(prog_name("mnv3kit.cli.tune")):
        return tune(args, ports_of(args))


if __name__ == "__main__":
    sys.exit(main())
