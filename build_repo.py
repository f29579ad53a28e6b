#!/usr/bin/env python3
"""`mnv3-build` (mnv3kit/cli/build.py) under its script name; `--help` says what it does."""
import sys

from mnv3kit.cli.build import main

if __name__ == "__main__":
    sys.exit(main())
