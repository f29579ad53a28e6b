# Sourced by tools/gpu_run.sh on a GPU host without the kit's server-side requirements: unpacks the archive made by
# tools/make_gpu_carry.sh (the Triton server of nvidia-pytriton with the Python 3.12 stub, perf_analyzer,
# tritonclient, onnxsim) and points Python, the loader and run_perf.sh at it.
#   source tools/gpu_carry_env.sh .device/carry.tar.xz
# The python-backend stub of nvidia-pytriton 0.7.0 is built against numpy 1.x: under numpy 2 its tensors arrive as
# garbage and leave empty (seen on the GPU host, numpy 2.5). The numpy<2 wheel beside the archive
# (server-wheels/) goes into a directory that only the server's environment puts first: SERVER_PYTHONPATH.
carry_dir=/tmp/mnv3kit-carry
if [ ! -d "$carry_dir/site" ]; then
  mkdir -p "$carry_dir" && tar -C "$carry_dir" -xJf "$1"
fi
if [ ! -d "$carry_dir/server-site" ]; then
  python3 -m pip install -q --no-index --no-deps --target "$carry_dir/server-site" "$(dirname "$1")"/server-wheels/*.whl
fi
ln -sf "$(ls "$carry_dir"/site/nvidia_pytriton.libs/libcudart-*.so.12*)" "$carry_dir/lib/libcudart.so.12"
# the checkout itself too: the kit is not pip-installed on such a host (scripts under perf/ import mnv3kit)
export PYTHONPATH="$PWD:$carry_dir/site${PYTHONPATH:+:$PYTHONPATH}"
export SERVER_PYTHONPATH="$carry_dir/server-site:$PYTHONPATH"
export LD_LIBRARY_PATH="$carry_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PERF_ANALYZER="$carry_dir/site/bin/perf_analyzer"
