#!/usr/bin/env python3
"""GPU parity of the image ensemble: server-side GPU preprocessing + classifier vs the client-side path.

  python perf/gpu_image_parity.py --repo REPO -u localhost:8001 -o OUT

REPO: a --target local repository with --ensemble on KIND_GPU, served at -u (gRPC). For every image (scikit-learn's
photographs, 500x375 JPEGs cut from them, the edge cases of tests/images.py) it compares
  1. preprocessing alone, in-process: the GPU Preprocessor's uint8 crops vs the kit's CPU path (max |Δpixel|);
  2. served logits: mobilenetv3_image with the file's bytes vs the classifier with the client-side FP32 tensor
     (both through the same served classifier, so only the preprocessing differs): max |Δlogit|, top-1.
Writes OUT/gpu_image_parity.md and .json; exit 1 when a top-1 differs.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mnv3kit.cli import add_output


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("-u", "--url", default="localhost:8001", help="the server's gRPC endpoint (default localhost:8001)")
    p.add_argument("--device", default="cuda:0")
    add_output(p, required=True, help="gpu_image_parity.md / .json and the images")
    args = p.parse_args()

    import torch
    import tritonclient.grpc as grpc
    from tritonclient.grpc import model_config_pb2

    from mnv3kit.measure.edge_images import BAD, make_edge_cases
    from mnv3kit.backend.preprocess_model import Preprocessor, gpu_decodable
    from mnv3kit.ensemble import image_classifier
    from mnv3kit.measure.image_bench import make_jpegs
    from mnv3kit.parity import sample_photos
    from mnv3kit.preprocess import preprocess_file
    from mnv3kit.spec import ENSEMBLE, IMAGE_INPUT
    from mnv3kit.validate import parse_config

    args.output.mkdir(parents=True, exist_ok=True)
    photos = sample_photos()
    edge = make_edge_cases(photos[1], args.output / "edge")
    files = [*photos, *make_jpegs(photos, args.output / "jpeg500", (500, 375)),
             *(path for name, path in edge.items() if name not in BAD)]
    classifier = image_classifier(parse_config(args.repo / ENSEMBLE / "config.pbtxt"))
    config = parse_config(args.repo / classifier / "config.pbtxt")
    pixels_in = config.input[0].data_type == model_config_pb2.TYPE_UINT8  # the classifier normalizes itself
    gpu = Preprocessor(True, device=args.device)
    client = grpc.InferenceServerClient(args.url)

    def infer(model, name, array):
        inp = grpc.InferInput(name, list(array.shape), "UINT8" if array.dtype == np.uint8 else "FP32")
        inp.set_data_from_numpy(array)
        return client.infer(model, [inp]).as_numpy(client.get_model_metadata(model).outputs[0].name)[0]

    rows = []
    for path in files:
        data = path.read_bytes()
        crop = gpu([data])[0]
        crop = crop.cpu().numpy() if hasattr(crop, "cpu") else crop  # --device cpu: a smoke test
        pixel_diff = int(np.abs(crop.astype(int) - preprocess_file(path, pixels=True).astype(int)).max())
        row = {"image": path.name, "gpu_decode": gpu_decodable(data), "max_pixel_diff": pixel_diff}
        try:
            served = infer(ENSEMBLE, IMAGE_INPUT, np.frombuffer(data, np.uint8)[None])
            reference = infer(classifier, config.input[0].name, preprocess_file(path, pixels=pixels_in)[None])
        except Exception as exc:  # noqa: BLE001 - recorded per image, the pixel comparison still stands
            rows.append({**row, "served_error": str(exc).splitlines()[0][:200]})
            continue
        top2 = np.sort(reference)[-2:]
        rows.append({**row, "max_logit_diff": float(np.abs(served - reference).max()),
                     "max_abs_logit": float(np.abs(reference).max()), "top1_margin": float(top2[1] - top2[0]),
                     "top1_same": bool(served.argmax() == reference.argmax())})
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    lines = [f"# GPU image ensemble parity ({device}, torch {torch.__version__}, "
             f"decode: {gpu.gpu.name if gpu.gpu else 'Pillow only'}; classifier {classifier})", "",
             "| image | GPU decode | max Δpixel (uint8) | max Δlogit | max logit | top-1 margin | top-1 |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['image']} | {'yes' if r['gpu_decode'] else 'no (CPU)'} | {r['max_pixel_diff']} | "
              + (f"{r['max_logit_diff']:.3e} | {r['max_abs_logit']:.2f} | {r['top1_margin']:.3f} | "
                 f"{'same' if r['top1_same'] else 'DIFFERS'} |" if "served_error" not in r else
                 f"served: {r['served_error']} | - | - | - |") for r in rows]
    gpu_rows = [r for r in rows if r["gpu_decode"] and "served_error" not in r]
    worst = max(gpu_rows, key=lambda r: r["max_logit_diff"] / max(1.0, r["max_abs_logit"])) if gpu_rows else None
    if worst:
        lines += ["", f"Worst GPU-decoded image: {worst['image']}: max |Δlogit| {worst['max_logit_diff']:.3e} = "
                      f"{worst['max_logit_diff'] / max(1.0, worst['max_abs_logit']):.2e} x max(1, max |logit|); "
                      f"CPU-path images: max |Δlogit| "
                      f"{max([r['max_logit_diff'] for r in rows if not r['gpu_decode'] and 'served_error' not in r] or [0]):.3e}"]
    text = "\n".join(lines) + "\n"
    (args.output / "gpu_image_parity.md").write_text(text)
    (args.output / "gpu_image_parity.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)
    return 0 if all(r.get("top1_same") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
