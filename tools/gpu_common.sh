# Sourced by tools/gpu_run.sh, gpu_image.sh, gpu_tune.sh and multi_gpu_run.sh once PY is set: the carry's
# environment when CARRY names one (tools/gpu_carry_env.sh), an admin key in TRITON_ADMIN_KEY, the GPU and torch
# versions in the log, and start_server REPO LOG, which starts serve.py on REPO in the background (under SERVER_PY
# when the carry set it), stops it on exit, and returns once Triton answers /v2/health/ready on port 8000; a server
# that dies first prints its log and fails the script.
[ -z "${CARRY:-}" ] || source tools/gpu_carry_env.sh "$CARRY"
export PYTHON="$PY" PYTHONUNBUFFERED=1
# one admin key for the run: serve.py guards the statistics API with it, and perf_analyzer reads statistics
export TRITON_ADMIN_KEY=${TRITON_ADMIN_KEY:-$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'

start_server() {
  "${SERVER_PY:-$PY}" serve.py --repo "$1" --timeout 600 > "$2" 2>&1 &
  server=$!
  trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
  "$PY" -m mnv3kit.triton ready -u localhost:8000 --wait 900 --pid $server || { cat "$2"; exit 1; }
}
