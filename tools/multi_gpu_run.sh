#!/usr/bin/env bash
# Multi-GPU scaling on one host, in ONE call on a 2-GPU machine of the `device` tool (about 5 minutes):
#   (a) one Triton, instance_group on GPU 0 only                         -> the one-GPU reference
#   (b) one Triton, instance_group spanning GPUs 0 and 1 (--gpus 0,1)
#   (c) two Tritons, one per GPU (CUDA_VISIBLE_DEVICES), the load spread client-side: one perf_analyzer per
#       server, started together, their throughputs summed (no gRPC load balancer can run on that machine)
# Every point: mobilenetv3_u8 (FP16, channels_last, CUDA graph at 64), batch-64 requests over gRPC with system
# shared memory, fixed measurement windows. Writes perf/results/multigpu-<date>/REPORT.md (perf/multigpu_report.py)
# with the scaling vs (a) measured in the same call ($OUT/multigpu-results.tar.gz through the device tool).
#   bash tools/multi_gpu_run.sh            (on a host with 2 GPUs and the kit's requirements)
# Env: ARCH (large), INSTANCES per GPU (2), CONCURRENCY per server (4:16:4 for a/b; c uses half of each level per
# server), WINDOW_MS (2000).
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "multi_gpu_run.sh: error: $*" >&2; exit 2; }
[ $# -eq 0 ] || die "takes no arguments (settings come from ARCH, INSTANCES, CONCURRENCY, WINDOW_MS)"
ARCH=${ARCH:-large}
INSTANCES=${INSTANCES:-2}
CONCURRENCY=${CONCURRENCY:-4:16:4}
WINDOW_MS=${WINDOW_MS:-2000}
[[ $INSTANCES =~ ^[1-9][0-9]*$ ]] || die "INSTANCES must be a positive integer, got '$INSTANCES'"
[[ $WINDOW_MS =~ ^[1-9][0-9]*$ ]] || die "WINDOW_MS must be a positive integer (ms), got '$WINDOW_MS'"
[[ $CONCURRENCY =~ ^([1-9][0-9]*):([1-9][0-9]*):([1-9][0-9]*)$ ]] \
  || die "CONCURRENCY must be START:END:STEP, got '$CONCURRENCY'"
levels=$(seq "${BASH_REMATCH[1]}" "${BASH_REMATCH[3]}" "${BASH_REMATCH[2]}")
command -v nvidia-smi >/dev/null || die "needs a machine with 2 NVIDIA GPUs (nvidia-smi not found)"
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
[ "$gpus" -ge 2 ] || die "needs 2 GPUs, this machine has $gpus"
PY=${PY:-$(command -v python3)}
STAMP=$(date -u +%Y%m%d-%H%M)
RES=perf/results/multigpu-$STAMP
mkdir -p "$RES"
exec > >(tee "$RES/run.log") 2>&1

source tools/gpu_common.sh
PA=${PERF_ANALYZER:-$(command -v perf_analyzer || true)}
[ -n "$PA" ] || die "perf_analyzer not found: install the kit's requirements (tritonclient[all]) or set PERF_ANALYZER"
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee "$RES/gpus.txt"
nvidia-smi topo -m > "$RES/topology.txt" 2>&1 || true

echo "== build: arch $ARCH, mobilenetv3_u8, KIND_GPU x$INSTANCES per GPU, max batch 64, fp16, channels_last, CUDA graph 64"
build() {  # build DIR GPUS
  "$PY" build_repo.py --target local --arch "$ARCH" --models u8 -o "$1" --instance-kind KIND_GPU \
    --instance-count "$INSTANCES" --gpus "$2" --max-batch-size 64 --preferred-batch-sizes 64 --queue-delay-us 0 \
    --precision fp16 --channels-last --cuda-graph-batches 64 > "$RES/build-${2/,/}.log" 2>&1
}
build /tmp/mnv3kit-repo-gpu0 0 & b0=$!
build /tmp/mnv3kit-repo-gpu01 0,1 & b1=$!
wait $b0 || { tail -n 20 "$RES/build-0.log"; exit 1; }
wait $b1 || { tail -n 20 "$RES/build-01.log"; exit 1; }

servers=()
stop_all() { for pid in "${servers[@]}"; do kill -TERM "$pid" 2>/dev/null; done
             for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done; servers=(); }
trap stop_all EXIT
serve() {  # serve NAME REPO CUDA_VISIBLE_DEVICES PORT_BASE
  CUDA_VISIBLE_DEVICES=$3 "${SERVER_PY:-$PY}" serve.py --repo "$2" --http-port "$4" --grpc-port $(($4 + 1)) \
    --metrics-port $(($4 + 2)) --timeout 300 > "$RES/serve-$1.log" 2>&1 &
  servers+=($!)
}
wait_ready() {  # wait_ready NAME...
  for name in "$@"; do
    for _ in $(seq 600); do
      grep -q "ready:" "$RES/serve-$name.log" && break
      grep -q "serve.py: error" "$RES/serve-$name.log" && { cat "$RES/serve-$name.log"; exit 1; }
      sleep 0.5
    done
    grep -q "ready:" "$RES/serve-$name.log" || { echo "server $name not ready"; cat "$RES/serve-$name.log"; exit 1; }
    head -n 1 "$RES/serve-$name.log"
  done
}
# perf_analyzer reads Triton's statistics, an admin API: the key in the gRPC header the kit defines (mnv3kit.spec)
admin_header=$("$PY" -c 'import os; from mnv3kit.spec import admin_headers
print(*(f"{k}:{v}" for k, v in admin_headers(os.environ["TRITON_ADMIN_KEY"], "grpc").items()))')
measure() {  # measure DIR GRPC_PORT CONCURRENCY: one perf_analyzer point, fixed windows, timestamps recorded
  mkdir -p "$1"
  date +%s.%N > "$1/c$3.start"
  "$PA" -m mobilenetv3_u8 -b 64 -u "localhost:$2" -i grpc --shared-memory system --concurrency-range "$3" \
    -p "$WINDOW_MS" -s 100 -r 6 -H "$admin_header" -f "$1/c$3.csv" --verbose-csv > "$1/c$3.log" 2>&1 \
    || echo "point $1 c$3 failed"
  date +%s.%N > "$1/c$3.end"
}

echo "== (a) one Triton, GPU 0 only"
serve single /tmp/mnv3kit-repo-gpu0 0,1 18000
wait_ready single
for c in $levels; do measure "$RES/a-single" 18001 "$c"; done
stop_all

echo "== (b) one Triton, instance_group on GPUs 0 and 1"
serve spanning /tmp/mnv3kit-repo-gpu01 0,1 18000
wait_ready spanning
for c in $levels; do measure "$RES/b-spanning" 18001 "$c"; done
curl -s localhost:18002/metrics | grep -E '^nv_gpu_utilization|^nv_inference_count' > "$RES/b-metrics.txt" || true
stop_all

echo "== (c) two Tritons, one per GPU, one perf_analyzer each at the same time"
serve gpu0 /tmp/mnv3kit-repo-gpu0 0 18100
serve gpu1 /tmp/mnv3kit-repo-gpu0 1 18200
wait_ready gpu0 gpu1
for c in $levels; do
  half=$(( (c + 1) / 2 ))
  measure "$RES/c-pair-gpu0" 18101 "$half" & m0=$!
  measure "$RES/c-pair-gpu1" 18201 "$half" & m1=$!
  wait $m0 $m1
done
stop_all
trap - EXIT

"$PY" perf/multigpu_report.py "$RES" || true
if [ -n "${OUT:-}" ]; then
  tar -C perf/results -czf "$OUT/multigpu-results.tar.gz" "multigpu-$STAMP"
  cp "$RES"/REPORT.md "$OUT/" 2>/dev/null || true
fi
