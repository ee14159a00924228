#!/usr/bin/env bash
# A private Docker engine (Debian's docker.io) for the Docker tests, on its own unix socket,
# data root and exec root under $KIT_STATE/docker; no bridge and no iptables rules, so
# containers use --network host (they reach the master on 127.0.0.1) or none.
# No registry is reachable from here: the engine's proxy points at a closed loopback port,
# so an accidental pull fails at once instead of leaving the machine.  It builds one
# offline image, local/hostfs:latest: an empty root whose /usr, /etc... the tests mount
# read-only from the host to get its Python.  Prints DOCKER_HOST and DOCKER_PID.
set -euo pipefail
KIT_NAME=docker; . "$(dirname "$0")/../lib.sh"
S=$KIT_STATE/docker SOCK=$KIT_STATE/docker/docker.sock
export DOCKER_HOST=unix://$SOCK
info() { printf 'DOCKER_HOST=%s\nDOCKER_PID=%s\n' "$DOCKER_HOST" "$1" | emit "$S/env"; }
need_root
command -v dockerd >/dev/null && command -v docker >/dev/null || apt_install docker.io
if ! p=$(pid_of "$S/dockerd.pid" dockerd) || ! docker version >/dev/null 2>&1; then
  mkdir -p "$S/data" "$S/exec"
  rm -f "$S/dockerd.pid"
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY='' \
    setsid dockerd --data-root "$S/data" --exec-root "$S/exec" --pidfile "$S/dockerd.pid" \
      -H "$DOCKER_HOST" --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
      --userland-proxy=false --exec-opt native.cgroupdriver=cgroupfs \
      --storage-driver "${DOCKER_STORAGE_DRIVER:-overlay2}" \
      </dev/null >"$S/dockerd.log" 2>&1 &
  up() { docker version && [ -s "$S/dockerd.pid" ]; }
  wait_until 30 up || { tail -n 20 "$S/dockerd.log" >&2; die "dockerd did not answer on $SOCK"; }
  p=$(cat "$S/dockerd.pid")
  say "dockerd up (pid $p)"
fi
if ! docker image inspect local/hostfs:latest >/dev/null 2>&1; then
  root=$(mktemp -d)
  (cd "$root" && mkdir -p usr etc proc sys dev run root home tmp var/tmp && chmod 1777 tmp var/tmp &&
    for d in bin sbin lib lib64; do ln -s "usr/$d" "$d"; done)
  tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' - local/hostfs:latest >/dev/null
  rm -rf "$root"
  say "image local/hostfs:latest made"
fi
info "$p"
