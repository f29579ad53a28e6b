# Sourced by tools/gpu_run.sh on a GPU host without the kit's server-side requirements: unpacks the archive made by
# tools/make_gpu_carry.sh (the Triton server of nvidia-pytriton with the Python 3.12 stub, perf_analyzer,
# tritonclient, onnxsim) and points Python, the loader and run_perf.sh at it.
#   source tools/gpu_carry_env.sh .device/carry.tar.xz
# The python-backend stub of nvidia-pytriton 0.7.0 is built against numpy 1.x: under numpy 2 a model's input tensors
# arrive as zeros and its outputs leave empty (seen on the GPU host, numpy 2.5, and here with a Python 3.12 venv).
# The stub ignores PYTHONPATH; it imports from the virtualenv whose bin comes first on PATH (serve.py puts its own
# interpreter's there). So the server runs under SERVER_PY: a virtualenv with the archive's numpy<2 (server-site/)
# in its own site-packages, layered over this host's Python packages (torch) by a .pth file.
carry_dir=/tmp/mnv3kit-carry
if [ ! -d "$carry_dir/site" ]; then
  mkdir -p "$carry_dir" && tar -C "$carry_dir" -xJf "$1"
fi
if [ ! -x "$carry_dir/server-venv/bin/python3" ]; then
  host_python=${PY:-$(command -v python3)}
  "$host_python" -m venv --without-pip "$carry_dir/server-venv"
  server_site=$("$carry_dir/server-venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  cp -r "$carry_dir"/server-site/. "$server_site"/
  "$host_python" -c 'import sysconfig; print("import site; site.addsitedir(%r)" % sysconfig.get_path("purelib"))' \
    > "$server_site/host-packages.pth"
fi
ln -sf "$(ls "$carry_dir"/site/nvidia_pytriton.libs/libcudart-*.so.12*)" "$carry_dir/lib/libcudart.so.12"
# the checkout itself too: the kit is not pip-installed on such a host (scripts under perf/ import mnv3kit)
export PYTHONPATH="$PWD:$carry_dir/site${PYTHONPATH:+:$PYTHONPATH}"
export SERVER_PY="$carry_dir/server-venv/bin/python3"
export LD_LIBRARY_PATH="$carry_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PERF_ANALYZER="$carry_dir/site/bin/perf_analyzer"
