#!/usr/bin/env bash
# Issue 7 in ONE call on the GPU machine of the `device` tool (Python 3.12 + torch + CUDA there, no Triton):
# unpack .device/carry.tar.xz (perf/make_gpu_carry.sh), build a local-target repository for KIND_GPU, measure the raw
# in-process model (perf/raw_gpu.py), start the embedded Triton, run perf_analyzer sweeps (the seed's batch 1..8
# table, then dynamic-batching concurrency sweeps up to max batch 64) against it, and write the reports with the
# served / raw ratio under perf/results/gpu-<date>/ ($OUT/gpu-results.tar.gz when run through the device tool).
#   device run:  command "bash perf/gpu_run.sh", carry [".device/carry.tar.xz"]
# Env: ARCH (large), INSTANCES (2), QUEUE_DELAY_US (0: a lone request never waits; busy instances still
# batch whatever queued meanwhile), WINDOW_MS (1500).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-large}
INSTANCES=${INSTANCES:-2}
WINDOW_MS=${WINDOW_MS:-1500}
PY=${PY:-$(command -v python3)}
STAMP=$(date -u +%Y%m%d-%H%M)
RES=perf/results/gpu-$STAMP
REPO=/tmp/mnv3kit-repo-gpu
mkdir -p "$RES"
exec > >(tee "$RES/run.log") 2>&1

CARRY=/tmp/mnv3kit-carry
if [ ! -d "$CARRY" ]; then
  mkdir -p "$CARRY" && tar -C "$CARRY" -xJf .device/carry.tar.xz
fi
ln -sf "$(ls "$CARRY"/site/nvidia_pytriton.libs/libcudart-*.so.12*)" "$CARRY/lib/libcudart.so.12"
export PYTHONPATH="$CARRY/site${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$CARRY/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PERF_ANALYZER="$CARRY/site/bin/perf_analyzer" PYTHON="$PY" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c 'import torch, numpy, google.protobuf as pb; print("torch", torch.__version__, "numpy", numpy.__version__, "protobuf", pb.__version__)'

echo "== build (arch $ARCH, KIND_GPU x$INSTANCES, max batch 64, fp16, channels_last, CUDA graphs)"
graphs=1,2,4,8,16,32,64
"$PY" build_repo.py --target local --arch "$ARCH" --models pt,u8 -o "$REPO" --instance-kind KIND_GPU \
  --instance-count "$INSTANCES" --max-batch-size 64 --preferred-batch-sizes 8,16,32,64 --queue-delay-us "${QUEUE_DELAY_US:-0}" \
  --precision fp16 --channels-last --cuda-graph-batches "$graphs"

echo "== raw in-process"
"$PY" perf/raw_gpu.py --repo "$REPO" --batch-sizes 1-8,16,32,64 --out "$RES"

echo "== serve"
"$PY" serve.py --repo "$REPO" --timeout 300 > "$RES/serve.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "ready:" "$RES/serve.log" && break; kill -0 $server || { cat "$RES/serve.log"; exit 1; }; sleep 0.5; done
head -n 2 "$RES/serve.log"

perf() { bash perf/run_perf.sh -u localhost:8001 -i grpc -p "$WINDOW_MS" --compare "$RES/raw_gpu.json" \
  --metrics localhost:8002/metrics "$@" || true; }
echo "== seed table: batch 1..8, concurrency 1"
perf -m mobilenetv3_pt,mobilenetv3_u8 -b 1-8 -o "$RES/seed"
echo "== dynamic batching: batch-1 requests, concurrency 1..128, system shared memory"
perf -m mobilenetv3_pt,mobilenetv3_u8 -b 1 -c 1:129:32 --shared-memory system -o "$RES/dynamic"
echo "== large requests: batch 64, concurrency 1..4, system shared memory"
perf -m mobilenetv3_pt,mobilenetv3_u8 -b 64 -c 1:4 --shared-memory system -o "$RES/batch64"
curl -s localhost:8002/metrics > "$RES/metrics.txt" || true

kill -TERM $server; wait $server || true; trap - EXIT
"$PY" perf/gpu_report.py "$RES" || true
if [ -n "${OUT:-}" ]; then
  tar -C perf/results -czf "$OUT/gpu-results.tar.gz" "gpu-$STAMP"
  cp "$RES"/*.md "$OUT/" 2>/dev/null || true
fi
