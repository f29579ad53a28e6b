"""The parity gate: eager PyTorch, the TorchScript file and the ONNX file must agree before anything is written."""

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .errors import HOW_TO_INSTALL, KitError
from .preprocess import eval_pixels, image_files, load_image, normalize
from .spec import MEAN, ONNX, PARITY_FILE, STD

# Allowed max |Δlogit| is TOLERANCE x max(1, max |logit|): 1e-4 absolute for small logits, relative beyond.
# A flat 1e-4 is below FP32's own rounding on realistic logits: eager FP32 alone differs from an FP64 run of
# the same model by up to 3.4e-4 on logits of magnitude 30-75 (measured; see README "Parity gate").
TOLERANCE = 1e-4
PARITY_IMAGES = 8  # at least: the photos and views of them, enough to tell a model whose logits ignore the image


def allowed_difference(reference: np.ndarray, tolerance: float = TOLERANCE) -> float:
    """The max |Δlogit| two FP32 runs of the same model may show against ``reference`` logits."""
    return tolerance * max(1.0, float(np.abs(reference).max()))


@dataclass
class ParityRow:
    format: str
    batch: int
    max_abs_diff: float
    max_abs_logit: float
    top1_agree: bool

    def limit(self, tolerance: float = TOLERANCE) -> float:
        return allowed_difference(np.float32(self.max_abs_logit), tolerance)

    def ok(self, tolerance: float = TOLERANCE) -> bool:
        return self.max_abs_diff <= self.limit(tolerance) and self.top1_agree


def sample_photos() -> List[Path]:
    """Real photographs shipped by scikit-learn (a temple in China and a flower), found without importing it (its
    import pulls in scipy, which may need another numpy than the python-backend stub's environment has)."""
    sklearn = importlib.util.find_spec("sklearn")
    if sklearn is None or not sklearn.submodule_search_locations:
        raise KitError(f"scikit-learn (its sample photographs) is not installed: {HOW_TO_INSTALL}, "
                       "or pass --parity-images DIR")
    folder = Path(list(sklearn.submodule_search_locations)[0]) / "datasets" / "images"
    photos = sorted(folder.glob("*.jpg"))
    if not photos:
        raise KitError(f"scikit-learn's sample photographs are missing from {folder}: pass --parity-images DIR")
    return photos


def photo_set(folder: Optional[Path], flag: str) -> List[Path]:
    """The photographs a check runs on: FOLDER's image files, else scikit-learn's sample photos."""
    if folder is None:
        return sample_photos()
    files = image_files(Path(folder)) if Path(folder).is_dir() else []
    if not files:
        raise KitError(f"{flag} {folder}: no image files (jpg, png, ...) in it")
    return files


def parity_batch(paths: Sequence[Path], size: int) -> np.ndarray:
    """``size`` preprocessed images (normalized FP32) of the photos and their views (parity_pixels)."""
    return normalize(parity_pixels(paths, size))


def parity_pixels(paths: Sequence[Path], size: int) -> np.ndarray:
    """``size`` images as uint8 pixels after Resize + CenterCrop: the photos, then mirrored/rotated/cropped views of
    them to fill the batch."""
    from PIL import Image

    per_image = []
    for img in (load_image(p) for p in paths):
        w, h = img.size
        per_image.append([img, img.transpose(Image.FLIP_LEFT_RIGHT), img.transpose(Image.ROTATE_90),
                          img.crop((0, 0, w // 2, h // 2)), img.crop((w // 2, h // 2, w, h))])
    views = [v for group in zip(*per_image) for v in group]  # every photo first, then their variations
    picked = (views * (size // len(views) + 1))[:size]
    return np.stack([eval_pixels(v) for v in picked])


def compare(fmt: str, out: np.ndarray, reference: np.ndarray) -> ParityRow:
    return ParityRow(fmt, len(reference), float(np.abs(out - reference).max()), float(np.abs(reference).max()),
                     bool((out.argmax(1) == reference.argmax(1)).all()))


def run_parity(model: torch.nn.Module, torchscript_path: Path, onnx_path: Path, pixels: np.ndarray,
               batch_sizes: Sequence[int], program_path: Optional[Path] = None,
               openvino_paths: Sequence[Path] = ()) -> List[ParityRow]:
    """Eager PyTorch on the normalized ``pixels`` (uint8 NCHW) against the TorchScript file, the ONNX file (ONNX
    Runtime) and, when given, the torch.export program and OpenVINO's IRs (FP32; an IR with a UINT8 input is given
    the pixels), at each batch size."""
    import onnxruntime as ort

    images = normalize(pixels)
    runners = {"torchscript": torch.jit.load(str(torchscript_path), map_location="cpu").eval()}
    if program_path is not None:
        runners["torch.export"] = torch.export.load(str(program_path)).module()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    openvino = {}
    if openvino_paths:
        from .backend.classifier_model import OpenVinoRunner

        for path in openvino_paths:
            runner = OpenVinoRunner(str(path), "fp32")
            openvino["openvino u8" if runner.input_dtype == np.uint8 else "openvino"] = runner
    rows = []
    for batch in batch_sizes:
        x = images[:batch]
        with torch.no_grad():
            reference = model.eval()(torch.from_numpy(x)).numpy()
            outputs = {fmt: run(torch.from_numpy(x)).numpy() for fmt, run in runners.items()}
        outputs["onnx"] = session.run([ONNX.output_name], {ONNX.input_name: x})[0]
        for fmt, runner in openvino.items():
            outputs[fmt] = runner(pixels[:batch] if runner.input_dtype == np.uint8 else x)
        rows += [compare(fmt, out, reference) for fmt, out in outputs.items()]
    return rows


def write_reference(model: torch.nn.Module, pixels: np.ndarray, path: Path) -> None:
    """The photos (uint8 pixels) and eager FP32 logits a served torch model checks itself against at load."""
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(normalize(pixels))).numpy()
    np.savez(path, pixels=pixels, mean=np.asarray(MEAN, np.float32), std=np.asarray(STD, np.float32), logits=logits)


def format_table(rows: Sequence[ParityRow], tolerance: float = TOLERANCE) -> str:
    lines = [f"{'format':<12} {'batch':>5} {'max|Δlogit|':>12} {'limit':>10} {'max|logit|':>10}  top-1", "-" * 64]
    lines += [f"{r.format:<12} {r.batch:>5} {r.max_abs_diff:>12.3e} {r.limit(tolerance):>10.1e} "
              f"{r.max_abs_logit:>10.2f}  {'same' if r.top1_agree else 'DIFFERS'}"
              f"{'' if r.ok(tolerance) else '  <- FAIL'}" for r in rows]
    return "\n".join(lines)


def check_parity(rows: Sequence[ParityRow], tolerance: float = TOLERANCE) -> None:
    bad = [r for r in rows if not r.ok(tolerance)]
    if bad:
        worst = max(bad, key=lambda r: r.max_abs_diff)
        raise KitError(f"parity gate failed: {worst.format} at batch {worst.batch} differs from eager PyTorch by "
                       f"{worst.max_abs_diff:.3e} (limit {worst.limit(tolerance):.1e}, top-1 "
                       f"{'same' if worst.top1_agree else 'differs'}); nothing was written")


def constant_logits(model: torch.nn.Module, images: np.ndarray, tolerance: float = TOLERANCE) -> Optional[str]:
    """Why ``model`` is useless to serve when its logits do not depend on the image (None when they do).

    Seen with training from scratch on little data: BatchNorm running statistics that never converged make the
    eval-mode features ~0, so every image gets the same logits, and every parity difference is ~0 as well."""
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(images)).numpy()
    spread = float((logits.max(0) - logits.min(0)).max())  # the most any logit moves across the images
    if len(images) < 2 or spread > allowed_difference(logits, tolerance):
        return None
    return (f"the model gives the same logits for all {len(images)} parity images (they differ by at most "
            f"{spread:.1e}, max |logit| {np.abs(logits).max():.2e}): every request would get one answer. Typical "
            f"cause: training from scratch on too little data; retrain from ImageNet weights (train.py --pretrained "
            f"imagenet)")


def rows_as_dicts(rows: Sequence[ParityRow]) -> List[dict]:
    return [asdict(r) for r in rows]


def served_parity(url: str, repo: Path) -> List[dict]:
    """Every python-backend torch model of ``repo``, served at ``url`` (gRPC), against the eager FP32 logits its build
    stored beside it (parity.npz), at the tolerance its config checks at load. The load-time check runs inside the
    model; this one goes through the server's data path as a client's request does. One row per model; a model that
    fails to answer gets its error in its row and the others are still checked."""
    import tritonclient.grpc as grpc
    from tritonclient.grpc import model_config_pb2
    from tritonclient.utils import np_to_triton_dtype

    from .validate import parse_config

    client = grpc.InferenceServerClient(url)
    rows = []
    for reference in sorted(repo.glob(f"*/[0-9]*/{PARITY_FILE}")):
        model_dir = reference.parent.parent
        config = parse_config(model_dir / "config.pbtxt")
        params = config.parameters
        tolerance = float(params["parity_tolerance"].string_value) if "parity_tolerance" in params else TOLERANCE
        data = np.load(reference)
        expected = data["logits"]
        uint8 = config.input[0].data_type == model_config_pb2.TYPE_UINT8
        images = data["pixels"] if uint8 else normalize(data["pixels"])
        row = {"model": config.name, "version": reference.parent.name, "images": len(images),
               "limit": allowed_difference(expected, tolerance)}
        step = max(1, config.max_batch_size)
        try:
            served = []
            for start in range(0, len(images), step):
                part = np.ascontiguousarray(images[start:start + step])
                inp = grpc.InferInput(config.input[0].name, list(part.shape), np_to_triton_dtype(part.dtype))
                inp.set_data_from_numpy(part)
                result = client.infer(config.name, [inp], model_version=reference.parent.name, client_timeout=300)
                served.append(result.as_numpy(config.output[0].name))
            logits = np.concatenate(served)
        except Exception as exc:  # noqa: BLE001 - the server's or the answer's fault, reported in this model's row
            rows.append({**row, "ok": False, "error": " ".join(str(exc).split())[:300]})
            continue
        diff, top1 = float(np.abs(logits - expected).max()), bool((logits.argmax(1) == expected.argmax(1)).all())
        rows.append({**row, "max_abs_diff": diff, "top1_same": top1, "ok": diff <= row["limit"] and top1})
    client.close()
    if not rows:
        raise KitError(f"{repo}: no model with a {PARITY_FILE} (python-backend torch models of a --target local "
                       f"build carry one)")
    return rows
