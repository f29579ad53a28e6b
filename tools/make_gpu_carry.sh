#!/usr/bin/env bash
# Packs what the GPU machine of the `device` tool lacks into .device/carry.tar.xz (51 MB; with the working tree
# it must stay under the tool's 64 MiB per call):
# the Triton server tree of nvidia-pytriton with the Python 3.12 stub only (its bundled libpython3.13 dropped),
# perf_analyzer, tritonclient (+ its HTTP stack; geventhttpclient 2.0.12, the oldest with a CPython 3.12 wheel),
# onnxsim and python-rapidjson for CPython 3.12, libb64.so.0d, and numpy 1.26 for the server's stub (server-site/,
# see tools/gpu_carry_env.sh; unpacked and xz-compressed it takes 8.6 MB of the archive, its wheel 18 MB).
# Run here (after `make venv`); then `CARRY=.device/carry.tar.xz bash tools/gpu_run.sh` runs there.
set -euo pipefail
cd "$(dirname "$0")/.."
SP=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
DEST=.device/carry
WHL=.device/wheels
rm -rf "$DEST" && mkdir -p "$DEST/site/pytriton/tritonserver/python_backend_stubs" "$DEST/lib" "$WHL"
cp -r "$SP/pytriton/tritonserver/"{bin,backends,caches} "$DEST/site/pytriton/tritonserver/"
cp -r "$SP/pytriton/tritonserver/python_backend_stubs/3.12" "$DEST/site/pytriton/tritonserver/python_backend_stubs/"
cp -r "$SP/nvidia_pytriton.libs" "$DEST/site/"
rm -rf "$DEST/site/pytriton/tritonserver/backends/python/__pycache__" "$DEST"/site/nvidia_pytriton.libs/libpython3-*.13.so*
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$WHL" tritonclient==2.51.0 onnxsim==0.8.1 python-rapidjson==1.25 \
  geventhttpclient==2.0.12 gevent==26.9.0 greenlet==3.5.6 zope.event==6.2 zope.interface==8.7 brotli==1.2.1
.venv/bin/python -m pip install -q --no-deps --no-compile --target "$DEST/site" --python-version 3.12 \
  --implementation cp --only-binary=:all: "${platforms[@]}" "$WHL"/*.whl
rm -f "$DEST/site/bin/perf_client" "$DEST/site/bin/onnxsim"  # perf_analyzer is all we run
.venv/bin/python -m pip install -q --no-deps --no-compile --target "$DEST/server-site" --python-version 3.12 \
  --implementation cp --only-binary=:all: "${platforms[@]}" numpy==1.26.4
rm -rf "$DEST"/server-site/numpy/{*/tests,tests} "$DEST"/server-site/bin
cp -L /usr/lib/x86_64-linux-gnu/libb64.so.0d "$DEST/lib/"
tar -C "$DEST" -cf - . | xz -T0 -6 > .device/carry.tar.xz
ls -l .device/carry.tar.xz
