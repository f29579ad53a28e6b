#!/usr/bin/env python3
"""`mnv3-serve` (mnv3kit/cli/serve.py) under its script name; `--help` says what it does."""
import sys

from mnv3kit.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
