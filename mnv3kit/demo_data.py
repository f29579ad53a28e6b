"""The demo's dataset: scikit-learn's handwritten digits (1,797 labelled 8×8 images) as an ImageFolder.

``write`` puts them, enlarged, under ``DIR/train``, ``DIR/val`` (train.py's two folders) and ``DIR/test`` (held out:
train.py never reads it), one ``DIGIT/NNNN.png`` per image (NNNN: its index in ``load_digits()``). The split is
stratified and fixed by the seed (``digit_split``). ``score`` classifies the held-out folder through a served model
with the kit's client and prints a few answers beside the true labels, then the accuracy over all of them.

  python -m mnv3kit.cli.demo_data write perf/out/demo/digits
  python -m mnv3kit.cli.demo_data score perf/out/demo/digits/test -u localhost:8000 -m mobilenetv3_pt
"""

import os
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

from .errors import KitError

SPLITS = ("train", "val", "test")
TEST_FRACTION = 0.2  # of each digit, held out
VAL_FRACTION = 0.1  # of each digit, train.py's validation (best-epoch choice)
SCALE = 8  # 8×8 -> 64×64, NEAREST: the original pixels, large enough to look at
SHOWN = 10  # held-out answers printed one by one; the accuracy covers them all


def digit_split(labels: np.ndarray, seed: int = 0) -> Dict[str, List[int]]:
    """Indices of each part, per digit by train.py's own seeded split: disjoint, the same for the same seed."""
    from .training import split_samples

    samples = list(enumerate(int(label) for label in labels))
    classes = [str(d) for d in range(int(labels.max()) + 1)]
    rest, test = split_samples(samples, classes, TEST_FRACTION, seed)
    train, val = split_samples(rest, classes, VAL_FRACTION / (1 - TEST_FRACTION), seed)
    return {name: [index for index, _ in part] for name, part in zip(SPLITS, (train, val, test))}


def digit_image(pixels: np.ndarray) -> Image.Image:
    """One 8×8 digit (values 0-16, 16 = ink) as dark ink on white, enlarged SCALE times."""
    gray = np.round(255 - pixels * (255 / 16)).astype(np.uint8)
    return Image.fromarray(gray, "L").resize((8 * SCALE, 8 * SCALE), Image.NEAREST)


def write(root: Path, seed: int = 0) -> Dict[str, int]:
    """DIR/{train,val,test}/DIGIT/NNNN.png; the number of images in each part."""
    from sklearn.datasets import load_digits

    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise KitError(f"{root} is not empty: write the digits into a new folder")
    digits = load_digits()
    counts = {}
    for part, indices in digit_split(digits.target, seed).items():
        for index in indices:
            folder = root / part / str(digits.target[index])
            folder.mkdir(parents=True, exist_ok=True)
            digit_image(digits.images[index]).save(folder / f"{index:04d}.png")
        counts[part] = len(indices)
    return counts


def score(folder: Path, url: str, protocol: str, model: str, batch_size: int, min_accuracy: float = 0.0) -> float:
    """Classify every image of DIGIT/ sub-folders of ``folder`` through the server; print SHOWN of them beside their
    true labels and the accuracy over all; return it, or refuse one below ``min_accuracy``."""
    from .client import Classified, TritonClassifier, classify, expand_inputs
    from .spec import ADMIN_KEY_ENV

    if not Path(folder).is_dir():
        raise KitError(f"{folder} is not a folder (expected {folder}/DIGIT/*.png, from: python -m mnv3kit.cli.demo_data "
                       f"write DIR)")
    paths = expand_inputs([folder])
    if not paths:
        raise KitError(f"no images in {folder} (write them with: python -m mnv3kit.cli.demo_data write DIR)")
    classifier = TritonClassifier(url, protocol, model, admin_key=os.environ.get(ADMIN_KEY_ENV))
    # an even spread over the digits rather than the first few zeros
    shown = {paths[i] for i in np.linspace(0, len(paths) - 1, SHOWN).round().astype(int)}
    correct = total = 0
    for record in classify(classifier, paths, batch_size, topk=1):
        if not isinstance(record, Classified):
            raise KitError(record.error)
        true, (label, _, prob, _) = Path(record.path).parent.name, record.top[0]
        correct += label == true
        total += 1
        if Path(record.path) in shown:
            print(f"{record.path}: {label} {prob:.3f} (true: {true})" + ("" if label == true else "  <- wrong"))
    classifier.close()
    accuracy = correct / total
    print(f"held-out accuracy {accuracy:.4f} ({correct}/{total} images of {folder}, {model} over {protocol})")
    if accuracy < min_accuracy:
        raise KitError(f"held-out accuracy {accuracy:.4f} is below {min_accuracy}: the served model does not answer "
                       f"as the trained one did (weights, labels or preprocessing differ)")
    return accuracy
