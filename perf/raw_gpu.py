#!/usr/bin/env python3
"""Raw in-process GPU throughput: torchvision's model (the anchor), the kit's TorchScript and compiled artifacts.

  python perf/raw_gpu.py --repo /tmp/repo_gpu -b 1,8,64 -o perf/results/run

Every variant runs in mnv3kit/backend/classifier_model.py's TorchRunner (the served code) with the served configuration of the
repository's mobilenetv3_pt (precision, channels_last; one CUDA graph per batch size), on the same weights:
  torchvision-eager  torchvision.models.mobilenet_v3_<arch>, eager PyTorch captured as CUDA graphs (the anchor)
  kit-torchscript    the kit's model traced to TorchScript, frozen (--runtime torchscript)
  kit-compiled       the repository's model.pt2 compiled by TorchInductor (--runtime compiled), FP32 and UINT8 input
Timed per batch size: replay (the CUDA graph alone, input already on the GPU), end-to-end from a host array (what
one served execute() does with a host input: pinned staging, copy, replay, logits back), from a GPU tensor (CUDA
shared memory), and paced single calls. Writes raw_gpu.md and raw_gpu.json; the JSON's rows have bench_engine.py's
shape (model, batch, throughput, device) for the served models' own variant, so `run_perf.sh --compare
raw_gpu.json` adds the served / raw ratio to every served row.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


from mnv3kit.backend.classifier_model import TorchRunner
from mnv3kit.bench import measure, measure_loop
from mnv3kit.cli import add_output
from mnv3kit.errors import KitError, cli_errors
from mnv3kit.perf import parse_batch_sizes
from mnv3kit.report import hardware, hardware_line, markdown_table, now
from mnv3kit.repository import read_manifest
from mnv3kit.spec import COMPILED_ARTIFACT, MEAN, PT, STD, U8
from mnv3kit.validate import parse_config


def served_options(repo: Path) -> dict:
    config = parse_config(repo / PT.name / "config.pbtxt")
    params = {k: v.string_value for k, v in config.parameters.items()}
    if params.get("artifact") != COMPILED_ARTIFACT:
        raise KitError(f"{repo}: build it with --runtime compiled --instance-kind KIND_GPU (its {PT.name} runs "
                       f"{params.get('artifact', 'natively')})")
    return {"precision": params["precision"], "channels_last": params["channels_last"] == "true",
            "cache": params["compile_cache"]}


def variants(repo: Path, arch: str, opts: dict, torch):
    """name -> (what to build a TorchRunner from, uint8 input), all on the repository's weights."""
    import torchvision

    from mnv3kit.export import export_torchscript
    from mnv3kit.model import MobileNetV3

    program = repo / PT.name / "1" / COMPILED_ARTIFACT
    state = torch.export.load(str(program)).module().state_dict()
    classes = state["classifier.3.weight"].shape[0]
    anchor = getattr(torchvision.models, f"mobilenet_v3_{arch}")(num_classes=classes)
    anchor.load_state_dict(state)
    kit = MobileNetV3(arch, classes)
    kit.load_state_dict(state)
    scripted = Path(tempfile.mkdtemp(prefix="mnv3kit-raw-")) / "model.pt"
    export_torchscript(kit.eval(), scripted)
    return {"torchvision-eager": (anchor, False), "kit-torchscript": (str(scripted), False),
            "kit-compiled": (str(program), False), "kit-compiled-u8": (str(program), True)}


def measure_variant(name: str, source, uint8: bool, batches, opts: dict, iters: int, torch) -> list:
    started = time.perf_counter()
    runner = TorchRunner(source, "cuda:0", opts["precision"], opts["channels_last"], batches, MEAN, STD,
                         uint8_input=uint8, compile_cache=opts["cache"])
    init_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        graph = runner.graphs[b][0]
        host = (rng.integers(0, 256, (b, 3, 224, 224), dtype=np.uint8) if uint8
                else rng.standard_normal((b, 3, 224, 224), dtype=np.float32))
        on_gpu = torch.from_numpy(host).cuda()
        sync = torch.cuda.synchronize
        replay = measure_loop(graph.replay, 3, iters, sync) / 1e3
        end2end = measure_loop(lambda: runner(host), 3, iters, sync) / 1e3
        from_gpu = measure_loop(lambda: runner(on_gpu), 3, iters, sync) / 1e3
        served = name.startswith("kit-compiled")
        rows.append({"model": (U8.name if uint8 else PT.name) if served else name, "variant": name, "batch": b,
                     "init_s": init_s, "replay_ms": replay * 1e3, "replay_img_s": b / replay,
                     "end2end_ms": end2end * 1e3, "throughput": b / end2end,
                     "gpu_input_ms": from_gpu * 1e3, "gpu_input_img_s": b / from_gpu,
                     "paced_ms": float(np.median(measure(lambda: runner(host), 0, min(iters, 50), sync=sync,
                                                         gap_s=0.002))),
                     "device": f"raw {name}"})
    runner = None  # its CUDA graphs and buffers go before the next variant is captured
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True,
                   help="repository built with --runtime compiled --instance-kind KIND_GPU (its model.pt2 and config)")
    p.add_argument("-b", "--batch-sizes", default="1,8,64", help="default 1,8,64")
    p.add_argument("--iters", type=int, default=200, help="timed calls per point (default 200)")
    add_output(p, required=True, help="writes raw_gpu.md and raw_gpu.json here")
    args = p.parse_args(argv)
    with cli_errors():
        import torch

        if not torch.cuda.is_available():
            raise KitError("no CUDA device: raw_gpu.py measures the GPU path (perf/bench_engine.py covers CPU)")
        manifest = read_manifest(args.repo)
        opts = served_options(args.repo)
        batches = parse_batch_sizes(args.batch_sizes)
        rows = []
        for name, (source, uint8) in variants(args.repo, manifest["arch"], opts, torch).items():
            print(f"raw_gpu.py: {name}", file=sys.stderr, flush=True)
            rows += measure_variant(name, source, uint8, batches, opts, args.iters, torch)
        gpu = torch.cuda.get_device_name(0)
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "raw_gpu.json").write_text(json.dumps(
            {"date": now(), "gpu": gpu, "torch": torch.__version__, "options": opts, "rows": rows}, indent=1))
        table = markdown_table(
            ["Variant", "Batch", "Start (s)", "Replay (ms)", "Replay (img/s)", "Host in (ms)", "Host in (img/s)",
             "GPU in (ms)", "GPU in (img/s)", "Paced (ms)"],
            [[r["variant"], r["batch"], f"{r['init_s']:.1f}", f"{r['replay_ms']:.3f}", f"{r['replay_img_s']:,.0f}",
              f"{r['end2end_ms']:.3f}", f"{r['throughput']:,.0f}", f"{r['gpu_input_ms']:.3f}",
              f"{r['gpu_input_img_s']:,.0f}", f"{r['paced_ms']:.3f}"] for r in rows])
        text = (f"# Raw in-process GPU throughput\n\n- Date: {now()}\n- GPU: {gpu}, torch {torch.__version__}\n"
                f"- Host: {hardware_line(hardware(), load=False)}\n- Repository: {args.repo} ({manifest['arch']}); "
                f"precision {opts['precision']}, channels_last {opts['channels_last']}, one CUDA graph per batch\n\n"
                f"Start: seconds to build the runner (load, compile from the cache at {opts['cache']}, capture). "
                f"Replay: the CUDA graph alone, input on the GPU. Host in: host array -> pinned -> GPU -> graph -> "
                f"logits on the host (one served execute() with a host input). GPU in: the same from a GPU tensor "
                f"(CUDA shared memory). Paced: median of single host-in calls 2 ms apart (a client at concurrency "
                f"1).\n\n{table}\n")
        (args.output / "raw_gpu.md").write_text(text)
        print(text)
        return 0


if __name__ == "__main__":
    sys.exit(main())
