#!/usr/bin/env bash
# Served performance of a running Triton with perf_analyzer: `python -m mnv3kit.cli.perf run` (see --help) with the
# kit's Python: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
"$PY" -c 'import mnv3kit.perf' 2>/dev/null || {
  echo "run_perf.sh: error: $PY cannot import the kit and tritonclient: install it with \`make venv\` (or" \
    "pip install \".[perf]\"), or set PYTHON" >&2
  exit 2
}
exec "$PY" -m mnv3kit.cli.perf --prog run_perf.sh run "$@"
