#!/usr/bin/env bash
# The tuner on a GPU host (docs/tune.md): builds MobileNetV3 for the local target, then searches KIND_GPU serving
# configurations of the TorchScript model in the embedded Triton under a p99 budget, with perf_analyzer over gRPC;
# writes perf/results/gpu-tune-<date>/ (report.md, tune.json, pareto.png; the winner repository stays in /tmp).
#   bash tools/gpu_tune.sh          (after installing the kit on the GPU host; see docs/gpu.md)
# Env: ARCH (large), P99_MS (20), CONCURRENCY (16:64:24), BUDGET_MIN (6), PY (python3),
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-large}
P99_MS=${P99_MS:-20}
CONCURRENCY=${CONCURRENCY:-16:64:24}
BUDGET_MIN=${BUDGET_MIN:-6}
PY=${PY:-$(command -v python3)}
RES=${RES:-perf/results/gpu-tune-$(date -u +%Y%m%d-%H%M)}
mkdir -p "$RES"
exec > >(tee "$RES/run.log") 2>&1

source tools/gpu_common.sh

"$PY" -m mnv3kit.cli.tune --arch "$ARCH" --p99-ms "$P99_MS" -c "$CONCURRENCY" -i grpc -m pt \
  --instances 1,2,4 --max-batch-sizes 8,32,64 --queue-delays-us 0,100,1000 --count 300 --confirm 1 \
  --budget-min "$BUDGET_MIN" -o "$RES" --winner /tmp/mnv3kit-tuned || true
rm -rf "$RES"/csv "$RES"/logs "$RES"/candidates 2>/dev/null || true
if [ -n "${OUT:-}" ]; then
  tar -C "$(dirname "$RES")" -czf "$OUT/gpu-tune.tar.gz" "$(basename "$RES")"
fi
