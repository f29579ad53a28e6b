#!/usr/bin/env python3
"""TorchScript on a GPU under the batch sizes a dynamic batcher forms: what each new size costs the first time, and
the steady speed, with cuDNN's autotuner (torch.backends.cudnn.benchmark) off (the kit's runner without CUDA graphs)
and on, with cuDNN off, in channels-last memory format, with TorchScript's profiling executor off (the legacy executor:
no re-specialization per input shape), with the graph executor's optimizations off, and as the kit serves it
(buckets: calls padded to powers of two up to 64, each run once at load).

  python perf/torchscript_gpu_shapes.py --arch large --precision fp16 -o perf/out/ts-shapes

Each variant runs in its own process (the switch is process-wide) with the kit's runner (TorchRunner: frozen,
on cuda:0): a sequence of batch sizes as a batcher forms them, each call timed (synchronized), then img/s at batch
1, 8 and 64, every answer compared with eager FP32. Writes OUT/result.json and prints a table.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = [1, 3, 8, 5, 2, 7, 4, 6, 16, 32, 64, 33, 17, 12, 48, 1, 8, 64]  # new sizes first, then seen ones
VARIANTS = ("cudnn-benchmark", "no-cudnn-benchmark", "cudnn-off", "channels-last", "profiling-executor-off",
            "executor-optimize-off", "buckets")


def child(variant: str, arch: str, precision: str, pt: Path) -> dict:
    import torch

    from mnv3kit.backend.classifier_model import TorchRunner
    from mnv3kit.model import build_model

    torch.backends.cudnn.enabled = variant != "cudnn-off"
    if variant == "profiling-executor-off":
        torch._C._jit_set_profiling_executor(False)
        torch._C._jit_set_profiling_mode(False)
    torch._C._set_graph_executor_optimize(variant != "executor-optimize-off")
    start = time.perf_counter()
    run = TorchRunner(str(pt), "cuda:0", precision, channels_last=variant == "channels-last",
                      max_batch=max(SIZES) if variant == "buckets" else 0)
    load_s = time.perf_counter() - start
    torch.backends.cudnn.benchmark = variant == "cudnn-benchmark"  # the runner sets it only with CUDA graphs
    eager = build_model(arch, 5, seed=0).eval()
    rng = torch.Generator().manual_seed(0)
    first, worst = [], 0.0
    for size in SIZES:
        x = torch.randn((size, 3, 224, 224), generator=rng).numpy()
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = run(x)
        first.append({"batch": size, "ms": round((time.perf_counter() - start) * 1000, 2)})
        with torch.no_grad():
            ref = eager(torch.from_numpy(x)).numpy()
        worst = max(worst, float(abs(out - ref).max() / max(1.0, abs(ref).max())))
    steady = {}
    for size in (1, 8, 64):
        x = torch.randn((size, 3, 224, 224), generator=rng).numpy()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 2.0:
            run(x)
            n += 1
        steady[size] = round(n * size / (time.perf_counter() - start), 1)
    return {"variant": variant, "load_s": round(load_s, 2), "calls": first, "steady_img_s": steady, "max_rel_diff": worst,
            "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="large", choices=("large", "small"))
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16"))
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)} (default all)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--pt", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad:
        p.error(f"--variants {','.join(bad)}: choose from {', '.join(VARIANTS)}")
    if args.child:
        print(json.dumps(child(args.child, args.arch, args.precision, args.pt)))
        return 0
    from mnv3kit.export import export_torchscript
    from mnv3kit.model import build_model

    args.output.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        pt = Path(tmp) / "model.pt"
        export_torchscript(build_model(args.arch, 5, seed=0).eval(), pt)
        for variant in args.variants.split(","):
            proc = subprocess.run([sys.executable, __file__, "--child", variant, "--arch", args.arch, "--precision",
                                   args.precision, "--pt", str(pt), "-o", str(args.output)],
                                  capture_output=True, text=True)
            if proc.returncode:  # a variant the torch build refuses: its error, and the others still run
                lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
                print(f"{variant}: failed: {lines[-1]}", file=sys.stderr)
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if not results:
        return 1
    (args.output / "result.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"{results[0]['gpu']}, torch {results[0]['torch']}, {args.arch} {args.precision}")
    print("batch sequence: " + " ".join(map(str, SIZES)))
    for r in results:
        print(f"{r['variant']:18s} per call ms: " + " ".join(f"{c['ms']:.0f}" for c in r["calls"]))
        print(f"{'':18s} load {r['load_s']} s, calls total {sum(c['ms'] for c in r['calls']):.0f} ms; steady img/s b1/b8/b64: "
              f"{r['steady_img_s']}; max |diff| / max|logit| vs eager FP32 {r['max_rel_diff']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
