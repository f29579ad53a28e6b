#!/usr/bin/env bash
# System packages the kit needs besides PyPI: libb64 for perf_analyzer (tritonclient 2.51.0), jemalloc for the
# embedded Triton (serve.py preloads it: memory of large requests goes back to the system), and Debian's
# docker-compose (v1.29), whose parser the tests use to validate docker-compose.yml.
# Installs only what is missing; needs root (or sudo) the first time.
set -euo pipefail
missing=()
dpkg -s libb64-0d >/dev/null 2>&1 || missing+=(libb64-0d)
dpkg -s libjemalloc2 >/dev/null 2>&1 || missing+=(libjemalloc2)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# promtool (Debian's prometheus package; its server is not started) evaluates the Prometheus adapter rule of
# deploy/helm in tests/test_deploy.py.
if ! command -v promtool >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing system packages: prometheus (for promtool)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
