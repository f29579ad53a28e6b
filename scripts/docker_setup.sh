#!/usr/bin/env bash
# Makes Docker usable for the CPU compose test on a Debian machine without a registry for images:
# installs Debian's docker.io, docker-compose and debootstrap when missing, starts dockerd when no daemon answers,
# and makes the base image from Debian's packages (debootstrap + docker import) unless it already exists.
# Prints the base image name. Exits 3 with the reason when the Docker daemon cannot run here.
set -euo pipefail
BASE=${BASE_IMAGE:-local/debian:bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}
DOCKERD_LOG=${DOCKERD_LOG:-/tmp/mnv3kit-dockerd.log}
log() { echo "docker_setup: $*" >&2; }

missing=()
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null 2>&1 || { log "no dockerd on this machine"; exit 3; }
  log "starting dockerd (log: $DOCKERD_LOG)"
  setsid dockerd >"$DOCKERD_LOG" 2>&1 < /dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start: $(tail -n 2 "$DOCKERD_LOG" | tr '\n' ' ')"; exit 3; }
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  log "making $BASE with debootstrap ($SUITE, minbase)"
  debootstrap --variant=minbase "$SUITE" "$root" >/tmp/mnv3kit-debootstrap.log 2>&1 \
    || { log "debootstrap failed: $(tail -n 2 /tmp/mnv3kit-debootstrap.log | tr '\n' ' ')"; exit 1; }
  tar -C "$root" -c . | docker import - "$BASE" >/dev/null
fi
# The image build reaches PyPI the way this host does: through its locally added CAs, if any.
here=$(cd "$(dirname "$0")/.." && pwd)
for crt in /usr/local/share/ca-certificates/*.crt; do
  [ -f "$crt" ] && cp "$crt" "$here/docker/ca-certificates/"
done
echo "$BASE"
