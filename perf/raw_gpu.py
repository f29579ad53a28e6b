#!/usr/bin/env python3
"""Raw in-process GPU throughput of a repository's TorchScript model: the ceiling of the served path.

  python perf/raw_gpu.py --repo /tmp/repo_gpu --batch-sizes 1-8,16,32,64 --out perf/results/run

Runs the same TorchRunner as the served python-backend model (mnv3kit/backend/model.py) in this process, for each
variant (precision x memory format, CUDA graph per batch size), two ways:
  replay    CUDA graph replay only, input already on the GPU (the model's own speed)
  end2end   what one served execute() does: host batch -> pinned staging -> GPU -> graph -> logits back to host
Writes raw_gpu.md and raw_gpu.json; the JSON has bench_engine.py's row shape (model, batch, throughput, device), so
`perf/run_perf.sh --compare raw_gpu.json` adds the served / raw ratio to every served row.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mnv3kit.backend.model import TorchRunner  # noqa: E402
from mnv3kit.errors import KitError, cli_errors  # noqa: E402
from mnv3kit.perf import hardware, hardware_line, markdown_table, now, parse_batch_sizes  # noqa: E402
from mnv3kit.spec import MEAN, PT, STD, U8  # noqa: E402

VARIANTS = {  # name -> (precision, channels_last)
    "fp16-cl": ("fp16", True),
    "fp32-cl": ("fp32", True),
    "fp16": ("fp16", False),
}


def timed(fn, iters: int, torch) -> float:
    """Mean seconds per call, synchronized."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def paced(fn, calls: int, torch, gap_s: float = 0.002) -> float:
    """Median seconds of single calls 2 ms apart: a GPU left idle between requests (concurrency 1) may clock
    down, which back-to-back loops never show."""
    times = []
    for _ in range(calls):
        time.sleep(gap_s)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(artifact: Path, batches, variant: str, uint8: bool, iters: int, torch) -> list:
    precision, channels_last = VARIANTS[variant]
    runner = TorchRunner(str(artifact), "cuda:0", precision, channels_last, batches, MEAN, STD, uint8_input=uint8)
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        graph = runner.graphs[b][0]
        host = (rng.integers(0, 256, (b, 3, 224, 224), dtype=np.uint8) if uint8
                else rng.standard_normal((b, 3, 224, 224), dtype=np.float32))
        replay = timed(graph.replay, iters, torch)
        end2end = timed(lambda: runner(host), iters, torch)
        rows.append({"model": U8.name if uint8 else PT.name, "variant": variant, "batch": b,
                     "replay_ms": replay * 1e3, "replay_img_s": b / replay,
                     "end2end_ms": end2end * 1e3, "throughput": b / end2end,
                     "paced_ms": paced(lambda: runner(host), min(iters, 50), torch) * 1e3,
                     "device": f"raw {variant}{' u8' if uint8 else ''}"})
    del runner
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="repository whose mobilenetv3_pt/1/model.pt is measured")
    p.add_argument("-b", "--batch-sizes", default="1-8,16,32,64", help="default 1-8,16,32,64")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--iters", type=int, default=200, help="timed calls per point (default 200)")
    p.add_argument("-o", "--out", type=Path, required=True, help="writes raw_gpu.md and raw_gpu.json here")
    args = p.parse_args(argv)
    with cli_errors("raw_gpu.py"):
        import torch

        if not torch.cuda.is_available():
            raise KitError("no CUDA device: raw_gpu.py measures the GPU path (perf/bench_engine.py covers CPU)")
        artifact = args.repo / PT.name / "1" / PT.artifact
        if not artifact.is_file():
            raise KitError(f"{artifact} missing: build the repository with build_repo.py --target local")
        batches = parse_batch_sizes(args.batch_sizes)
        variants = [v for v in args.variants.split(",") if v]
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise KitError(f"unknown variant(s) {unknown}: choose from {', '.join(VARIANTS)}")
        rows = []
        for variant in variants:
            rows += measure(artifact, batches, variant, False, args.iters, torch)
        rows += measure(artifact, batches, variants[0], True, args.iters, torch)  # the UINT8 contract
        gpu = torch.cuda.get_device_name(0)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "raw_gpu.json").write_text(json.dumps(
            {"date": now(), "gpu": gpu, "torch": torch.__version__, "rows": rows}, indent=1))
        table = markdown_table(
            ["Model", "Variant", "Batch", "Replay (ms)", "Replay (img/s)", "End-to-end (ms)", "End-to-end (img/s)",
             "Paced single call (ms)"],
            [[r["model"], r["variant"], r["batch"], f"{r['replay_ms']:.3f}", f"{r['replay_img_s']:,.0f}",
              f"{r['end2end_ms']:.3f}", f"{r['throughput']:,.0f}", f"{r['paced_ms']:.3f}"] for r in rows])
        text = (f"# Raw in-process GPU throughput\n\n- Date: {now()}\n- GPU: {gpu}, torch {torch.__version__}\n"
                f"- Host: {hardware_line(hardware(), load=False)}\n- Model: {artifact}\n\n"
                f"Replay: CUDA graph replay with the input already on the GPU. End-to-end: host batch -> pinned -> "
                f"GPU -> graph -> logits on the host, as one served execute() does. Paced: median of single end-to-end calls "
                f"2 ms apart (a client at concurrency 1).\n\n{table}\n")
        (args.out / "raw_gpu.md").write_text(text)
        print(text)
        return 0


if __name__ == "__main__":
    sys.exit(main())
