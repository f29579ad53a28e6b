#!/usr/bin/env python3
"""`mnv3-deploy` (mnv3kit/cli/deploy.py) under its script name; `--help` says what it does."""
import sys

from mnv3kit.cli.deploy import main

if __name__ == "__main__":
    sys.exit(main())
