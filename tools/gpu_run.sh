#!/usr/bin/env bash
# The GPU report in one run on one GPU host: build a --runtime compiled repository for KIND_GPU (TorchInductor
# compiles on this GPU during the build: the cold start, recorded in the manifest), measure the raw variants
# in-process (perf/raw_gpu.py: torchvision's eager model as the anchor, the kit's TorchScript and compiled
# artifacts), serve the repository with the embedded Triton (the warm start, from the compile cache), check the
# served answers against the build's eager FP32 logits (perf/served_parity.py) and under sustained load (the soak,
# every answer checked, at SOAK_LEVELS), then run perf_analyzer over gRPC (batch 1 latency, batch 64 with system and
# CUDA shared memory, dynamic batching), and write perf/results/gpu-<date>/REPORT.md with every ratio taken against
# the fastest raw variant. Exit status: the soak's (nonzero when an answer was wrong or a request failed).
#   bash tools/gpu_run.sh            (after installing the kit's requirements on the GPU host; see docs/gpu.md)
# Env: ARCH (large), INSTANCES (2), GRAPHS (1,4,8,16,32,64), WINDOW_MS (1000), SOAK_LEVELS (1,8,64,256),
# SOAK_SECONDS (10 per level), PY (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-large}
INSTANCES=${INSTANCES:-2}
GRAPHS=${GRAPHS:-1,4,8,16,32,64}
WINDOW_MS=${WINDOW_MS:-1000}
PY=${PY:-$(command -v python3)}
STAMP=$(date -u +%Y%m%d-%H%M)
RES=${RES:-perf/results/gpu-$STAMP}
REPO=${REPO:-/tmp/mnv3kit-repo-gpu}
CACHE=${CACHE:-/tmp/mnv3kit-compile-cache}
mkdir -p "$RES"
exec > >(tee "$RES/run.log") 2>&1

source tools/gpu_common.sh

echo "== build: --runtime compiled, arch $ARCH, KIND_GPU x$INSTANCES, max batch 64, fp16, channels_last, graphs $GRAPHS"
rm -rf "$CACHE"
"$PY" build_repo.py --target local --arch "$ARCH" --models pt,u8 -o "$REPO" --runtime compiled \
  --instance-kind KIND_GPU --instance-count "$INSTANCES" --max-batch-size 64 --preferred-batch-sizes 16,32,64 \
  --queue-delay-us 0 --precision fp16 --channels-last --cuda-graph-batches "$GRAPHS" --compile-cache "$CACHE"

echo "== raw in-process"
"$PY" perf/raw_gpu.py --repo "$REPO" -b 1,8,64 -o "$RES"

echo "== serve (warm start: TorchInductor's cache from the build)"
started=$SECONDS
start_server "$REPO" "$RES/serve.log"
echo "ready after $((SECONDS - started)) s" | tee "$RES/warm_start.txt"
photos=$("$PY" -c 'from mnv3kit.parity import sample_photos; print(" ".join(map(str, sample_photos())))')
for model in mobilenetv3_pt mobilenetv3_u8; do  # served answers, not only speed: both contracts, same classes
  "$PY" client/classify.py $photos -m $model -i grpc -u localhost:8001 -k 2 | tee -a "$RES/classify.txt"
done
"$PY" perf/served_parity.py --repo "$REPO" -u localhost:8001 | tee "$RES/served_parity.txt" || true
echo "== soak: every answer checked under sustained load, before any speed is measured"
soak "$RES/soak" "$REPO" pt,u8 "${SOAK_LEVELS:-1,8,64,256}"

perf() { bash perf/run_perf.sh -u localhost:8001 -i grpc -p "$WINDOW_MS" --compare "$RES/raw_gpu.json" \
  --metrics localhost:8002/metrics "$@" || true; }
echo "== batch 1 and 8, concurrency 1"
perf -m mobilenetv3_pt,mobilenetv3_u8 -b 1,8 -o "$RES/latency"
perf -m mobilenetv3_pt -b 1 --shared-memory cuda -o "$RES/latency-cudashm"
echo "== batch 64, system and CUDA shared memory"
perf -m mobilenetv3_pt,mobilenetv3_u8 -b 64 -c 4 --shared-memory system -o "$RES/batch64"
perf -m mobilenetv3_pt -b 64 -c 4:8:4 --shared-memory cuda -o "$RES/batch64-cudashm"
echo "== dynamic batching: batch-1 requests at rising concurrency, system shared memory"
perf -m mobilenetv3_u8 -b 1 -c 16:64:48 --shared-memory system -o "$RES/dynamic"
curl -s localhost:8002/metrics > "$RES/metrics.txt" || true

kill -TERM $server; wait $server || true; trap - EXIT
cp "$REPO/manifest.json" "$RES/manifest.json"
"$PY" perf/gpu_report.py "$RES" || true
if [ -n "${OUT:-}" ]; then
  tar -C "$(dirname "$RES")" -czf "$OUT/gpu-results.tar.gz" "$(basename "$RES")"
  cp "$RES"/REPORT.md "$OUT/" 2>/dev/null || true
fi
exit $soak_status
