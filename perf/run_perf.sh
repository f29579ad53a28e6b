#!/usr/bin/env bash
# Served performance of a running Triton with perf_analyzer: the seed's perf_client table, one command.
# Thin on purpose: flags and the perf_analyzer calls live here; finding perf_analyzer, asking the server and
# turning the CSVs into Markdown/PNG is mnv3kit/perf.py (python -m mnv3kit.perf prepare|report).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=run_perf.sh

usage() {
  cat <<'EOF'
Usage: perf/run_perf.sh [options] [-- extra perf_analyzer arguments]

Measures throughput and latency of models served by a running Triton with perf_analyzer (tritonclient[all]==2.51.0),
one measurement per model x batch size, and writes into the output directory:
  report.md               Model/Batch_Size, Throughput (infer/sec), Avg, p50, p90, p95, p99 latency (ms), then the
                          server-side breakdown (queue, compute input/infer/output); header: server version, model
                          configs, hardware, date, the perf_analyzer command
  results.csv             the same numbers, one row per model x batch x concurrency
  throughput_vs_p99.png   throughput against p99 latency, one line per model
  csv/MODEL_bN.csv        perf_analyzer's own CSV (-f --verbose-csv) per point; logs/MODEL_bN.log its output

Options:
  -m, --models LIST        comma-separated model names (default: every READY model on the server)
  -u, --url HOST:PORT      server address (default localhost:8000 for http, localhost:8001 for grpc)
  -i, --protocol P         http or grpc (default http)
  -b, --batch-sizes LIST   e.g. 1-8 or 1,2,4,8 (default 1..max_batch_size of the models: 1-8, as the seed)
  -c, --concurrency RANGE  outstanding requests, START[:END[:STEP]] (default 1, as perf_client's table)
      --shared-memory M    none, system or cuda: pass tensors through system or CUDA shared memory (server on
                           this host; cuda: the GPU that serves, perf_analyzer allocates it)
  -p, --window MS          length of each measurement window (default perf_analyzer's 5000)
      --count N            count windows instead: each window lasts until N requests completed (and >= 1 s)
      --stability PCT      allowed spread of the last 3 windows before a point counts as stable (default 10)
      --metrics URL        also record Triton's GPU metrics (utilization, power, memory) from URL, e.g.
                           localhost:8002/metrics, into the CSVs
      --warmup N           untimed requests per model x batch size before measuring (default 5): TorchScript
                           optimizes on its first calls per input shape, seconds each on a small CPU
      --images DIR         JPEG/PNG files sent to encoded-image models (mobilenetv3_image), one per batch item,
                           through perf_analyzer --input-data (default: scikit-learn's sample photographs)
      --compare JSON       engine_latency.json of perf/bench_engine.py --out: adds in-process throughput and the
                           served / in-process ratio per row
  -o, --out DIR            output directory (default perf/out/served-YYYYmmdd-HHMMSS)
      --quick              short, rough measurements for CI and the demo (--count 5 --stability 1000)
  -h, --help               this text

A server whose admin APIs are restricted (serve.py, the kit's compose file) needs its key in $TRITON_ADMIN_KEY: the
repository index (which models are ready) and Triton's statistics (the server-side columns) are admin APIs. The key
goes to perf_analyzer as a -H header and is never written into the report.
perf_analyzer is looked up as $PERF_ANALYZER, in the virtualenv beside the Python used ($PYTHON, else .venv/bin/python,
else python3), then on PATH; LD_LIBRARY_PATH gets the nvidia-cuda-runtime-cu12 wheel's libcudart.so.12, which it
loads even without a GPU. Missing? `make venv` (it also installs the system package libb64-0d).
A point that fails (unstable measurement, server error) is listed in the report; the others are kept.
Regenerate a report from existing CSVs: python -m mnv3kit.perf report DIR [--compare JSON].

Exit status: 0 every point measured; 1 some points failed (the rest are reported);
             2 bad usage, perf_analyzer missing, server unreachable or a model not ready.
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
positive() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }

models="" url="" protocol=http batches="" concurrency=1 shm=none window="" count="" stability="" metrics=""
warmup=5 compare="" out="" quick=0 images="" extra=()
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    -m|--models) need "$@"; models=$2; shift 2 ;;
    -u|--url) need "$@"; url=$2; shift 2 ;;
    -i|--protocol) need "$@"; protocol=$2; shift 2 ;;
    -b|--batch-sizes) need "$@"; batches=$2; shift 2 ;;
    -c|--concurrency) need "$@"; concurrency=$2; shift 2 ;;
    --shared-memory) need "$@"; shm=$2; shift 2 ;;
    -p|--window) need "$@"; positive "$1" "$2"; window=$2; shift 2 ;;
    --count) need "$@"; positive "$1" "$2"; count=$2; shift 2 ;;
    --stability) need "$@"; positive "$1" "$2"; stability=$2; shift 2 ;;
    --metrics) need "$@"; metrics=$2; shift 2 ;;
    --warmup) need "$@"; [[ $2 =~ ^[0-9]+$ ]] || die "--warmup must be a number >= 0, got '$2'"; warmup=$2; shift 2 ;;
    --compare) need "$@"; compare=$2; shift 2 ;;
    --images) need "$@"; [ -d "$2" ] || die "--images $2: no such directory"; images=$2; shift 2 ;;
    -o|--out) need "$@"; out=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ $protocol == http || $protocol == grpc ]] || die "--protocol must be http or grpc, got '$protocol'"
[[ $shm == none || $shm == system || $shm == cuda ]] || die "--shared-memory must be none, system or cuda, got '$shm'"
[[ $concurrency =~ ^[1-9][0-9]*(:[1-9][0-9]*(:[1-9][0-9]*)?)?$ ]] \
  || die "--concurrency must be START[:END[:STEP]], got '$concurrency'"
[ -z "$window" ] || [ -z "$count" ] || die "--window and --count are two ways to size a measurement: give one"
[ -z "$compare" ] || [ -f "$compare" ] \
  || die "--compare $compare: no such file (perf/bench_engine.py --out DIR writes DIR/engine_latency.json)"
if ((quick)); then
  # Count windows (>= 1 s each) finish fast whatever the model's speed; no stability check to speak of: on a busy
  # 2-core machine three windows of a 13 ms model were seen to differ by more than 2x (100 % rejected points).
  # Good for "does it serve, roughly how fast", not for tuning.
  [ -n "$window" ] || count=${count:-5}
  stability=${stability:-1000}
fi
out=${out:-$ROOT/perf/out/served-$(date +%Y%m%d-%H%M%S)}

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c 'import mnv3kit.perf, tritonclient.http, tritonclient.grpc' 2>/dev/null \
  || die "$PY cannot import the kit and tritonclient: create the environment with \`make venv\` (or set PYTHON)"

# perf_analyzer arguments shared by every point (recorded in the report as the exact command). Each point's input:
# an encoded-image model's real files (a JSON), zeros for the others: perf_analyzer's default random data fills FP32
# tensors with random bytes, NaN and Inf included, which the kit's models refuse per request.
pa=(--concurrency-range "$concurrency" --shared-memory "$shm")
[ -z "$window" ] || pa+=(--measurement-interval "$window")
[ -z "$count" ] || pa+=(--measurement-mode count_windows --measurement-request-count "$count")
[ -z "$stability" ] || pa+=(--stability-percentage "$stability")
[ -z "$metrics" ] || pa+=(--collect-metrics --metrics-url "$metrics")
pa+=("${extra[@]}")

setup=$("$PY" -m mnv3kit.perf --prog "$PROG" prepare --protocol "$protocol" --out "$out" --warmup "$warmup" \
  ${url:+--url "$url"} ${models:+--models "$models"} ${images:+--images "$images"} ${batches:+--batch-sizes "$batches"} -- "${pa[@]}") || exit 2
eval "$setup"  # PERF_ANALYZER, PA_LD_LIBRARY_PATH, URL (normalized), PA_HEADER (admin key), POINTS (model TAB batch TAB csv TAB log TAB data)

# the admin key as a header, outside "${pa[@]}": those arguments are recorded in the report
auth=()
[ -z "$PA_HEADER" ] || auth=(-H "$PA_HEADER")

total=$(wc -l <<<"$POINTS")
n=0
while IFS=$'\t' read -r model batch csv log data; do
  n=$((n + 1))
  printf '[%d/%d] %s batch %s ... ' "$n" "$total" "$model" "$batch" >&2
  rm -f "$csv"  # a stale CSV must not pass for this run's measurement
  if LD_LIBRARY_PATH=$PA_LD_LIBRARY_PATH "$PERF_ANALYZER" -m "$model" -b "$batch" -u "$URL" -i "$protocol" \
       "${pa[@]}" "${auth[@]}" --input-data "${data:-zero}" -f "$csv" --verbose-csv >"$log" 2>&1 </dev/null && [ -s "$csv" ]; then
    echo "ok" >&2
  else
    echo "FAILED: $(grep -v '^[[:space:]]*$' "$log" | tail -n 1)" >&2
  fi
done <<<"$POINTS"

"$PY" -m mnv3kit.perf --prog "$PROG" report "$out" ${compare:+--compare "$compare"}
