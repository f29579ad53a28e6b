"""Training, as the original project's train.py did it, on the kit's own preprocessing (torchvision does not install here).

ImageFolder data (sorted class folders; ``train/`` + ``val/`` or one folder split by ``val_split``), every image
checked once up front, Adam, a per-epoch log, the best-val-accuracy weights as a plain state dict that
build_repo.py loads, a last-epoch checkpoint to resume from, and torchvision-layout pretrained weights whose
class-count-dependent last layer is replaced.
"""

import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, TypeVar

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .errors import KitError
from .model import ARCHS, MobileNetV3, recompute_batchnorm
from .preprocess import IMAGE_EXTENSIONS, ImageError, eval_transform, image_files, load_image, train_transform
from .weights import IMAGENET, check_state_dict, imagenet_checkpoint, read_checkpoint, write_class_indices

NEW_LAYER = "classifier.3."  # the only layer whose shape depends on the class count
LABELS_NAME = "class_indices.json"
CHECKPOINT_FORMAT = "mnv3kit-train-1"
DEFAULTS = {"arch": "large", "seed": 0, "lr": 1e-4, "batch_size": 16}
SHOWN_PROBLEMS = 10  # unreadable images named one by one; the rest are counted
PRECISE_BN_IMAGES = 4096  # training images (eval transform) whose statistics become BatchNorm's running ones
# From scratch, fewer training images per class than this give a network that memorizes (warned, not refused).
SCRATCH_MIN_PER_CLASS = 500

Sample = Tuple[Path, int]
Item = TypeVar("Item")  # what split_samples splits: an image path, or a dataset index


def best_weights_name(arch: str) -> str:
    return f"MobileNetV3_{arch.capitalize()}.pth"


def last_checkpoint_name(arch: str) -> str:
    return f"last_{arch}.pth"


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def info(message: str) -> None:
    tqdm.write(message, file=sys.stdout)  # tqdm.write keeps an open progress bar intact


def warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------- data

@dataclass
class DataSplit:
    classes: List[str]
    train: List[Sample]
    val: List[Sample]
    unreadable: Dict[Path, str] = field(default_factory=dict)  # skipped file -> why


def class_folders(folder: Path) -> List[str]:
    """ImageFolder's classes: sorted sub-folder names. Hidden folders (.ipynb_checkpoints, ...) are not classes."""
    if not folder.is_dir():
        raise KitError(f"data folder {folder} does not exist" if not folder.exists() else f"{folder} is not a folder")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise KitError(f"{folder} has no class folders (expected {folder}/CLASS_NAME/*.jpg)")
    return names


def list_images(folder: Path, classes: Sequence[str]) -> List[Sample]:
    samples: List[Sample] = []
    for index, name in enumerate(classes):
        files = image_files(folder / name)
        if not files:
            raise KitError(f"class folder {folder / name} has no images ({' '.join(IMAGE_EXTENSIONS)})")
        samples += [(path, index) for path in files]
    return samples


class _Probe(Dataset):
    """Decodes each image once; the DataLoader's workers do it in parallel."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Optional[str]:
        try:
            load_image(self.paths[index])
        except ImageError as exc:
            return str(exc)
        return None


def unreadable_images(paths: Sequence[Path], workers: int) -> Dict[Path, str]:
    """path -> problem for every image load_image refuses (truncated, empty, not an image, bomb)."""
    loader = DataLoader(_Probe(paths), batch_size=32, num_workers=workers, collate_fn=list)
    problems = {}
    results = (r for batch in tqdm(loader, desc="checking images", unit="batch", leave=False, disable=None)
               for r in batch)
    for path, problem in zip(paths, results):
        if problem is not None:
            problems[path] = problem
    return problems


def split_samples(samples: Sequence[Tuple[Item, int]], classes: Sequence[str], fraction: float,
                  seed: int) -> Tuple[List[Tuple[Item, int]], List[Tuple[Item, int]]]:
    """Per-class (stratified) split of (item, class index) pairs, the same for the same seed: a resumed run
    validates on the same images, and the demo's digits (mnv3kit.demo_data) are split by it too."""
    train: List[Tuple[Item, int]] = []
    val: List[Tuple[Item, int]] = []
    for index, name in enumerate(classes):
        mine = [s for s in samples if s[1] == index]
        if len(mine) < 2:
            raise KitError(f"class {name!r} has {len(mine)} readable image(s): --val-split needs at least 2 per class")
        random.Random(f"{seed}:{name}").shuffle(mine)
        n_val = min(max(1, round(len(mine) * fraction)), len(mine) - 1)
        val += mine[:n_val]
        train += mine[n_val:]
    return sorted(train), sorted(val)


def find_data(root: Path, val_split: Optional[float], seed: int, workers: int) -> DataSplit:
    """Classes and samples of ``root/train`` + ``root/val`` (or of ``root`` split by ``val_split``), readable only."""
    root = Path(root)
    if not root.is_dir():
        raise KitError(f"data folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    if val_split is None:
        train_dir, val_dir = root / "train", root / "val"
        if not (train_dir.is_dir() and val_dir.is_dir()):
            raise KitError(f"{root} needs train/ and val/ folders of class folders (the original project's layout: "
                           f"{root}/train/daisy/*.jpg, {root}/val/daisy/*.jpg); to split one folder of class "
                           f"folders pass --val-split 0.2")
        classes, val_classes = class_folders(train_dir), class_folders(val_dir)
        if val_classes != classes:
            # ImageFolder would number the classes of each folder on its own: labels would silently disagree.
            missing, extra = sorted(set(classes) - set(val_classes)), sorted(set(val_classes) - set(classes))
            raise KitError(f"{val_dir} and {train_dir} must hold the same class folders"
                           + (f"; missing in val/: {', '.join(missing)}" if missing else "")
                           + (f"; only in val/: {', '.join(extra)}" if extra else ""))
        parts = {train_dir: list_images(train_dir, classes), val_dir: list_images(val_dir, classes)}
    else:
        if not 0.0 < val_split < 1.0:
            raise KitError(f"--val-split must be between 0 and 1 (a fraction like 0.2), got {val_split}")
        if (root / "train").is_dir():
            raise KitError(f"{root} has a train/ folder: --val-split splits one folder of class folders; "
                           f"drop --val-split to use {root}/train and {root}/val, or pass --data {root / 'train'}")
        classes = class_folders(root)
        parts = {root: list_images(root, classes)}
    if len(classes) < 2:
        raise KitError(f"{root} has one class folder ({classes[0]}): a classifier needs at least 2 classes")
    unreadable = unreadable_images([p for samples in parts.values() for p, _ in samples], workers)
    for folder, samples in parts.items():
        for index, name in enumerate(classes):
            mine = [path for path, label in samples if label == index]
            if all(path in unreadable for path in mine):
                raise KitError(f"class folder {folder / name} has no readable images ({len(mine)} refused, e.g. "
                               f"{unreadable[mine[0]]})")
        parts[folder] = [s for s in samples if s[0] not in unreadable]
    if val_split is None:
        train, val = parts[train_dir], parts[val_dir]
    else:
        train, val = split_samples(parts[root], classes, val_split, seed)
    return DataSplit(classes, train, val, unreadable)


class ImageFolderDataset(Dataset):
    """(float32 CHW tensor, class index) through mnv3kit.preprocess: the original project's train or val transform.

    Training augmentation draws from a ``random.Random`` seeded by (seed, epoch, index): the same crops in every
    run and in whichever worker process loads the image, so a resumed run sees what an uninterrupted one would.
    """

    def __init__(self, samples: Sequence[Sample], train: bool, seed: int = 0):
        self.samples, self.train, self.seed = list(samples), train, seed
        self.epoch = 0  # set before each epoch; workers are started per epoch and pick it up

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        img = load_image(path)
        if self.train:
            x = train_transform(img, random.Random(f"{self.seed}:{self.epoch}:{index}"))
        else:
            x = eval_transform(img)
        return torch.from_numpy(x), label


# ---------------------------------------------------------------------------------------------------- checkpoints

def _require_file(path: Path, flag: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{flag} file {path} does not exist")
    return path


def read_pretrained(path: Path, arch: str) -> Dict[str, torch.Tensor]:
    """A torchvision-layout checkpoint of any class count, checked against ``arch`` before any data is read."""
    path = _require_file(path, "--pretrained")
    state = read_checkpoint(path)
    # Everything but the class-count-dependent layer must fit; wrong arch -> the kit's usual message.
    check_state_dict(MobileNetV3(arch, 2), state, str(path), skip=(NEW_LAYER,))
    return state


def load_pretrained(model: MobileNetV3, state: Dict[str, torch.Tensor], source: str) -> str:
    """Load ``state`` into ``model``, replacing the last layer unless its shape already fits; the returned
    line says what was loaded and skipped."""
    own = model.state_dict()
    skipped = {k: v for k, v in state.items() if k.startswith(NEW_LAYER) and (k not in own or v.shape != own[k].shape)}
    kept = {k: v for k, v in state.items() if k not in skipped}
    model.load_state_dict(kept, strict=False)
    if skipped:
        what = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(skipped.items()))
        last = f"new {model.num_classes}-class {NEW_LAYER[:-1]} (skipped {what})"
    elif any(k.startswith(NEW_LAYER) for k in kept):
        last = f"{NEW_LAYER[:-1]} kept (already {model.num_classes} classes)"
    else:
        last = f"new {model.num_classes}-class {NEW_LAYER[:-1]} (not in the file)"
    return f"pretrained {source}: loaded {len(kept)} tensors; {last}"


def load_resume(path: Path) -> dict:
    """A last-epoch checkpoint written by :func:`train` (model, optimizer, epoch, best accuracy, settings)."""
    path = _require_file(path, "--resume")
    read_checkpoint(path)  # missing, empty, not a checkpoint: the kit's usual messages
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise KitError(f"{path} holds weights only (no optimizer state or epoch): --resume needs the last_ARCH.pth "
                       f"train.py writes every epoch; to start from these weights use --pretrained {path}")
    return obj


def _save(obj, path: Path) -> None:
    """Write then rename: an interrupted save never leaves a truncated checkpoint behind."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _cpu_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------------- training

@dataclass
class TrainConfig:
    """None means the default for a new run and the checkpoint's value for ``resume`` (see DEFAULTS)."""

    data: Path
    output: Path = Path("weights")
    arch: Optional[str] = None
    epochs: int = 50
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    workers: int = field(default_factory=default_workers)
    seed: Optional[int] = None
    val_split: Optional[float] = None
    pretrained: Optional[Path] = None
    freeze_features: Optional[bool] = None  # default: on with pretrained weights, off from scratch
    resume: Optional[Path] = None
    device: str = "auto"
    amp: bool = False


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    images_per_s: float
    best: bool

    def line(self, epochs: int) -> str:
        return (f"epoch {self.epoch}/{epochs}: train loss {self.train_loss:.4f} acc {self.train_acc:.4f} | "
                f"val loss {self.val_loss:.4f} acc {self.val_acc:.4f} | {self.images_per_s:.1f} images/s"
                + (" | best so far" if self.best else ""))


@dataclass
class TrainResult:
    arch: str
    classes: List[str]
    best_acc: float
    best_epoch: int
    best_path: Path
    last_path: Path
    labels_path: Path
    history: List[EpochStats]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KitError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise KitError(f"--device {name}: torch {torch.__version__} sees no CUDA device here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise KitError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise KitError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def _settings(cfg: TrainConfig, saved: Optional[dict]) -> dict:
    """The run's settings: given values, else the checkpoint's on resume, else the defaults. Those that define
    the run (architecture, seed, split, what is frozen) must not change on resume; lr and batch size may."""
    given = {"arch": cfg.arch, "seed": cfg.seed, "val_split": cfg.val_split, "freeze_features": cfg.freeze_features,
             "lr": cfg.lr, "batch_size": cfg.batch_size}
    if saved is None:
        out = {k: DEFAULTS[k] if v is None and k in DEFAULTS else v for k, v in given.items()}
        if out["freeze_features"] is None:
            out["freeze_features"] = cfg.pretrained is not None
        elif out["freeze_features"] and cfg.pretrained is None:
            raise KitError("--freeze-features needs --pretrained: frozen random features learn nothing")
        return out
    out = {}
    for key, value in given.items():
        if value is None:
            out[key] = saved[key]
        elif key in ("lr", "batch_size") or value == saved[key]:
            out[key] = value
        else:
            raise KitError(f"{cfg.resume} was trained with {_as_flag(key, saved[key])}, not {_as_flag(key, value)}: "
                           f"resume it with the same setting or start a new run")
    return out


def _as_flag(key: str, value) -> str:
    flag = "--" + key.replace("_", "-")
    if value is None:
        return f"no {flag}"
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {value}"


def _check_numbers(cfg: TrainConfig, s: dict) -> None:
    if s["arch"] not in ARCHS:
        raise KitError(f"unknown arch {s['arch']!r}: choose one of {', '.join(ARCHS)}")
    for flag, value, low in (("--epochs", cfg.epochs, 1), ("--batch-size", s["batch_size"], 1),
                             ("--workers", cfg.workers, 0)):
        if value < low:
            raise KitError(f"{flag} must be >= {low}, got {value}")
    if not s["lr"] > 0:
        raise KitError(f"--lr must be positive, got {s['lr']}")


def _epoch_seed(seed: int, epoch: int) -> int:
    return random.Random(f"{seed}:epoch:{epoch}").getrandbits(63)


def run_epoch(model: MobileNetV3, loader: DataLoader, device: torch.device, desc: str, amp: bool,
              optimizer: Optional[torch.optim.Optimizer] = None, scaler: Optional[torch.amp.GradScaler] = None,
              frozen_features: bool = False) -> Tuple[float, float, int, float]:
    """One pass (training when an optimizer is given): mean loss, accuracy, images, seconds."""
    training = optimizer is not None
    model.train(training)
    if training and frozen_features:
        # Frozen means frozen: BatchNorm keeps the pretrained statistics, so features stay what was loaded.
        model.features.eval()
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=None)
    with torch.set_grad_enabled(training):
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=amp):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            if training:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            total_loss += loss.item() * y.numel()
            correct += int((logits.argmax(1) == y).sum())
            seen += y.numel()
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    return total_loss / seen, correct / seen, seen, time.perf_counter() - start


def train(cfg: TrainConfig) -> TrainResult:
    device = pick_device(cfg.device)
    amp = cfg.amp and device.type == "cuda"
    if cfg.amp and not amp:
        warn(f"--amp applies on CUDA only: training in FP32 on {device}")
    saved = load_resume(cfg.resume) if cfg.resume is not None else None
    s = _settings(cfg, saved["config"] if saved else None)
    _check_numbers(cfg, s)
    start_epoch = saved["epoch"] + 1 if saved else 1
    if start_epoch > cfg.epochs:
        raise KitError(f"{cfg.resume} already finished epoch {saved['epoch']}: pass --epochs above "
                       f"{saved['epoch']} to train further")

    source = cfg.pretrained
    if source is not None and str(source) == IMAGENET and not saved:
        source = imagenet_checkpoint(s["arch"])
    pretrained = read_pretrained(source, s["arch"]) if source is not None and not saved else None
    data = find_data(cfg.data, s["val_split"], s["seed"], cfg.workers)
    if saved and saved["config"]["classes"] != data.classes:
        raise KitError(f"{cfg.resume} was trained on classes {', '.join(saved['config']['classes'])}; "
                       f"{cfg.data} has {', '.join(data.classes)}")
    if data.unreadable:
        warn(f"skipping {len(data.unreadable)} unreadable image(s):")
        for problem in list(data.unreadable.values())[:SHOWN_PROBLEMS]:
            warn(f"  {problem}")
        if len(data.unreadable) > SHOWN_PROBLEMS:
            warn(f"  ... and {len(data.unreadable) - SHOWN_PROBLEMS} more")
    info(f"data {cfg.data}: {len(data.classes)} classes ({', '.join(data.classes)}); {len(data.train)} train, "
         f"{len(data.val)} val images" + (f"; {len(data.unreadable)} unreadable skipped" if data.unreadable else ""))

    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    labels_path = output / LABELS_NAME
    write_class_indices(labels_path, data.classes)
    best_path, last_path = output / best_weights_name(s["arch"]), output / last_checkpoint_name(s["arch"])

    torch.manual_seed(s["seed"])  # reproducible init of everything that is not loaded
    model = MobileNetV3(s["arch"], len(data.classes))
    if saved:
        check_state_dict(model, saved["model"], str(cfg.resume))
        model.load_state_dict(saved["model"])
        info(f"resuming {cfg.resume} after epoch {saved['epoch']} (best val accuracy {saved['best_acc']:.4f})")
        if cfg.pretrained is not None:
            info(f"--pretrained {cfg.pretrained} not loaded: the run continues from {cfg.resume}")
    elif pretrained is not None:
        info(load_pretrained(model, pretrained, str(source)))
    if s["freeze_features"]:
        model.features.requires_grad_(False)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    info(f"MobileNetV3-{s['arch']} on {device}{' (mixed precision)' if amp else ''}: training "
         f"{sum(p.numel() for p in params):,} of {total:,} parameters"
         + (" (features frozen)" if s["freeze_features"] else ""))

    optimizer = torch.optim.Adam(params, lr=s["lr"])
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    history: List[EpochStats] = []
    best_acc, best_epoch = -1.0, 0  # the first epoch always saves, even at 0% accuracy
    if saved:
        optimizer.load_state_dict(saved["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = s["lr"]  # loading restores the old lr; --lr on resume wins
        if amp and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        best_acc, best_epoch = saved["best_acc"], saved["best_epoch"]
        history = [EpochStats(**h) for h in saved["history"]]

    if pretrained is None and not saved:
        fewest = min(sum(1 for _, label in data.train if label == i) for i in range(len(data.classes)))
        if fewest < SCRATCH_MIN_PER_CLASS:
            warn(f"training from scratch on {fewest} image(s) per class (smallest class): MobileNetV3 needs "
                 f"thousands per class from scratch and will mostly memorize these; start from ImageNet weights "
                 f"with --pretrained imagenet")
    train_set = ImageFolderDataset(data.train, train=True, seed=s["seed"])
    # Precise BN: before each validation, BatchNorm's running statistics are recomputed on training images (eval
    # transform, a fixed subset on large data) instead of trusting training's momentum-0.01 averages, which lag far
    # behind the weights on small data (seen: eval-mode features near 0, the same logits for every image).
    # Frozen features keep their pretrained statistics.
    bn_samples = data.train[::-(-len(data.train) // PRECISE_BN_IMAGES)]
    bn_loader = DataLoader(ImageFolderDataset(bn_samples, train=False), batch_size=s["batch_size"],
                           num_workers=cfg.workers, pin_memory=device.type == "cuda")
    val_loader = DataLoader(ImageFolderDataset(data.val, train=False), batch_size=s["batch_size"],
                            num_workers=cfg.workers, pin_memory=device.type == "cuda")
    for epoch in range(start_epoch, cfg.epochs + 1):
        # Every epoch restarts the RNGs (shuffle, dropout, crops) from (seed, epoch): resuming changes nothing.
        epoch_seed = _epoch_seed(s["seed"], epoch)
        torch.manual_seed(epoch_seed)
        train_set.epoch = epoch
        loader = DataLoader(train_set, batch_size=s["batch_size"], shuffle=True, num_workers=cfg.workers,
                            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(epoch_seed))
        tl, ta, n, seconds = run_epoch(model, loader, device, f"epoch {epoch}/{cfg.epochs} train", amp,
                                       optimizer, scaler, s["freeze_features"])
        with torch.autocast(device.type, enabled=amp):
            bar = tqdm(bn_loader, desc=f"epoch {epoch}/{cfg.epochs} BatchNorm statistics", unit="batch",
                       leave=False, disable=None)
            recompute_batchnorm(model, (x.to(device, non_blocking=True) for x, _ in bar),
                                skip=model.features if s["freeze_features"] else None)
        vl, va, _, _ = run_epoch(model, val_loader, device, f"epoch {epoch}/{cfg.epochs} val", amp)
        improved = va > best_acc
        if improved:
            best_acc, best_epoch = va, epoch
            _save(_cpu_state(model), best_path)
        stats = EpochStats(epoch, tl, ta, vl, va, n / seconds, improved)
        history.append(stats)
        _save({"format": CHECKPOINT_FORMAT, "model": _cpu_state(model), "optimizer": optimizer.state_dict(),
               "scaler": scaler.state_dict(), "epoch": epoch, "best_acc": best_acc, "best_epoch": best_epoch,
               "config": {**s, "classes": data.classes}, "history": [asdict(h) for h in history]}, last_path)
        info(stats.line(cfg.epochs))
    return TrainResult(s["arch"], data.classes, best_acc, best_epoch, best_path, last_path, labels_path, history)
