#!/usr/bin/env python3
"""`mnv3-train` (mnv3kit/cli/train.py) under its script name; `--help` says what it does."""
import sys

from mnv3kit.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
