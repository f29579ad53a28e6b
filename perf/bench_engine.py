#!/usr/bin/env python3
"""`mnv3-bench` (mnv3kit/cli/bench.py) under its script name; `--help` says what it does."""
import sys

from mnv3kit.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
