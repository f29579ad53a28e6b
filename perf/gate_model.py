"""A model that OpenVINO BF16's accuracy gate accepts, to measure BF16 serving with: trained, then built.

MobileNetV3 trained from scratch by train.py to tell scikit-learn's two sample photographs apart (classes `china`
and `flower`, the photographs the build's gates use). Its training images are the two photographs, each linked
TRAIN_COPIES times (train.py's RandomResizedCrop and flips make the views); its validation images VAL_VIEWS views of
each, made as the gate makes them but with another seed. A model this confident on the gate's views keeps its classes
in BF16, so the gate passes; that says nothing about how a model trained on ImageNet or your data fares at it. Then
build_repo.py writes a --target local repository with ONNX and the OpenVINO IR in BF16 (-m onnx,ov
--openvino-precision bf16), for perf/regression.py.
"""

import argparse
import subprocess
import sys
from pathlib import Path

from mnv3kit.errors import KitError, cli_errors
from mnv3kit.gate import photo_views
from mnv3kit.parity import sample_photos
from mnv3kit.training import LABELS_NAME, best_weights_name

ROOT = Path(__file__).resolve().parents[1]

TRAIN_COPIES = 48  # per photograph
VAL_VIEWS = 64  # per photograph
VIEW_SEED = 1  # the gate's own views use seed 0


def write_dataset(root: Path) -> None:
    """ROOT/train/CLASS/NN.jpg (links to the photograph) and ROOT/val/CLASS/NNN.jpg (views of it)."""
    photos = sample_photos()
    for photo in photos:
        folder = root / "train" / photo.stem
        folder.mkdir(parents=True)
        for i in range(TRAIN_COPIES):
            (folder / f"{i:02d}{photo.suffix}").symlink_to(photo)
    for i, view in enumerate(photo_views(photos, VAL_VIEWS * len(photos), seed=VIEW_SEED)):
        folder = root / "val" / photos[i % len(photos)].stem
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.jpg").write_bytes(view.jpeg)


def run(*args) -> None:
    print("+ " + " ".join(map(str, args)), flush=True)
    if subprocess.run([sys.executable, *map(str, args)], cwd=ROOT).returncode:
        raise KitError(f"{Path(str(args[0])).name} failed (its error is above)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="perf/gate_model.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1] + "\n  python perf/gate_model.py -o perf/out/gate-model",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="a new folder: data/ (the dataset), weights/ (train.py's), model_repository/")
    p.add_argument("--arch", choices=("large", "small"), default="large")
    p.add_argument("--epochs", type=int, default=12, help="train.py's epochs (default 12; its best one is kept)")
    args = p.parse_args(argv)
    with cli_errors(p.prog):
        if args.output.exists() and any(args.output.iterdir()):
            raise KitError(f"{args.output} is not empty: give a new folder")
        data, weights = args.output / "data", args.output / "weights"
        write_dataset(data)
        run("train.py", "--data", data, "--arch", args.arch, "--epochs", args.epochs, "--lr", "1e-3", "--workers", "0",
            "-o", weights)
        run("build_repo.py", "--target", "local", "--arch", args.arch,
            "--weights", weights / best_weights_name(args.arch), "--labels", weights / LABELS_NAME,
            "-m", "onnx,ov", "--openvino-precision", "bf16", "-o", args.output / "model_repository")
    return 0


if __name__ == "__main__":
    sys.exit(main())
