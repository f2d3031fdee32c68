#!/usr/bin/env bash
# Makes sure a Docker engine answers on this machine, idempotently.
# - If `docker info` already works (any engine: Docker Desktop, a system service, rootless), do nothing.
# - Otherwise (Debian/Ubuntu, root): install Debian's docker.io and start dockerd with no bridge
#   network and no iptables/NAT changes: sandbox containers always run with --network none, so
#   the engine needs no networking of its own, and this works inside containers/VMs without
#   netfilter. Waits until the engine answers.
set -euo pipefail
log=${DOCKERD_LOG:-/var/log/cispo-dockerd.log}

if docker info >/dev/null 2>&1; then
  echo "[setup_docker] Docker engine answers: $(docker info --format '{{.ServerVersion}} ({{.Driver}})')"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "[setup_docker] no Docker engine answers and this is not root: start one yourself" >&2
  echo "  (e.g. 'sudo systemctl start docker'), or run the sandbox with sandbox.backend=process" >&2
  echo "  (NOT isolated: model-written code then runs as you, on this machine)." >&2
  exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "[setup_docker] installing Debian's docker.io ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
if ! pgrep -x dockerd >/dev/null 2>&1; then
  echo "[setup_docker] starting dockerd (log: $log)"
  # setsid: the daemon must outlive this shell (make, CI steps).
  setsid dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
    >"$log" 2>&1 < /dev/null &
fi
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "[setup_docker] Docker engine ready: $(docker info --format '{{.ServerVersion}} ({{.Driver}})')"
    exit 0
  fi
  sleep 1
done
echo "[setup_docker] dockerd did not answer within 60 s; last lines of $log:" >&2
tail -n 20 "$log" >&2 || true
exit 1
