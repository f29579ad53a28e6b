"""OpenVINO: the IR (model.xml + model.bin) of the kit's model.onnx, the CPU's BF16 capability, and the accuracy gate a
reduced precision must pass before it is served.

The IR is converted from the ONNX file the parity gate already checked, with OpenVINO's own converter: the graph is
the same as from the torch module, and only the ONNX route keeps the tensor names (`image` -> `outputs`) the configs
name. Weights stay FP32 (``compress_to_fp16=False``; the converter's default FP16 weights would move the logits
whatever precision the CPU then computes in).
"""

import io
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np

from .errors import HOW_TO_INSTALL, KitError
from .spec import INPUT_DIMS, OV, OV_WEIGHTS

PRECISIONS = ("fp32", "bf16")
GATE_IMAGES = 512  # views of real photographs the gate compares on: crops, rescales, JPEG re-encodes
MIN_AGREEMENT = 0.995  # top-1 agreement with FP32 eager below which a reduced precision is refused


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise KitError(f"the {OV.name} model needs OpenVINO (the openvino extra, pip package `openvino`): "
                       f"{HOW_TO_INSTALL}") from None
    return openvino


def bf16_supported() -> bool:
    """Whether OpenVINO's CPU plugin computes in BF16 here (AVX512_BF16 or AMX): its capability list says so."""
    return "BF16" in import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def export_openvino(onnx_path: Path, version_dir: Path) -> Path:
    """model.xml and model.bin in ``version_dir``, FP32 weights, the ONNX file's dynamic batch dimension kept."""
    ov = import_openvino()
    model = ov.convert_model(str(onnx_path))
    shape = model.input(0).get_partial_shape()
    if shape.rank.get_length() != len(INPUT_DIMS) + 1 or shape[0].is_static:
        raise KitError(f"{onnx_path}: input {shape} after conversion, expected [?,{','.join(map(str, INPUT_DIMS))}]")
    xml = Path(version_dir) / OV.artifact
    ov.save_model(model, str(xml), compress_to_fp16=False)
    if not xml.with_name(OV_WEIGHTS).is_file():
        raise KitError(f"OpenVINO wrote {xml} without {OV_WEIGHTS}")
    return xml


def check_ir(xml: Path, max_batch: int, classes: int) -> List[str]:
    """What --check finds wrong with an IR: its weights file, tensor names, or its output at max batch on the CPU."""
    weights = xml.with_name(OV_WEIGHTS)
    if not weights.is_file():
        return [f"{weights}: missing (the IR's weights, beside {xml.name})"]
    ov = import_openvino()
    try:
        core = ov.Core()
        model = core.read_model(str(xml))
        names = (model.input(0).get_names(), model.output(0).get_names())
        if OV.input_name not in names[0] or OV.output_name not in names[1]:
            return [f"{xml}: tensors {sorted(names[0])}->{sorted(names[1])}, config expects "
                    f"{OV.input_name!r}->{OV.output_name!r}"]
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        out = compiled(np.zeros((max_batch, *INPUT_DIMS), np.float32))[compiled.output(0)]
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [f"{xml}: does not run on [{max_batch},{','.join(map(str, INPUT_DIMS))}]: {first}"]
    if out.shape != (max_batch, classes):
        return [f"{xml}: output shape {out.shape} at batch {max_batch}, expected ({max_batch}, {classes})"]
    return []


def gate_pixels(paths: Sequence[Path], count: int = GATE_IMAGES, seed: int = 0) -> np.ndarray:
    """``count`` eval-transformed uint8 images made from real photographs: random crops (10-100 % of the side),
    rescales, mirror images, and JPEG re-encodes at several qualities and chroma subsamplings (4:4:4, 4:2:2, 4:2:0)."""
    from PIL import Image

    from .preprocess import eval_pixels, load_image

    rng = random.Random(seed)
    photos = [load_image(p) for p in paths]
    out = []
    for i in range(count):
        img = photos[i % len(photos)]
        w, h = img.size
        side = rng.uniform(0.1, 1.0)
        cw, ch = max(16, int(w * side)), max(16, int(h * side * rng.uniform(0.75, 1.33)))
        cw, ch = min(cw, w), min(ch, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        view = img.crop((x, y, x + cw, y + ch))
        view = view.resize((max(16, int(cw * rng.uniform(0.5, 1.5))), max(16, int(ch * rng.uniform(0.5, 1.5)))))
        if rng.random() < 0.5:
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        view.save(buf, "JPEG", quality=rng.choice((40, 60, 75, 90, 95)), subsampling=rng.choice((0, 1, 2)))
        out.append(eval_pixels(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return np.stack(out)


@dataclass
class GateReport:
    precision: str
    images: int
    top1_agreement: float  # share of images whose top-1 class is FP32 eager's
    diff_p50: float  # |Δlogit| over every logit of every image, relative to max(1, max |FP32 logit|)
    diff_p99: float
    diff_max: float
    max_abs_logit: float
    min_agreement: float

    @property
    def ok(self) -> bool:
        return self.top1_agreement >= self.min_agreement

    def line(self) -> str:
        return (f"{self.precision} vs FP32 eager on {self.images} photo views: top-1 {100 * self.top1_agreement:.2f} % "
                f"the same (gate {100 * self.min_agreement:.1f} %), |Δlogit| p50 {self.diff_p50:.2%} p99 "
                f"{self.diff_p99:.2%} max {self.diff_max:.2%} of max |logit| {self.max_abs_logit:.2f}")

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def precision_gate(precision: str, reference: np.ndarray, candidate: np.ndarray,
                   min_agreement: float = MIN_AGREEMENT) -> GateReport:
    """``candidate`` logits (a reduced precision) against ``reference`` (FP32 eager) of the same images."""
    diff = np.abs(candidate - reference).ravel() / max(1.0, float(np.abs(reference).max()))
    p50, p99 = (float(v) for v in np.percentile(diff, [50, 99]))
    return GateReport(precision, len(reference), float((candidate.argmax(1) == reference.argmax(1)).mean()),
                      p50, p99, float(diff.max()), float(np.abs(reference).max()), min_agreement)
