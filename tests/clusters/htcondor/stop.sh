#!/usr/bin/env bash
# Stop the pool of start.sh: TERM condor_master (it shuts its daemons and their jobs down),
# then KILL whatever of its children is still there after 30 s.
set -u
KIT_NAME=htcondor; . "$(dirname "$0")/../lib.sh"
S=$KIT_STATE/htcondor
if p=$(pid_of "$S/run/master.pid" condor_master); then
  kids=$(ps -o pid= --ppid "$p" 2>/dev/null)
  stop_pid "$p" condor_master 30
  for k in $kids; do kill -0 "$k" 2>/dev/null && kill -KILL "$k" 2>/dev/null; done
else
  say "not running"
fi
rm -f "$S/run/master.pid"
exit 0
