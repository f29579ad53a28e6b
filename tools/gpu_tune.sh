#!/usr/bin/env bash
# The tuner on a GPU host (docs/tune.md): builds MobileNetV3 for the local target once per torch runtime (TorchScript
# and --runtime compiled), then searches KIND_GPU serving configurations of the torch models (pt: FP32 input, u8:
# UINT8 pixels) in the embedded Triton under a p99 budget, with perf_analyzer over gRPC: runtime, input, CUDA graphs,
# instances, max batch, preferred sizes, queue delay. Then serves the winner and checks every answer under sustained
# load (the soak) before its speed is reported. Writes perf/results/gpu-tune-<date>/ (report.md, tune.json,
# pareto.png, soak/; the winner repository stays in /tmp/mnv3kit-tuned).
#   bash tools/gpu_tune.sh          (after installing the kit on the GPU host; see docs/gpu.md)
# Env: ARCH (large), MODELS (pt,u8), RUNTIMES (torchscript,compiled), GRAPHS (none,preferred), PRECISION (fp16),
# P99_MS (20), CONCURRENCY (16:64:24), INSTANCES (1,2), MAX_BATCH (16,64), DELAYS_US (0,100), BUDGET_MIN (5),
# SOAK_LEVELS (1,16,64), SOAK_SECONDS (10), PY (python3). Exit status: the soak's (0: every answer right).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-large}
PY=${PY:-$(command -v python3)}
RES=${RES:-perf/results/gpu-tune-$(date -u +%Y%m%d-%H%M)}
WINNER=/tmp/mnv3kit-tuned
mkdir -p "$RES"
exec > >(tee "$RES/run.log") 2>&1

source tools/gpu_common.sh

"$PY" -m mnv3kit.cli.tune --arch "$ARCH" -m "${MODELS:-pt,u8}" --torch-runtimes "${RUNTIMES:-torchscript,compiled}" \
  --cuda-graphs "${GRAPHS:-none,preferred}" --precision "${PRECISION:-fp16}" --p99-ms "${P99_MS:-20}" \
  -c "${CONCURRENCY:-16:64:24}" -i grpc --instances "${INSTANCES:-1,2}" --max-batch-sizes "${MAX_BATCH:-16,64}" \
  --queue-delays-us "${DELAYS_US:-0,100}" --count 300 --confirm 1 --budget-min "${BUDGET_MIN:-5}" -o "$RES" \
  --winner "$WINNER" || true
rm -rf "$RES"/csv "$RES"/logs "$RES"/candidates 2>/dev/null || true

if [ -f "$WINNER/manifest.json" ]; then
  echo "== soak: the winner under sustained load, every answer checked"
  MODEL=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["models"][0])' "$WINNER/manifest.json")
  start_server "$WINNER" "$RES/serve.log"
  soak "$RES/soak" "$WINNER" "$MODEL" "${SOAK_LEVELS:-1,16,64}"
  kill -TERM $server; wait $server || true; trap - EXIT
else
  echo "no winner repository: nothing to soak"
  soak_status=1
fi
if [ -n "${OUT:-}" ]; then
  tar -C "$(dirname "$RES")" -czf "$OUT/gpu-tune.tar.gz" "$(basename "$RES")"
fi
exit $soak_status
