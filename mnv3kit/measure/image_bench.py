"""Encoded image -> logits: the served image ensemble (perf_analyzer) vs the same work in-process.

In-process runs the served code itself: the preprocessing model's Preprocessor (Pillow threads, or nvJPEG on a GPU)
and the classifier's backend model initialized from its config.pbtxt as Triton would, one batch of files at a time.
Served is `mnv3-perf run` on `mobilenetv3_image` with the same files, one file per request (the contract), so
the dynamic batchers form the batches: concurrency = the in-process batch.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from tritonclient.grpc import model_config_pb2

from ..bench import initialize_args, measure
from ..errors import KitError
from ..report import hardware, hardware_line, markdown_table, now
from ..ensemble import image_classifier
from ..spec import ADMIN_KEY_ENV, ENSEMBLE, ENSEMBLE_PLATFORM, PREPROCESS
from ..validate import parse_config

FP32_TENSOR_BYTES = 3 * 224 * 224 * 4


def make_jpegs(sources: Sequence[Path], folder: Path, size=(500, 375), quality: int = 90, count: int = 8) -> List[Path]:
    """``count`` JPEGs of ``size`` cut from real photographs (views: whole, mirrored, four corners)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    views = []
    for src in sources:
        img = Image.open(src).convert("RGB")
        w, h = img.size
        views += [img, img.transpose(Image.FLIP_LEFT_RIGHT)] + [
            img.crop(box) for box in ((0, 0, w * 3 // 4, h * 3 // 4), (w // 4, h // 4, w, h))]
    paths = []
    for i, view in enumerate((views * count)[:count]):
        path = folder / f"photo{i}_{size[0]}x{size[1]}.jpg"
        view.resize(size, Image.BILINEAR).save(path, quality=quality)
        paths.append(path)
    return paths


def load_pipeline(repo: Path, device: str):
    """(preprocess, classify) as the repository serves them: the backend classes, configured by their configs."""
    from ..backend.classifier_model import TritonPythonModel
    from ..backend.preprocess_model import Preprocessor, decode_device

    image = parse_config(repo / ENSEMBLE / "config.pbtxt")
    name = image_classifier(image)
    config = parse_config(repo / name / "config.pbtxt")
    if config.backend != "python":
        raise KitError(f"{name} is a {config.platform or config.backend} model: in-process comparison needs a "
                       f"--target local repository")
    pre = parse_config(repo / PREPROCESS / "config.pbtxt") if image.platform == ENSEMBLE_PLATFORM else image
    params = {key: value.string_value for key, value in pre.parameters.items()}
    threads = int(params.get("decode_threads") or 0)
    model = TritonPythonModel()
    version = max(int(p.name) for p in (repo / name).iterdir() if p.is_dir() and p.name.isdigit())
    model.initialize(initialize_args(config, repo / name, version, device))
    pixels = config.input[0].data_type == model_config_pb2.TYPE_UINT8  # a classifier that normalizes itself
    preprocess = Preprocessor(pixels, threads, decode_device(params, device), log=lambda message: None)
    return preprocess, model.forward, name


def in_process(repo: Path, files: Sequence[Path], batch: int, device: str, seconds: float) -> dict:
    preprocess, classify, classifier = load_pipeline(repo, device)
    blobs = [f.read_bytes() for f in files]

    def call(n: int, classifier: bool = True):
        start = call.i
        call.i += n
        datas = [blobs[(start + k) % len(blobs)] for k in range(n)]
        items = preprocess(datas)
        bad = [str(x) for x in items if isinstance(x, Exception)]
        if bad:
            raise KitError(f"in-process preprocessing failed: {bad[0]}")
        batch = preprocess.batches([items])[0]  # computed: the GPU stream is synchronized
        return classify(batch) if classifier else batch

    call.i = 0
    result = {"classifier": classifier, "device": device, "decode_threads": preprocess.threads,
              "decoder": preprocess.gpu.name if preprocess.gpu else "Pillow"}
    for key, n, whole in (("batch", batch, True), ("batch1", 1, True), ("decode", batch, False)):
        times = measure(lambda: call(n, whole), warmup=5, iters=10, seconds=seconds)
        result[key] = {"size": n, "img_per_s": n * 1e3 / float(np.mean(times)), "p50_ms": float(np.median(times))}
    preprocess.close()
    return result


def served(url: str, protocol: str, files: Sequence[Path], concurrency: int, out: Path,
           extra: Sequence[str] = (), admin_key: Optional[str] = None) -> dict:
    """mnv3-perf run on the ensemble with the files: one file per request at ``concurrency``, and at 1."""
    result = {}
    for key, c in (("batch", concurrency), ("batch1", 1)):
        folder = out / f"served_c{c}"
        cmd = [sys.executable, "-m", "mnv3kit.cli.perf", "run", "-u", url, "-i", protocol, "-m", ENSEMBLE, "-b", "1",
               "-c", str(c), "--images", str(files[0].parent), "-o", str(folder), *extra]
        env = {**os.environ, **({ADMIN_KEY_ENV: admin_key} if admin_key else {})}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)  # the key: statistics are an admin API
        csv_path = folder / "results.csv"
        result[key] = {"concurrency": c, "report": str(folder / "report.md")}
        if proc.returncode != 0 or not csv_path.is_file():  # e.g. no stable measurement: kept as a failed point
            lines = [line for line in (folder / "report.md").read_text().splitlines() if line.startswith("- `")] \
                if (folder / "report.md").is_file() else (proc.stderr or proc.stdout).strip().splitlines()
            result[key]["failed"] = lines[-1] if lines else f"mnv3-perf exit {proc.returncode}"
            continue
        with open(csv_path, newline="") as f:
            row = list(csv.DictReader(f))[-1]
        result[key].update(img_per_s=float(row["throughput"]), p50_ms=float(row["p50_ms"]))
    return result


def render(result: dict) -> str:
    ins, srv = result["in_process"], result["served"]
    mean_bytes = result["bytes_per_image"]

    def value(point, key, fmt):
        return format(point[key], fmt) if key in point else f"failed: {point.get('failed', '?')}"

    ratio = (f"{srv['batch']['img_per_s'] / ins['batch']['img_per_s']:.2f}" if "img_per_s" in srv["batch"] else "-")
    rows = [
        [f"in-process: decode + preprocess ({ins.get('decoder', '-')})", f"batch {ins['decode']['size']}",
         f"{ins['decode']['img_per_s']:.1f}", "-", "-", "-"],
        ["in-process: decode + preprocess + classifier", f"batch {ins['batch']['size']}",
         f"{ins['batch']['img_per_s']:.1f}", f"{ins['batch1']['p50_ms']:.2f}", "-", "1.00"],
        [f"served `{ENSEMBLE}` (perf_analyzer, 1 file per request)", f"concurrency {srv['batch']['concurrency']}",
         value(srv["batch"], "img_per_s", ".1f"), value(srv["batch1"], "p50_ms", ".2f"), f"{mean_bytes:,}", ratio],
    ]
    lines = ["# Encoded image -> logits: served vs in-process", "",
             f"- Date: {result['date']}", f"- Hardware: {hardware_line(result['hardware'])}",
             f"- Repository: {result['repo']} (classifier `{ins['classifier']}` on {ins['device']}; "
             f"{ins['decode_threads']} decode threads in-process)",
             f"- Images: {len(result['images'])} files, mean {mean_bytes:,} bytes "
             f"({', '.join(Path(p).name for p in result['images'][:4])}{', ...' if len(result['images']) > 4 else ''})",
             "", markdown_table(["path", "batching", "img/s", "p50 at batch 1 (ms)", "bytes sent / image",
                                 "vs in-process"], rows), "",
             f"Bytes per image: {mean_bytes:,} as the file vs {FP32_TENSOR_BYTES:,} as the FP32 tensor "
             f"({FP32_TENSOR_BYTES / mean_bytes:.1f}x more) or {FP32_TENSOR_BYTES // 4:,} as UINT8 pixels."]
    return "\n".join(lines) + "\n"


def run(repo: Path, files: Sequence[Path], batch: int, device: str, seconds: float, out: Path,
        url: Optional[str], protocol: str, perf_args: Sequence[str], concurrency: Optional[int] = None,
        progress=print, ports=None) -> dict:
    """In-process, then served: at ``url``, or by the embedded Triton started on ``ports`` (server.Ports; default:
    free ones)."""
    host = hardware()
    out.mkdir(parents=True, exist_ok=True)
    progress(f"in-process on {device}: batch {batch} and batch 1")
    ins = in_process(repo, files, batch, device, seconds)
    if url is None:
        from ..server import LocalTriton, Ports

        progress(f"starting the embedded Triton on {repo}")
        with LocalTriton(repo, ports or Ports.free()) as server:
            progress("served: perf_analyzer on the ensemble")
            srv = served(server.grpc_url, "grpc", files, concurrency or batch, out, perf_args, server.admin_key)
    else:
        progress(f"served: perf_analyzer on the ensemble at {url}")
        srv = served(url, protocol, files, concurrency or batch, out, perf_args)
    result = {"date": now(), "hardware": host, "repo": str(repo), "images": [str(f) for f in files],
              "bytes_per_image": round(sum(f.stat().st_size for f in files) / len(files)),
              "in_process": ins, "served": srv}
    (out / "image_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "image_bench.md").write_text(render(result))
    return result
