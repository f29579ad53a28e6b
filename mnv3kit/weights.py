"""Checkpoints and labels: load what users actually have, fail with a message that says what is off."""

import json
import pickle
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlparse

import torch

from .errors import KitError
from .model import ARCHS, MobileNetV3, build_model
from .repository import sha256

CLASSIFIER_WEIGHT = "classifier.3.weight"
INIT_SEED = 0  # deterministic init when no weights are given
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
# How a torch.save file starts: a zip archive (since PyTorch 1.6) or a pickle (the legacy format)
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")
# torchvision's published ImageNet-1k weights (IMAGENET1K_V1), in the layout the kit's model loads; the 8 hex
# digits in each name are the start of the file's sha256, which torch.hub checks.
IMAGENET_URLS = {
    "large": "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
    "small": "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth",
}
IMAGENET = "imagenet"  # train.py --pretrained imagenet


def read_checkpoint(path: Path) -> Dict[str, torch.Tensor]:
    """A flat state dict from a plain, nested (``state_dict``/``model``) or ``module.``-prefixed checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"weights file {path} does not exist (pass --weights PATH to a .pth state dict)")
    if path.stat().st_size == 0:
        raise KitError(f"weights file {path} is empty (0 bytes): re-download or re-save it")
    with open(path, "rb") as f:
        if not f.read(4).startswith(CHECKPOINT_MAGIC):
            raise KitError(f"{path} is not a PyTorch checkpoint (torch.save writes a zip archive or a pickle): pass "
                           f"the .pth state dict that train.py or torchvision wrote")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refuses pickled objects other than tensors and containers
        raise KitError(f"{path} holds Python objects besides tensors, which the kit does not unpickle (that could run "
                       f"code): re-save it as a state dict, torch.save(model.state_dict(), PATH)") from None
    except Exception as exc:  # noqa: BLE001 - torch.load fails on damaged files with arbitrary exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise KitError(f"{path} is not a readable PyTorch checkpoint (truncated or damaged?): {first}") from None
    for key in _NESTED_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if isinstance(obj, torch.nn.Module):  # pragma: no cover - weights_only=True refuses whole modules
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise KitError(f"{path} holds no state dict of tensors (expected a dict of parameter name -> tensor, "
                       f"optionally under 'state_dict' or 'model')")
    prefix = "module."
    if all(k.startswith(prefix) for k in obj):  # saved from DataParallel/DDP
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def imagenet_checkpoint(arch: str) -> Path:
    """torchvision's ImageNet weights for ``arch`` through torch.hub: downloaded once into its cache
    (``$TORCH_HOME/hub/checkpoints``) with the sha256 prefix in the file name checked, also for a file placed
    there by hand (torch.hub checks downloads only). Returns the cached file."""
    url = IMAGENET_URLS[arch]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / Path(urlparse(url).path).name
    by_hand = (f"download {url} elsewhere and place it at {path} (torch.hub's cache, moved by $TORCH_HOME), "
               f"or pass --pretrained PATH_TO_THE_FILE")
    expected = re.search(r"-([0-9a-f]{8,})\.", path.name).group(1)
    if path.is_file() and not sha256(path).startswith(expected):
        raise KitError(f"{path}: its sha256 does not start with {expected} (damaged or a different file): delete it "
                       f"and retry, or {by_hand}")
    try:
        torch.hub.load_state_dict_from_url(url, model_dir=str(cache), map_location="cpu", check_hash=True,
                                           progress=False, weights_only=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a download with the wrong hash a RuntimeError
        reason = str(getattr(exc, "reason", None) or exc).strip().splitlines()[0]
        raise KitError(f"cannot get the ImageNet weights {url} ({reason}): {by_hand}") from None
    return path


def num_classes_of(state: Dict[str, torch.Tensor], source: str) -> int:
    weight = state.get(CLASSIFIER_WEIGHT)
    if weight is None or weight.ndim != 2:
        raise KitError(f"{source} has no '{CLASSIFIER_WEIGHT}' [classes, hidden] tensor: "
                       f"not a MobileNetV3 classifier checkpoint in torchvision's layout")
    return int(weight.shape[0])


def check_state_dict(model: torch.nn.Module, state: Dict[str, torch.Tensor], source: str,
                     skip: Tuple[str, ...] = ()) -> None:
    """Strict key and shape check with one message naming every problem (a few of each kind)."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(skip)}
    given = {k: v.shape for k, v in state.items() if not k.startswith(skip)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshaped = [f"{k} {tuple(given[k])} != {tuple(expected[k])}"
                 for k in sorted(set(expected) & set(given)) if given[k] != expected[k]]
    if not (missing or unexpected or misshaped):
        return

    def few(items: List[str]) -> str:
        return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

    parts = [f"{label} {len(items)}: {few(items)}"
             for label, items in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped))
             if items]
    arch = getattr(model, "arch", "?")
    for other in (a for a in ARCHS if a != arch):
        shapes = {k: v.shape for k, v in build_model(other, model.num_classes).state_dict().items()
                  if not k.startswith(skip)}
        if shapes == given:
            raise KitError(f"{source} does not fit MobileNetV3-{arch}, wrong --arch: it looks like a "
                           f"MobileNetV3-{other} checkpoint, pass --arch {other}")
    raise KitError(f"{source} does not fit MobileNetV3-{arch} ({'; '.join(parts)}); "
                   f"not a MobileNetV3 checkpoint in torchvision's layout?")


def load_model(arch: str, weights: Optional[Path], random_classes: int = 5) -> Tuple[MobileNetV3, bool]:
    """The eval-mode model and whether it carries trained weights (False: seeded random init with
    ``random_classes`` outputs)."""
    if arch not in ARCHS:
        raise KitError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    if weights is None:
        return build_model(arch, random_classes, seed=INIT_SEED), False
    state = read_checkpoint(weights)
    model = build_model(arch, num_classes_of(state, str(weights)))
    check_state_dict(model, state, str(weights))
    model.load_state_dict(state)
    return model.eval(), True


def load_labels(path: Optional[Path], num_classes: int) -> List[str]:
    """Labels from the original project's class_indices.json ({"0": "daisy", ...}) or a labels.txt; default class_N."""
    if path is None:
        return [f"class_{i}" for i in range(num_classes)]
    labels = read_labels(path)
    if len(labels) != num_classes:
        raise KitError(f"{path} has {len(labels)} labels but the model has {num_classes} classes")
    return labels


def read_labels(path: Path) -> List[str]:
    path = Path(path)
    if not path.is_file():
        raise KitError(f"labels file {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KitError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(mapping, list):
            labels = [str(x) for x in mapping]
        elif isinstance(mapping, dict) and all(str(k).isdigit() for k in mapping):
            indices = sorted(int(k) for k in mapping)
            if indices != list(range(len(indices))):
                raise KitError(f"{path}: class indices must be 0..N-1 without gaps, got {indices}")
            labels = [str(mapping[str(i)]) for i in indices]
        else:
            raise KitError(f"{path} must map class index to name like {{\"0\": \"daisy\", \"1\": \"dandelion\"}}")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels or any("\n" in s or not s.strip() for s in labels):
        raise KitError(f"{path}: labels must be non-empty single-line strings")
    return labels


def write_class_indices(path: Path, labels: List[str]) -> None:
    """The original project's class_indices.json format, as train.py writes it."""
    Path(path).write_text(json.dumps({str(i): name for i, name in enumerate(labels)}, indent=2) + "\n")
