#!/usr/bin/env python3
"""GPU JPEG decoders side by side: pixels against Pillow's (libjpeg-turbo) and decode speed, per decoder.

  python perf/gpu_decoders.py --device cuda:0 -o perf/out/decoders

Decoders: nvImageCodec with libjpeg-turbo's chroma upsampling (`:fancy_upsampling=1`) restricted to each of its
backends (the GPU's hardware JPEG engine, its CUDA decoder, hybrid CPU+GPU, CPU), nvImageCodec with every backend
(what the image model uses), and torchvision's nvJPEG. Pixels: max |Δ| of the full decoded image vs Pillow's, per
subsampling (4:4:4, 4:2:2, 4:2:0), on the accuracy gate's photo views. Speed: decoded img/s at --batch-size on
500x375 q90 JPEGs (4:2:0, Pillow's default), each batch synchronized. Writes OUT/decoders.md and .json.
Exit codes: 0 ok, 2 bad input (no CUDA, no nvImageCodec and no torchvision).
"""

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mnv3kit.cli import add_output
from mnv3kit.errors import KitError, cli_errors

BACKENDS = ("HW_GPU_ONLY", "GPU_ONLY", "HYBRID_CPU_GPU", "CPU_ONLY")  # nvImageCodec's BackendKind names


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda:0", help="the GPU (default cuda:0)")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="images per decode call (default 64)")
    p.add_argument("--views", type=int, default=96, help="photo views compared with Pillow (default 96)")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per decoder (default 3)")
    add_output(p, Path("perf/out/decoders"), help="decoders.md / .json")
    return p.parse_args(argv)


def decoders(device):
    """name -> decode(list of bytes) -> list of uint8 HWC tensors on ``device`` (None where one failed)."""
    import torch

    out = {}
    try:
        from nvidia import nvimgcodec

        from mnv3kit.backend.preprocess_model import FANCY_UPSAMPLING

        def wrap(decoder, host=False):
            def decode(datas):
                return [None if img is None else
                        torch.from_numpy(np.asarray(img.cpu())).to(device) if host else torch.from_dlpack(img)
                        for img in decoder.decode(datas)]
            return decode

        out[f"nvImageCodec {nvimgcodec.__version__} (all backends)"] = wrap(
            nvimgcodec.Decoder(device_id=device.index or 0, options=FANCY_UPSAMPLING))
        for kind in BACKENDS:
            try:
                decoder = nvimgcodec.Decoder(device_id=device.index or 0, options=FANCY_UPSAMPLING,
                                             backends=[nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind))])
            except Exception as exc:  # noqa: BLE001 - a backend this GPU or build lacks is reported, not fatal
                out[f"nvImageCodec {kind}"] = f"unavailable: {exc}"
                continue
            out[f"nvImageCodec {kind}"] = wrap(decoder, host=kind == "CPU_ONLY")
    except ImportError as exc:
        print(f"no nvImageCodec ({exc})", file=sys.stderr)
    try:
        import torchvision
        from torchvision.io import ImageReadMode, decode_jpeg

        out[f"torchvision {torchvision.__version__} nvJPEG"] = lambda datas: [
            t.permute(1, 2, 0) for t in decode_jpeg([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas],
                                                    mode=ImageReadMode.RGB, device=device)]
    except ImportError as exc:
        print(f"no torchvision ({exc})", file=sys.stderr)
    if not out:
        raise KitError("neither nvImageCodec (pip install nvidia-nvimgcodec-cu12 or -cu13) nor torchvision is "
                       "installed: nothing to measure")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors():
        import torch
        from PIL import Image

        from mnv3kit.gate import photo_views
        from mnv3kit.measure.image_bench import make_jpegs
        from mnv3kit.parity import sample_photos
        from mnv3kit.report import hardware, hardware_line, markdown_table, now

        if not torch.cuda.is_available():
            raise KitError("no CUDA device: this compares GPU decoders (run it on the GPU host)")
        device = torch.device(args.device)
        torch.cuda.set_device(device)
        views = photo_views(sample_photos(), args.views)
        refs = [np.asarray(Image.open(io.BytesIO(v.jpeg)).convert("RGB")) for v in views]
        with tempfile.TemporaryDirectory() as tmp:
            batch = [f.read_bytes() for f in make_jpegs(sample_photos(), Path(tmp), (500, 375), count=args.batch_size)]
        rows, result = [], {"date": now(), "hardware": hardware(), "batch_size": args.batch_size, "decoders": {}}
        for name, decode in decoders(device).items():
            if isinstance(decode, str):
                result["decoders"][name] = {"error": decode}
                rows.append([name, decode, "", "", "", ""])
                continue
            try:
                got = decode([v.jpeg for v in views])
                torch.cuda.synchronize()
                worst = {}
                for view, ref, img in zip(views, refs, got):
                    diff = 256 if img is None or tuple(img.shape) != ref.shape else int(
                        np.abs(img.cpu().numpy().astype(np.int16) - ref).max())
                    worst[view.subsampling] = max(worst.get(view.subsampling, 0), diff)
                for _ in range(3):
                    decode(batch)
                torch.cuda.synchronize()
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < args.seconds:
                    decode(batch)
                    torch.cuda.synchronize()
                    n += len(batch)
                rate = n / (time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001 - one decoder failing does not hide the others
                result["decoders"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                rows.append([name, f"failed: {type(exc).__name__}: {exc}"[:120], "", "", "", ""])
                continue
            result["decoders"][name] = {"img_per_s": rate, "max_abs_pixel": worst}
            rows.append([name, f"{rate:.0f}"] + [str(worst.get(m, "-")) for m in ("4:4:4", "4:2:2", "4:2:0")]
                        + ["yes" if max(worst.values()) <= 2 else "no"])
        text = "\n".join([
            "# GPU JPEG decoders: pixels vs Pillow and speed", "",
            f"- Date: {result['date']}", f"- Hardware: {hardware_line(result['hardware'])}",
            f"- Pixels: max |Δ| of the full decoded image vs Pillow's on {len(views)} photo views (256: not "
            f"decoded or another shape); speed: batches of {args.batch_size} 500x375 q90 4:2:0 JPEGs", "",
            markdown_table(["decoder", f"img/s (batch {args.batch_size})", "max |Δ| 4:4:4", "4:2:2", "4:2:0",
                            "within 2 levels"], rows)]) + "\n"
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "decoders.md").write_text(text)
        (args.output / "decoders.json").write_text(json.dumps(result, indent=2) + "\n")
        print(text)
        return 0


if __name__ == "__main__":
    sys.exit(main())
