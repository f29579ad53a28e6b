# Sourced by the GPU scripts on the `device` tool's machine: unpacks .device/carry.tar.xz (perf/make_gpu_carry.sh)
# once and points Python, the loader and perf/run_perf.sh at it. Needs PY (the Python to run).
CARRY=/tmp/mnv3kit-carry
if [ ! -d "$CARRY" ]; then
  mkdir -p "$CARRY" && tar -C "$CARRY" -xJf .device/carry.tar.xz
fi
ln -sf "$(ls "$CARRY"/site/nvidia_pytriton.libs/libcudart-*.so.12*)" "$CARRY/lib/libcudart.so.12"
export PYTHONPATH="$CARRY/site${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$CARRY/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PERF_ANALYZER="$CARRY/site/bin/perf_analyzer" PYTHON="$PY" PYTHONUNBUFFERED=1
