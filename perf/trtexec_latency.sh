#!/usr/bin/env bash
# The original project's TensorRT latency table with trtexec, batch 1..8: run it where the plan was built and is served, i.e.
# inside NVIDIA's Triton image (trtexec at /usr/src/tensorrt/bin/trtexec, same TensorRT as the server's backend).
# Prints the Markdown table of perf/bench_engine.py (min/max/mean/median/p99 of trtexec's "Latency", which is
# host latency: H2D copy + GPU compute + D2H copy of one inference).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: perf/trtexec_latency.sh [PLAN] [BATCH ...]

  PLAN    TensorRT plan (default model_repository/mobilenetv3_trt/1/model.plan)
  BATCH   batch sizes to measure (default 1 2 3 4 5 6 7 8; the plan's profile must allow them)

Runs `trtexec --loadEngine=PLAN --shapes=image:Nx3x224x224` per batch size and prints one Markdown row per batch
from trtexec's performance summary. Environment: TRTEXEC (default: trtexec on PATH, else
/usr/src/tensorrt/bin/trtexec), INPUT (default image), TRTEXEC_ARGS (extra flags, e.g. --useCudaGraph),
LOG_DIR (trtexec logs; default a temporary directory, printed).
Example with the kit's compose setup (NVIDIA's image, repository mounted at /models):
  docker compose run --rm --entrypoint bash trt-build perf/trtexec_latency.sh /models/mobilenetv3_trt/1/model.plan
EOF
}

case ${1:-} in -h|--help) usage; exit 0 ;; esac
PLAN=${1:-model_repository/mobilenetv3_trt/1/model.plan}
[ $# -gt 0 ] && shift
BATCHES=${*:-1 2 3 4 5 6 7 8}
INPUT=${INPUT:-image}
TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}

die() { echo "trtexec_latency.sh: error: $*" >&2; exit 2; }
[ -f "$PLAN" ] || die "$PLAN: no such plan (build it: \`docker compose run --rm trt-build\`)"
[ -x "$TRTEXEC" ] || die "trtexec not found (set TRTEXEC=...); NVIDIA's Triton image has /usr/src/tensorrt/bin/trtexec"
for b in $BATCHES; do [[ $b =~ ^[1-9][0-9]*$ ]] || die "batch sizes must be positive integers, got '$b'"; done
LOG_DIR=${LOG_DIR:-$(mktemp -d)}
mkdir -p "$LOG_DIR"

# One statistic of the summary line "[I] Latency: min = X ms, max = ..., median = ..., percentile(99%) = ... ms".
stat() {
  sed -n "s/.*\] Latency: .*$1 = \([0-9.e+-]*\) ms.*/\1/p" "$2" | head -n 1 | awk '{ printf "%.2f", $1 }'
}

echo "trtexec logs: $LOG_DIR" >&2
echo "| Artifact | Runtime | Device | Batch | min (ms) | max (ms) | mean (ms) | median (ms) | p99 (ms) |" \
  "Throughput (img/s) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
status=0
for b in $BATCHES; do
  log=$LOG_DIR/trtexec_b$b.log
  # shellcheck disable=SC2086 # TRTEXEC_ARGS is a list of flags
  if ! "$TRTEXEC" --loadEngine="$PLAN" --shapes="$INPUT:${b}x3x224x224" ${TRTEXEC_ARGS:-} >"$log" 2>&1; then
    echo "trtexec_latency.sh: batch $b failed: $(tail -n 1 "$log") (log: $log)" >&2
    status=1
    continue
  fi
  device=$(sed -n 's/.*Selected Device: \(.*\)$/\1/p' "$log" | head -n 1)
  qps=$(sed -n 's/.*\] Throughput: \([0-9.e+-]*\) qps.*/\1/p' "$log" | head -n 1)
  printf '| trt | TensorRT (trtexec) | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${device:-GPU}" "$b" \
    "$(stat min "$log")" "$(stat max "$log")" "$(stat mean "$log")" "$(stat median "$log")" \
    "$(stat 'percentile(99%)' "$log")" \
    "$(awk -v q="$qps" -v b="$b" 'BEGIN { printf "%.1f", q * b }')"  # trtexec's qps counts batches
done
exit $status
