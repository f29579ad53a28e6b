"""Train MobileNetV3 on an ImageFolder dataset (the original project's train.py), for build_repo.py to deploy.

  python train.py --data flower_data --arch small --epochs 50 --pretrained imagenet
  python build_repo.py --target local --arch small --weights weights/MobileNetV3_Small.pth \
      --labels weights/class_indices.json -o model_repository_local && python serve.py
(on a GPU host, for NVIDIA's Triton image: the same build without --target local and -o)

Data: DATA/train/CLASS/*.jpg and DATA/val/CLASS/*.jpg (the original project's layout; both with the same class folders),
or DATA/CLASS/*.jpg with --val-split 0.2. Classes are the sorted folder names; images are found recursively
(.jpg .jpeg .png .bmp .gif .tif .tiff .webp .ppm .pgm). Every image is decoded once before training:
unreadable ones (truncated, empty, not an image) are skipped and counted.

Transforms as in the original project: train RandomResizedCrop(224) + horizontal flip, val Resize(256) + CenterCrop(224),
both normalized with ImageNet's mean/std (mnv3kit.preprocess, the same code the server and client use).

Outputs in --output (default weights/):
  class_indices.json       {"0": "daisy", ...}: the original project's format, build_repo.py --labels
  MobileNetV3_Small.pth    state dict of the best-val-accuracy epoch (_Large for --arch large): --weights
  last_small.pth           model + optimizer + epoch + best accuracy after every epoch: --resume

--pretrained takes a torchvision-layout checkpoint (e.g. torchvision's mobilenet_v3_small-047dcff4.pth) of any
class count, or `imagenet`: torchvision's ImageNet weights for --arch, fetched once through torch.hub. Its final
layer (classifier.3) is replaced for your classes and, as the original project did, the features are frozen
(--no-freeze-features fine-tunes everything). From scratch (no --pretrained), BatchNorm statistics are recomputed
on the training images before each validation. Runs on CUDA when available, else CPU. The same --seed gives the
same run on CPU, and --resume continues exactly where the interrupted run stopped.
Exit codes: 0 ok, 2 bad input (one line `train.py: error: ...`), 130 interrupted.
"""

import argparse
import sys
from pathlib import Path

from mnv3kit.cli import DEFAULT_REPO, add_output
from mnv3kit.errors import cli_errors


def parse_args(argv=None) -> argparse.Namespace:
    from mnv3kit.model import ARCHS
    from mnv3kit.training import DEFAULTS, default_workers

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    on_resume = "on --resume: the checkpoint's"
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="dataset root: DIR/train/CLASS/*.jpg + DIR/val/CLASS/*.jpg, "
                        "or DIR/CLASS/*.jpg with --val-split")
    g.add_argument("--val-split", type=float, metavar="F",
                   help="validate on a fraction F (e.g. 0.2) of each class of DIR/CLASS/ instead of DIR/val/")
    g.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                   help=f"DataLoader worker processes, 0 loads in the main process (default {default_workers()})")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=ARCHS, help=f"MobileNetV3 variant (default {DEFAULTS['arch']}; {on_resume})")
    g.add_argument("--pretrained", type=Path, metavar="PATH|imagenet",
                   help="torchvision-layout checkpoint of any class count; classifier.3 is replaced. 'imagenet': "
                        "torchvision's ImageNet weights for --arch, downloaded once through torch.hub (checksum "
                        "verified, cached in $TORCH_HOME/hub/checkpoints). Omitted: train from scratch")
    g.add_argument("--freeze-features", action=argparse.BooleanOptionalAction, default=None,
                   help="train only the classifier (default: on with --pretrained, off from scratch)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=50, metavar="N", help="total epochs, resumed ones included "
                   "(default 50)")
    g.add_argument("--batch-size", type=int, metavar="N",
                   help=f"images per step (default {DEFAULTS['batch_size']}; {on_resume})")
    g.add_argument("--lr", type=float, metavar="LR", help=f"Adam learning rate (default {DEFAULTS['lr']}; {on_resume})")
    g.add_argument("--seed", type=int, metavar="N",
                   help=f"seed for init, shuffling, augmentation and --val-split (default {DEFAULTS['seed']}; "
                        f"{on_resume})")
    g.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    g.add_argument("--amp", action="store_true", help="mixed precision (float16 autocast + grad scaling) on CUDA")
    g = p.add_argument_group("output")
    add_output(g, Path("weights"), help="where class_indices.json and the checkpoints go")
    g.add_argument("--resume", type=Path, metavar="PATH",
                   help="continue from a last-epoch checkpoint, e.g. weights/last_small.pth")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors():
        from mnv3kit.training import TrainConfig, train

        result = train(TrainConfig(
            data=args.data, output=args.output, arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, workers=args.workers, seed=args.seed, val_split=args.val_split, pretrained=args.pretrained,
            freeze_features=args.freeze_features, resume=args.resume, device=args.device, amp=args.amp))
        print(f"best val accuracy {result.best_acc:.4f} (epoch {result.best_epoch}): {result.best_path}")
        built = f"--arch {result.arch} --weights {result.best_path} --labels {result.labels_path}"
        # serve.py (the embedded Triton) serves --target local repositories; build_repo.py's default is ngc
        print(f"deploy here, CPU and the embedded Triton: python build_repo.py --target local {built} -o {DEFAULT_REPO}"
              f" && python serve.py --repo {DEFAULT_REPO}")
        print(f"deploy on a GPU host, NVIDIA's Triton image: python build_repo.py {built} (then docs/serve.md)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
