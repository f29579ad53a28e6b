"""python -m mnv3kit.cli.demo_data: the demo's digits dataset, written and scored (mnv3kit.demo_data)."""

import argparse
import sys
from pathlib import Path

from mnv3kit.demo_data import __doc__ as DOC
from mnv3kit.demo_data import score, write
from mnv3kit.errors import cli_errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mnv3kit.cli.demo_data", description=DOC.split("\n\n")[0],
                                epilog=DOC.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write the digits as DIR/{train,val,test}/DIGIT/NNNN.png")
    w.add_argument("output", type=Path, metavar="DIR")
    w.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    s = sub.add_parser("score", help="classify a folder of DIGIT/ folders through a server: answers and accuracy")
    s.add_argument("folder", type=Path, metavar="DIR")
    s.add_argument("-u", "--url", default="localhost:8000", help="the server (default localhost:8000)")
    s.add_argument("-i", "--protocol", choices=("http", "grpc"), default="http")
    s.add_argument("-m", "--model", default="mobilenetv3_pt", help="model name (default mobilenetv3_pt)")
    s.add_argument("-b", "--batch-size", type=int, default=8, help="images per request (default 8)")
    s.add_argument("--min-accuracy", type=float, default=0.0, metavar="F",
                   help="exit 2 when the accuracy is below F (default 0)")
    args = p.parse_args(argv)
    with cli_errors(p.prog):
        if args.command == "write":
            counts = write(args.output, args.seed)
            print(f"wrote {sum(counts.values())} digits to {args.output}: "
                  + ", ".join(f"{n} {part}" for part, n in counts.items()))
        else:
            score(args.folder, args.url, args.protocol, args.model, args.batch_size, args.min_accuracy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
