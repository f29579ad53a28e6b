"""Accuracy gates: before a faster but inexact path is served (OpenVINO BF16, GPU JPEG decode), its classes are
compared with the exact path's on views of real photographs, and the path is refused below a top-1 agreement.

The views: random crops (10-100 % of the side), rescales, mirror images, and JPEG re-encodes at several qualities
and chroma subsamplings (4:4:4, 4:2:2, 4:2:0), made from the photographs with a fixed seed.
"""

import io
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

GATE_IMAGES = 512  # photo views a gate compares on
MIN_AGREEMENT = 0.995  # top-1 agreement with the exact path below which the inexact one is refused
SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}  # Pillow's `subsampling` values


@dataclass(frozen=True)
class View:
    jpeg: bytes
    quality: int
    subsampling: str


def photo_views(paths: Sequence[Path], count: int = GATE_IMAGES, seed: int = 0) -> List[View]:
    """``count`` JPEG files made from real photographs (see the module's docstring)."""
    from PIL import Image

    from .preprocess import load_image

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
        quality, subsampling = rng.choice((40, 60, 75, 90, 95)), rng.choice(tuple(SUBSAMPLING))
        buf = io.BytesIO()
        view.save(buf, "JPEG", quality=quality, subsampling=subsampling)
        out.append(View(buf.getvalue(), quality, SUBSAMPLING[subsampling]))
    return out


def pillow_pixels(views: Sequence[View]) -> np.ndarray:
    """The kit's eval transform (Pillow) of each view: uint8 NCHW."""
    from .preprocess import decode_image, eval_pixels

    return np.stack([eval_pixels(decode_image(v.jpeg)) for v in views])


@dataclass
class GateReport:
    name: str  # the inexact path
    reference: str  # the exact one
    images: int
    top1_agreement: float  # share of images whose top-1 class is the reference's
    diff_p50: float  # |Δlogit| over every logit of every image, relative to max(1, max |reference logit|)
    diff_p99: float
    diff_max: float
    max_abs_logit: float
    min_agreement: float
    pixels: Dict[str, int] = field(default_factory=dict)  # max |Δpixel| per JPEG subsampling, where compared

    @property
    def ok(self) -> bool:
        return self.top1_agreement >= self.min_agreement

    def line(self) -> str:
        pixels = "".join(f", max |Δpixel| {mode} {diff}" for mode, diff in self.pixels.items())
        return (f"{self.name} vs {self.reference} on {self.images} photo views: top-1 "
                f"{100 * self.top1_agreement:.2f} % the same (gate {100 * self.min_agreement:.1f} %), |Δlogit| p50 "
                f"{self.diff_p50:.2%} p99 {self.diff_p99:.2%} max {self.diff_max:.2%} of max |logit| "
                f"{self.max_abs_logit:.2f}{pixels}")

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def compare(name: str, reference_name: str, reference: np.ndarray, candidate: np.ndarray,
            min_agreement: float = MIN_AGREEMENT) -> GateReport:
    """``candidate`` logits (the inexact path) against ``reference`` (the exact path) of the same images."""
    diff = np.abs(candidate - reference).ravel() / max(1.0, float(np.abs(reference).max()))
    p50, p99 = (float(v) for v in np.percentile(diff, [50, 99]))
    return GateReport(name, reference_name, len(reference),
                      float((candidate.argmax(1) == reference.argmax(1)).mean()), p50, p99, float(diff.max()),
                      float(np.abs(reference).max()), min_agreement)


def decode_gate(name: str, views: Sequence[View], preprocess: Callable[[List[bytes]], np.ndarray],
                classify: Callable[[np.ndarray], np.ndarray], min_agreement: float = MIN_AGREEMENT) -> GateReport:
    """A preprocessing path (JPEG files -> uint8 NCHW crops) against Pillow's: the classes ``classify`` (uint8 NCHW
    -> logits) gives the two, and the largest pixel difference per subsampling."""
    exact = pillow_pixels(views)
    candidate = preprocess([v.jpeg for v in views])
    report = compare(name, "Pillow", classify(exact), classify(candidate), min_agreement)
    diff = np.abs(candidate.astype(np.int16) - exact.astype(np.int16)).reshape(len(views), -1).max(1)
    for mode in SUBSAMPLING.values():
        mine = [int(d) for d, v in zip(diff, views) if v.subsampling == mode]
        if mine:
            report.pixels[mode] = max(mine)
    return report
