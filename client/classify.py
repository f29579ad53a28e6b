#!/usr/bin/env python3
"""`mnv3-classify` (mnv3kit/cli/classify.py) under its script name; `--help` says what it does."""
import sys

from mnv3kit.cli.classify import main

if __name__ == "__main__":
    sys.exit(main())
