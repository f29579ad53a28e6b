#!/usr/bin/env bash
# The image model on one GPU host, in one run: build a local-target repository with mobilenetv3_image on KIND_GPU
# (Large, FP16, --runtime compiled with tools/gpu_run.sh's kernel cache and batch sizes; fused into one python
# model by default, IMAGE_MODEL=ensemble for the two-model ensemble), serve it, then
#   0. the GPU JPEG decoders side by side: pixels vs Pillow's and speed (perf/gpu_decoders.py), then
#      the build's accuracy gate: GPU JPEG decode vs Pillow on 512 photo views (the manifest's gpu_decode);
#   1. parity: GPU preprocessing + classifier vs the client-side path (perf/gpu_image_parity.py);
#   2. the soak: the image model and its classifier under sustained load at SOAK_LEVELS, every answer checked;
#   3. served JPEG -> logits vs in-process GPU decode + classifier, 500x375 JPEGs, batch 64 and p50 at batch 1
#      (perf/bench_image.py).
# Reports under perf/results/gpu-image-<date>/ (REPORT.md: perf/gpu_report.py). Exit status: the soak's.
#   bash tools/gpu_image.sh        (after installing the kit on the GPU host; see docs/gpu.md)
# Env: ARCH (large), CLASSIFIER (u8: the ensemble hands the classifier uint8 pixels, a quarter of FP32's bytes;
# pt: normalized FP32), IMAGE_MODEL (fused | ensemble), INSTANCES (2), CONCURRENCY (128: single-file requests in
# flight, the batcher forms the 64s), BENCH_SECONDS (10: per in-process point), DECODERS=0 / PARITY=0 (skip steps 0 and
# 1), SOAK_LEVELS (1,8,128,256), GRAPHS, CACHE and SOAK_SECONDS as in tools/gpu_run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-large}
CLASSIFIER=${CLASSIFIER:-u8}
IMAGE_MODEL=${IMAGE_MODEL:-fused}
INSTANCES=${INSTANCES:-2}
GRAPHS=${GRAPHS:-1,4,8,16,32,64}
CACHE=${CACHE:-/tmp/mnv3kit-compile-cache}
PY=${PY:-$(command -v python3)}
STAMP=$(date -u +%Y%m%d-%H%M)
RES=perf/results/gpu-image-$STAMP
REPO=/tmp/mnv3kit-repo-gpu-image
mkdir -p "$RES"
exec > >(tee "$RES/run.log") 2>&1

source tools/gpu_common.sh

if [ "${DECODERS:-1}" != 0 ]; then
  echo "== GPU JPEG decoders: pixels vs Pillow's and speed"
  "$PY" perf/gpu_decoders.py --device cuda:0 -o "$RES/decoders" || true
fi

echo "== build (arch $ARCH, $IMAGE_MODEL image model -> $CLASSIFIER, --runtime compiled, KIND_GPU x$INSTANCES, max batch 64, fp16)"
"$PY" build_repo.py --target local --arch "$ARCH" --models "$CLASSIFIER" --ensemble "$CLASSIFIER" -o "$REPO" \
  --image-model "$IMAGE_MODEL" --instance-kind KIND_GPU \
  --instance-count "$INSTANCES" --max-batch-size 64 --preferred-batch-sizes 16,32,64 --queue-delay-us 0 \
  --runtime compiled --precision fp16 --channels-last --cuda-graph-batches "$GRAPHS" --compile-cache "$CACHE"

cp "$REPO/manifest.json" "$RES/manifest.json"  # with the decode gate's verdict (gpu_decode)

echo "== serve"
start_server "$REPO" "$RES/serve.log"
head -n 2 "$RES/serve.log"

echo "== served classifier vs the build's eager FP32 logits"
"$PY" perf/served_parity.py --repo "$REPO" -u localhost:8001 | tee "$RES/served_parity.txt" || true
if [ "${PARITY:-1}" != 0 ]; then
  echo "== parity: GPU path vs client-side preprocessing"
  "$PY" perf/gpu_image_parity.py --repo "$REPO" -u localhost:8001 -o "$RES/parity" || true
fi
echo "== soak: every answer checked under sustained load, before any speed is measured"
soak "$RES/soak" "$REPO" "image,$CLASSIFIER" "${SOAK_LEVELS:-1,8,128,256}"

echo "== served JPEG -> logits vs in-process (500x375 JPEGs, batch 64, p50 at batch 1)"
"$PY" perf/bench_image.py --repo "$REPO" --device cuda:0 -b 64 -c "${CONCURRENCY:-128}" --jpeg-size 500x375 \
  --seconds "${BENCH_SECONDS:-10}" -u localhost:8001 -i grpc -o "$RES/bench" -- -p 2000 || true
curl -s localhost:8002/metrics > "$RES/metrics.txt" || true

kill -TERM $server; wait $server || true; trap - EXIT
"$PY" perf/gpu_report.py "$RES" || true
if [ -n "${OUT:-}" ]; then
  tar -C perf/results -czf "$OUT/gpu-image-results.tar.gz" "gpu-image-$STAMP"
  cp "$RES"/REPORT.md "$OUT/" 2>/dev/null || true
fi
exit $soak_status
