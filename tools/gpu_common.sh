# Sourced by tools/gpu_run.sh, gpu_image.sh, gpu_tune.sh, gpu_runtimes.sh and multi_gpu_run.sh once PY is set: an
# admin key in TRITON_ADMIN_KEY, the GPU and torch versions in the log, and start_server REPO LOG [PORT], which starts
# serve.py on REPO (HTTP on PORT, default 8000; gRPC PORT+1, metrics PORT+2; tritonserver's own log beside LOG) in
# the background (under SERVER_PY when set, else PY), stops it on exit, and returns once Triton answers
# /v2/health/ready; a server that dies first prints its log and fails the script; and soak DIR REPO MODELS LEVELS
# [GRPC_PORT], the load truth.
export PYTHON="$PY" PYTHONUNBUFFERED=1
# one admin key for the run: serve.py guards the statistics API with it, and perf_analyzer reads statistics
export TRITON_ADMIN_KEY=${TRITON_ADMIN_KEY:-$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" - <<'PYEOF'
import importlib.metadata as md
import torch

def version(dist):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "missing"

# torchvision: the raw anchor's model; nvImageCodec: the image path's decoder (torchvision's nvJPEG without it)
print("torch", torch.__version__, "torchvision", version("torchvision"), "nvimgcodec",
      version("nvidia-nvimgcodec-cu13") if version("nvidia-nvimgcodec-cu13") != "missing" else version("nvidia-nvimgcodec-cu12"))
PYEOF

servers=""  # every server started, stopped on exit (a second server on other ports runs beside the first)
start_server() {
  local port=${3:-8000}
  "${SERVER_PY:-$PY}" serve.py --repo "$1" --http-port "$port" --grpc-port $((port + 1)) --metrics-port $((port + 2)) \
    --timeout 600 --log-file "$(dirname "$2")/tritonserver${3:+-$3}.log" > "$2" 2>&1 &
  server=$!
  servers="$servers $server"
  trap 'kill -TERM $servers 2>/dev/null || true; wait $servers 2>/dev/null || true' EXIT
  "$PY" -m mnv3kit.cli.triton ready -u "localhost:$port" --wait 900 --pid $server || { cat "$2"; exit 1; }
}

# soak DIR REPO MODELS LEVELS [GRPC_PORT]: sustained load on MODELS of the running server (gRPC, GRPC_PORT or
# 8001), every answer checked against in-process FP32 logits of REPO's artifacts (python -m mnv3kit.cli.perf soak),
# SOAK_SECONDS (10) per level. Run before any speed is measured: a speed is only reported with its answers checked.
# Writes DIR/soak.md, DIR/soak.json and DIR/exit_status (0: no wrong answer, no failed request; 1: some; 2: the soak itself broke);
# the script carries on to measure and report, and ends with soak_status (the soak's exit status) so that a
# failing soak fails the run.
soak_status=0
soak() {
  mkdir -p "$1"
  local rc=0
  "$PY" -m mnv3kit.cli.perf soak --repo "$2" -u "localhost:${5:-8001}" -m "$3" -c "$4" \
    --seconds "${SOAK_SECONDS:-10}" -o "$1" || rc=$?
  echo "$rc" > "$1/exit_status"
  echo "soak exit status: $rc (0: every answer right, no failed request)"
  [ "$rc" = 0 ] || soak_status=$rc
}
