"""Edge-case images made from the real sample photographs (and a few made from nothing): what a server must
classify (GOOD) or refuse with a clear error (BAD). Used by the tests and perf/gpu_image_parity.py."""

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png_with_size(path: Path, width: int, height: int) -> None:
    """A valid PNG header that claims width x height: Pillow sees the size at open(), like a real bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def make_edge_cases(photo: Path, folder: Path) -> dict:
    """name -> path of images that must classify (good) and that must be refused (bad)."""
    folder.mkdir(parents=True, exist_ok=True)
    src = Image.open(photo).convert("RGB")
    out = {}

    def save(name, img, **kw):
        path = folder / name
        img.save(path, **kw)
        out[path.stem] = path
        return path

    save("grayscale.png", src.convert("L"))
    save("cmyk.jpg", src.convert("CMYK"))
    rgba = src.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(src.size))
    save("rgba.png", rgba)
    sixteen = (np.asarray(src.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    gray16 = Image.fromarray(sixteen)
    assert gray16.mode == "I;16"
    save("gray16.png", gray16)
    palette = src.convert("P", palette=Image.ADAPTIVE)
    save("palette.gif", palette)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    save("exif_rotated.jpg", src.rotate(90, expand=True), exif=exif.tobytes())
    save("tiny.png", src.resize((1, 1)))
    save("huge.jpg", src.resize((6000, 4500)), quality=70)
    # bad ones
    full = folder / "full.jpg"
    src.save(full)
    (folder / "truncated.jpg").write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    out["truncated"] = folder / "truncated.jpg"
    full.unlink()
    (folder / "empty.jpg").write_bytes(b"")
    out["empty"] = folder / "empty.jpg"
    (folder / "not_an_image.jpg").write_text("hello, I am text\n")
    out["not_an_image"] = folder / "not_an_image.jpg"
    _png_with_size(folder / "bomb.png", 40_000, 40_000)
    out["bomb"] = folder / "bomb.png"
    out["missing"] = folder / "does_not_exist.jpg"
    return out


GOOD = ("grayscale", "cmyk", "rgba", "gray16", "palette", "exif_rotated", "tiny", "huge")
BAD = {"truncated": "corrupt or truncated", "empty": "empty file", "not_an_image": "not an image",
       "bomb": "decompression bomb", "missing": "no such file"}
