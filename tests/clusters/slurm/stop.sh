#!/usr/bin/env bash
# Stop the Slurm of start.sh: cancel every job (no slurmstepd is orphaned), then slurmd,
# slurmctld and, when start.sh started it, munged - each by its pid file.
set -u
KIT_NAME=slurm; . "$(dirname "$0")/../lib.sh"
S=$KIT_STATE/slurm
if pid_of "$S/run/slurmctld.pid" slurmctld >/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$jobs" ]; then
    scancel $jobs 2>/dev/null
    running() { [ -n "$(squeue -h -t R,CG -o %A 2>/dev/null)" ]; }
    n=100; while [ $n -gt 0 ] && running; do sleep 0.1; n=$((n - 1)); done
  fi
fi
for d in slurmd slurmctld munged; do
  if p=$(pid_of "$S/run/$d.pid" "$d"); then stop_pid "$p" "$d" 10; fi
  rm -f "$S/run/$d.pid"
done
exit 0
