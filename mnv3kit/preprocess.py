"""The one preprocessing definition: training, the build's parity gate, the client and the server all use it.

Pillow + numpy reimplementations of torchvision's Resize(256)/CenterCrop(224)/RandomResizedCrop(224)/
RandomHorizontalFlip/ToTensor/Normalize (torchvision does not install beside the pinned torch).
"""

import io
import math
import os
import random
import warnings
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import KitError
from .spec import IMAGE_SIZE, MEAN, RESIZE_SIZE, STD

# Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; we refuse at the warning: a
# 90-megapixel classifier input is either a mistake or a decompression bomb.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_MEAN = np.asarray(MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(STD, dtype=np.float32).reshape(3, 1, 1)


class ImageError(KitError):
    """One image cannot be used; batch callers report it and go on with the others."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, EXIF orientation applied, alpha composited on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16/32-bit gray: scale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_image(path: Union[str, Path]) -> Image.Image:
    """Open, fully decode and convert one image; any problem is an ImageError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory")
    return decode_image(path.read_bytes(), str(path))


def decode_image(data: bytes, name: str = "image") -> Image.Image:
    """Fully decode encoded image bytes and convert them; any problem is an ImageError naming ``name``.
    Thread-safe: the server decodes the images of a batch in a thread pool."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                # checked here too: warning filters are process-wide, so under threads the warning may only print
                if img.width * img.height > MAX_PIXELS:
                    raise Image.DecompressionBombError(img.size)
                img.load()  # decode now so truncation shows up here, not later
                return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: refused, more than {MAX_PIXELS:,} pixels (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None


def shorter_side_size(w: int, h: int, size: int = RESIZE_SIZE):
    """(width, height) after Resize(size) of the shorter side."""
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return max(new_w, 1), max(new_h, 1)


def crop_offsets(w: int, h: int, size: int = IMAGE_SIZE):
    """(left, top) of CenterCrop(size) of a w x h image."""
    return int(round((w - size) / 2.0)), int(round((h - size) / 2.0))


def resize_shorter(img: Image.Image, size: int = RESIZE_SIZE) -> Image.Image:
    return img.resize(shorter_side_size(*img.size, size), Image.BILINEAR)


def center_crop(img: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    left, top = crop_offsets(*img.size, size)
    return img.crop((left, top, left + size, top + size))


def normalize(pixels: np.ndarray) -> np.ndarray:
    """ToTensor + Normalize of uint8 CHW pixels: float32 CHW."""
    return (pixels.astype(np.float32) / 255.0 - _MEAN) / _STD


def pixels_of(images: np.ndarray) -> np.ndarray:
    """normalize's inverse: the uint8 pixels of normalized images (exact for images normalize made)."""
    return np.clip(np.rint((images * _STD + _MEAN) * 255.0), 0, 255).astype(np.uint8)


def to_chw(img: Image.Image) -> np.ndarray:
    return normalize(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def eval_pixels(img: Image.Image) -> np.ndarray:
    """Resize(256) + CenterCrop(224) as uint8 CHW: what a UINT8 model input carries (normalized on the server)."""
    return np.ascontiguousarray(np.asarray(center_crop(resize_shorter(img)), dtype=np.uint8).transpose(2, 0, 1))


def eval_transform(img: Image.Image) -> np.ndarray:
    """The original project's val transform: Resize(256), CenterCrop(224), ToTensor, Normalize."""
    return normalize(eval_pixels(img))


def random_resized_crop(img: Image.Image, rng: random.Random, size: int = IMAGE_SIZE,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Image.Image:
    """torchvision's RandomResizedCrop sampling (10 tries, then a center crop of bounded aspect)."""
    w, h = img.size
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            break
    else:
        in_ratio = w / h
        if in_ratio < ratio[0]:
            cw, ch = w, int(round(w / ratio[0]))
        elif in_ratio > ratio[1]:
            cw, ch = int(round(h * ratio[1])), h
        else:
            cw, ch = w, h
        left, top = (w - cw) // 2, (h - ch) // 2
    return img.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))


def train_transform(img: Image.Image, rng: Optional[random.Random] = None) -> np.ndarray:
    """The original project's train transform: RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize."""
    rng = rng or random.Random()
    img = random_resized_crop(img, rng)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return to_chw(img)


def preprocess_file(path: Union[str, Path], pixels: bool = False) -> np.ndarray:
    """The eval transform of one file: normalized float32 CHW, or uint8 CHW pixels with ``pixels``."""
    img = load_image(path)
    return eval_pixels(img) if pixels else eval_transform(img)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def image_files(folder: Path) -> List[Path]:
    """Image files under ``folder``, recursively and through symlinks as ImageFolder walks, sorted; hidden files
    (macOS ``._x.jpg`` forks) and folders are skipped."""
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(parent) / f for f in files if not f.startswith(".") and is_image_file(Path(f))]
    return sorted(found)
