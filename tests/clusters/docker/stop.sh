#!/usr/bin/env bash
# Stop the engine of start.sh: remove its containers, then stop dockerd (its containerd
# follows) by pid file.  Images stay in the data root; KIT_PURGE=1 removes the data root too.
set -u
KIT_NAME=docker; . "$(dirname "$0")/../lib.sh"
S=$KIT_STATE/docker
export DOCKER_HOST=unix://$S/docker.sock
if p=$(pid_of "$S/dockerd.pid" dockerd); then
  ids=$(docker ps -aq 2>/dev/null) && [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
  c=$(pid_of "$S/exec/containerd/containerd.pid" containerd || true)
  stop_pid "$p" dockerd 20
  [ -n "$c" ] && kill -0 "$c" 2>/dev/null && stop_pid "$c" containerd 10
else
  say "not running"
fi
rm -f "$S/dockerd.pid"
# the engine leaves bind mounts of its network namespaces behind; drop ours only
awk -v s="$S/" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
[ "${KIT_PURGE:-0}" = 1 ] && rm -rf "$S" && say "removed $S"
exit 0
