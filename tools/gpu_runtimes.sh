#!/usr/bin/env bash
# TorchScript vs the compiled runtime (torch.export + TorchInductor), one serving config, on one GPU: builds Large
# twice (--runtime torchscript and compiled, the same flags otherwise), serves both at once (two embedded servers,
# ports 8000-8002 and 8100-8102), runs the soak on both (every answer checked), then perf_analyzer on each model of
# each server, the runtimes alternating, ROUNDS rounds. Writes perf/results/gpu-runtimes-<date>/ (run.log, soak-*/,
# pa-*.txt; the report is written by hand from them).
#   bash tools/gpu_runtimes.sh          (after installing the kit on the GPU host; see docs/gpu.md)
# Env: MODELS (pt,u8), BUILD_FLAGS (the winner of gpu-tune-20261206-0226: 2 instances, max batch 8, preferred 4,8,
# 100 us, FP16, CUDA graphs 4,8), CONCURRENCY (32), BATCH (1: images per perf_analyzer request; more lowers the
# client's and gRPC's cost per image, so that a larger max batch size is filled by fewer requests), ROUNDS (2),
# SOAK_LEVELS (1,16,64), SOAK_SECONDS (10), PY (python3).
# Exit status: the soaks' (0: every answer right, no failed request).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(command -v python3)}
MODELS=${MODELS:-pt,u8}
BUILD_FLAGS=${BUILD_FLAGS:---instance-kind KIND_GPU --instance-count 2 --max-batch-size 8 --preferred-batch-sizes 4,8 \
--queue-delay-us 100 --precision fp16 --cuda-graph-batches 4,8}
RES=${RES:-perf/results/gpu-runtimes-$(date -u +%Y%m%d-%H%M)}
mkdir -p "$RES"
exec > >(tee "$RES/run.log") 2>&1
date -u
source tools/gpu_common.sh

declare -A PORT=([torchscript]=8000 [compiled]=8100)
for rt in torchscript compiled; do
  # shellcheck disable=SC2086  # BUILD_FLAGS is a list of flags
  "$PY" build_repo.py --target local --arch large --models "$MODELS" -o "/tmp/mnv3kit-$rt" --runtime $rt $BUILD_FLAGS
done
for rt in torchscript compiled; do
  start_server "/tmp/mnv3kit-$rt" "$RES/serve-$rt.log" "${PORT[$rt]}"
done
for rt in torchscript compiled; do
  echo "== soak: $rt"
  soak "$RES/soak-$rt" "/tmp/mnv3kit-$rt" "$MODELS" "${SOAK_LEVELS:-1,16,64}" $((PORT[$rt] + 1))
done

# perf_analyzer as the kit finds it (beside PY, else PATH), with the CUDA runtime wheel's libraries it links
PA=$("$PY" -c 'from mnv3kit.perf import find_perf_analyzer; print(find_perf_analyzer())')
LD_LIBRARY_PATH=$("$PY" -c 'from mnv3kit.perf import perf_analyzer_env as e; print(e()["LD_LIBRARY_PATH"])')
export LD_LIBRARY_PATH
names=$("$PY" -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["models"]))' \
  /tmp/mnv3kit-torchscript/manifest.json)
for round in $(seq "${ROUNDS:-2}"); do
  order="torchscript compiled"; [ $((round % 2)) = 0 ] && order="compiled torchscript"
  for model in $names; do
    for rt in $order; do
      out="$RES/pa-$rt-$model-r$round.txt"
      "$PA" -m "$model" -i grpc -u "localhost:$((PORT[$rt] + 1))" --concurrency-range "${CONCURRENCY:-32}" \
        -b "${BATCH:-1}" --input-data zero --shared-memory none -p 3000 --max-trials 4 \
        -H "triton-grpc-protocol-admin-key:$TRITON_ADMIN_KEY" > "$out" 2>&1 || true
      echo "$rt $model round $round: $(grep -E 'Throughput:' "$out" | tail -1 | xargs)," \
        "$(grep -E 'p99 latency' "$out" | tail -1 | xargs)"
    done
  done
done
date -u
[ "$soak_status" = 0 ] || echo "a soak found wrong answers or failed requests: these speeds are not results"
exit "$soak_status"
