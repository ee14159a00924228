#!/usr/bin/env bash
# Stop the Grid Engine of start.sh: execd first (qconf -kej also kills its jobs), then qmaster
# (qconf -km; its own shutdown takes 7-11 s).  A daemon still up after 20 s is signalled by the
# pid in its pid file, only when that pid runs this $SGE_ROOT's binary.  Installation and
# cell stay; start.sh brings them back in about 3 s.
set -u
KIT_NAME=sge; . "$(dirname "$0")/../lib.sh"
export SGE_ROOT=${SGE_ROOT:-$KIT_OPT/sge} SGE_CELL=default
[ -r "$SGE_ROOT/env.sh" ] && . "$SGE_ROOT/env.sh"
BIN=$SGE_ROOT/bin/lx-amd64 SPOOL=$SGE_ROOT/default/spool
export PATH=$BIN:$PATH
host=$(cat "$SGE_ROOT/default/common/act_qmaster" 2>/dev/null || hostname)
stop_daemon() {  # stop_daemon NAME "QCONF ARGS" PIDFILE...
  local name=$1 args=$2 f p=; shift 2
  for f in "$@"; do p=$(pid_of "$f" "$BIN/$name") && break; done
  [ -n "$p" ] || { say "$name is not running"; return 0; }
  qconf $args >/dev/null 2>&1 || true
  wait_until 20 sh -c "! kill -0 $p" && { say "stopped $name ($p)"; return 0; }
  stop_pid "$p" "$name" 10
}
stop_daemon sge_execd "-kej $host" "$SPOOL"/execd/*/execd.pid
stop_daemon sge_qmaster -km "$SPOOL/qmaster/qmaster.pid"
exit 0
