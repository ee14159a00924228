#!/usr/bin/env bash
# A real one-host Son of Grid Engine 8.1.9 (Debian's gridengine packages) for the qsub, qrsh
# and DRMAA tests.  This host is master, execution, submit and admin host; queue all.q has
# $SGE_KIT_SLOTS (8) slots, shell /bin/sh, no load thresholds; parallel environment "smp"
# ($pe_slots); root may run jobs; the scheduler runs every second.  Prints the client
# environment (SGE_ROOT, SGE_CELL, ports, PATH, DRMAA_LIBRARY_PATH, GLIBC_TUNABLES), also
# written to $SGE_ROOT/env.sh.
#
# What it works around (see README.md):
#   - gridengine-client conflicts with Slurm's Torque wrappers (both own /usr/bin/qsub), so
#     the .debs are unpacked into $SGE_ROOT in SGE's own layout, never given to dpkg;
#   - Debian's binaries look for the spooling library at a fixed /usr/lib/gridengine path: we
#     patch that string (same length) so the RUNPATH finds it in $SGE_ROOT/lib;
#   - 127.0.0.1 reverse-resolves to "localhost", which qmaster refuses as a different host
#     unless host_aliases says they are one;
#   - Debian's defaults refuse root's jobs (min_uid 1000) and reset PATH under -V
#     (sh in login_shells);
#   - libdrmaa links jemalloc, which needs more static TLS than ctypes' dlopen leaves;
#   - an execd that outlived its qmaster reconnects only after ~30 s: it is restarted.
set -euo pipefail
KIT_NAME=sge; . "$(dirname "$0")/../lib.sh"
export SGE_ROOT=${SGE_ROOT:-$KIT_OPT/sge} SGE_CELL=default
export SGE_QMASTER_PORT=${SGE_QMASTER_PORT:-6444} SGE_EXECD_PORT=${SGE_EXECD_PORT:-6445}
SLOTS=${SGE_KIT_SLOTS:-8} WAIT=${SGE_KIT_TIMEOUT:-60} ARCH=lx-amd64 ADMIN=sgeadmin
BIN=$SGE_ROOT/bin/$ARCH UTIL=$SGE_ROOT/utilbin/$ARCH LIB=$SGE_ROOT/lib/$ARCH
CELL=$SGE_ROOT/$SGE_CELL SPOOL=$SGE_ROOT/$SGE_CELL/spool
export PATH=$BIN:$PATH
need_root
[ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ] || cannot "an amd64 Debian-like system"

qmaster_pid() { pid_of "$SPOOL/qmaster/qmaster.pid" "$BIN/sge_qmaster"; }
execd_pid() { local f; for f in "$SPOOL"/execd/*/execd.pid; do pid_of "$f" "$BIN/sge_execd" && return 0; done; return 1; }
queue_ready() { [ "$(timeout 5 qstat -f -q "all.q@$HOST" | awk '$1 ~ /^all\.q@/ {print $NF}')" = $ARCH ]; }
qconf_() { local out; out=$(qconf "$@" 2>&1) || die "qconf $*: $out"; }

install_sge() {
  say "unpacking Debian's gridengine packages into $SGE_ROOT"
  local pkg=$SGE_ROOT/.pkg f
  apt_install libcrypt1 libdb5.3 libhwloc15 libjemalloc2 libmunge2 libpam0g libssl3 libtinfo6 libtirpc3 procps
  rm -rf "$pkg" "$SGE_ROOT"/{bin,utilbin,lib,util}
  apt_fetch "$pkg/debs" gridengine-common gridengine-client gridengine-master gridengine-exec gridengine-drmaa1.0
  for f in "$pkg"/debs/*.deb; do dpkg-deb -x "$f" "$pkg"; done
  mkdir -p "$BIN" "$UTIL" "$LIB"
  for f in "$pkg"/usr/lib/gridengine/*; do
    case ${f##*/} in
      db_dump | db_load | spooldefaults | spooledit) ;;   # Debian's wrapper scripts and dead links
      qrsh_starter) mv "$f" "$UTIL/" ;;
      q* | sge_* | sgepasswd) mv "$f" "$BIN/" ;;
      lib*.so*) mv "$f" "$LIB/" ;;
      *.bin) mv "$f" "$UTIL/$(basename "$f" .bin)" ;;    # the real spooldefaults, spooledit
      *) mv "$f" "$UTIL/" ;;
    esac
  done
  mv "$pkg"/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0 "$LIB/"
  ln -sf libdrmaa.so.1.0 "$LIB/libdrmaa.so.1" && ln -sf libdrmaa.so.1.0 "$LIB/libdrmaa.so"
  ln -sfn .pkg/usr/share/gridengine/util "$SGE_ROOT/util"
  for f in "$BIN/sge_qmaster" "$UTIL/spoolinit" "$UTIL/spooldefaults" "$UTIL/spooledit"; do
    perl -0777 -pi -e 's|/usr/lib/gridengine/%s%s\0|"%s%s" . ("\0" x 21)|e' "$f"
    ! grep -qa /usr/lib/gridengine/ "$f" || die "could not patch the spooling library path in $f"
  done
  if ldd "$BIN/sge_qmaster" "$BIN/sge_execd" "$BIN/qsub" "$LIB/libdrmaa.so.1.0" | grep 'not found' >&2; then
    die "shared libraries are missing (above)"
  fi
  rm -rf "$pkg/debs"
  touch "$SGE_ROOT/.installed"
}

new_cell() {
  say "new cell '$SGE_CELL' for host $HOST"
  rm -rf "$CELL" && mkdir -p "$CELL/common" "$SPOOL/qmaster" "$SPOOL/execd"
  cat >"$CELL/common/bootstrap" <<BOOT
# Version: 8.1.9
admin_user $ADMIN
default_domain none
ignore_fqdn true
spooling_method classic
spooling_lib libspoolc
spooling_params $CELL/common;$SPOOL/qmaster
binary_path $SGE_ROOT/bin
qmaster_spool_dir $SPOOL/qmaster
security_mode none
job_spooling true
listener_threads 2
worker_threads 2
scheduler_threads 1
BOOT
  echo "$HOST" >"$CELL/common/act_qmaster"
  printf 'export SGE_ROOT=%s SGE_CELL=%s\n' "$SGE_ROOT" "$SGE_CELL" >"$CELL/common/settings.sh"
  sed -e "s#^execd_spool_dir .*#execd_spool_dir $SPOOL/execd#" -e 's/^min_uid .*/min_uid 0/' \
      -e 's/^min_gid .*/min_gid 0/' -e 's/^login_shells .*/login_shells none/' \
      -e 's#^mailer .*#mailer /bin/true#' -e 's/^load_report_time .*/load_report_time 00:00:10/' \
      -e 's/flush_time=00:00:15/flush_time=00:00:01/' \
      "$SGE_ROOT/.pkg/usr/share/gridengine/default-configuration" >"$CELL/common/global.conf"
  "$UTIL/spoolinit" classic libspoolc "$CELL/common;$SPOOL/qmaster" init
  "$UTIL/spooldefaults" configuration "$CELL/common/global.conf"
  "$UTIL/spooldefaults" complexes "$SGE_ROOT/util/resources/centry"
  "$UTIL/spooldefaults" usersets "$SGE_ROOT/util/resources/usersets"
  "$UTIL/spooldefaults" managers "$ADMIN" root
  chown -R "$ADMIN:$ADMIN" "$CELL"
  touch "$SPOOL/.ready"
}

configure() {  # with qmaster up; each step only when needed
  local t; t=$(mktemp)
  qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf_ -as "$HOST"
  qconf -ssconf | sed -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
    -e 's/^flush_submit_sec .*/flush_submit_sec 1/' -e 's/^flush_finish_sec .*/flush_finish_sec 1/' \
    -e 's/^job_load_adjustments .*/job_load_adjustments NONE/' \
    -e 's/^load_adjustment_decay_time .*/load_adjustment_decay_time 0:0:0/' \
    -e 's/^schedd_job_info .*/schedd_job_info true/' >"$t"
  qconf -ssconf | diff -qw - "$t" >/dev/null || qconf_ -Msconf "$t"
  if ! qconf -sel 2>/dev/null | grep -qx "$HOST"; then
    printf '%s\n' "hostname $HOST" "load_scaling NONE" "complex_values NONE" "user_lists NONE" \
      "xuser_lists NONE" "projects NONE" "xprojects NONE" "usage_scaling NONE" "report_variables NONE" >"$t"
    qconf_ -Ae "$t"
  fi
  if ! qconf -spl 2>/dev/null | grep -qx smp; then
    printf '%s\n' "pe_name smp" "slots 9999" "user_lists NONE" "xuser_lists NONE" "start_proc_args NONE" \
      "stop_proc_args NONE" 'allocation_rule $pe_slots' "control_slaves FALSE" "job_is_first_task TRUE" \
      "urgency_slots min" "accounting_summary FALSE" "qsort_args NONE" >"$t"
    qconf_ -Ap "$t"
  fi
  if ! qconf -sql 2>/dev/null | grep -qx all.q; then
    qconf -sq | sed -e 's/^qname .*/qname all.q/' -e "s/^hostlist .*/hostlist $HOST/" \
      -e "s/^slots .*/slots $SLOTS/" -e 's#^shell .*#shell /bin/sh#' -e 's/^pe_list .*/pe_list smp/' \
      -e 's/^load_thresholds .*/load_thresholds NONE/' >"$t"
    qconf_ -Aq "$t"
  elif [ "$(qconf -sq all.q | awk '$1 == "slots" {print $2}')" != "$SLOTS" ]; then
    qconf_ -mattr queue slots "$SLOTS" all.q
  fi
  rm -f "$t"
  qmod -c all.q >/dev/null 2>&1 || true   # clear error states an earlier run left
  qmod -e all.q >/dev/null 2>&1 || true
}

mkdir -p "$SGE_ROOT"
exec 9>"$SGE_ROOT/.lock"
flock -w "$WAIT" 9 || die "another start.sh holds $SGE_ROOT/.lock"
[ -e "$SGE_ROOT/.installed" ] || install_sge
id -u "$ADMIN" >/dev/null 2>&1 ||
  useradd --system --user-group --no-create-home --home-dir "$SGE_ROOT" --shell /usr/sbin/nologin "$ADMIN"

# SGE talks to itself by host name: that name must resolve to loopback
name=$(hostname)
if ! getent ahostsv4 "$name" >/dev/null; then
  say "adding '127.0.0.1 $name' to /etc/hosts"
  printf '\n127.0.0.1 %s\n' "$name" >>/etc/hosts
fi
ip=$(getent ahostsv4 "$name" | awk '{print $1; exit}')
case $ip in 127.*) ;; *) die "host name $name resolves to $ip, not to loopback: fix /etc/hosts" ;; esac
HOST=$("$UTIL/gethostname" -name) || die "Grid Engine cannot resolve this host's name"
rev=$("$UTIL/gethostbyaddr" -name "$ip" 2>/dev/null || true)

if [ "$(cat "$CELL/common/act_qmaster" 2>/dev/null)" != "$HOST" ] || [ ! -e "$SPOOL/.ready" ]; then
  ! qmaster_pid >/dev/null && ! execd_pid >/dev/null || die "daemons of an old cell run: run stop.sh first"
  new_cell
fi
if [ -n "$rev" ] && [ "$rev" != "$HOST" ]; then echo "$HOST $rev" >"$CELL/common/host_aliases"
else rm -f "$CELL/common/host_aliases"; fi

fresh_master=no
if ! qmaster_pid >/dev/null; then
  port_taken "$SGE_QMASTER_PORT" && die "port $SGE_QMASTER_PORT is taken by another program (set SGE_QMASTER_PORT)"
  (cd / && "$BIN/sge_qmaster" </dev/null >"$SPOOL/qmaster.out" 2>&1 9>&-) ||
    die "sge_qmaster did not start: $(cat "$SPOOL/qmaster.out")"
  fresh_master=yes
fi
wait_until "$WAIT" timeout 5 qconf -sss ||
  die "qmaster does not answer: $(tail -n 3 "$SPOOL/qmaster/messages" 2>/dev/null)"
configure
if p=$(execd_pid) && [ $fresh_master = yes ]; then stop_pid "$p" "sge_execd of an earlier qmaster" 10; fi
if ! execd_pid >/dev/null; then
  port_taken "$SGE_EXECD_PORT" && die "port $SGE_EXECD_PORT is taken by another program (set SGE_EXECD_PORT)"
  (cd / && "$BIN/sge_execd" </dev/null >"$SPOOL/execd.out" 2>&1 9>&-) ||
    die "sge_execd did not start: $(cat "$SPOOL/execd.out")"
fi
wait_until "$WAIT" queue_ready ||
  die "queue all.q@$HOST not ready: $(qstat -f 2>&1 | tail -n 2) $(tail -n 3 "$SPOOL"/execd/*/messages 2>/dev/null)"
say "ready: host $HOST, queue all.q with $SLOTS slots, PE smp"
printf '%s\n' "SGE_ROOT=$SGE_ROOT" "SGE_CELL=$SGE_CELL" "SGE_ARCH=$ARCH" \
  "SGE_QMASTER_PORT=$SGE_QMASTER_PORT" "SGE_EXECD_PORT=$SGE_EXECD_PORT" "PATH=$BIN:\$PATH" \
  "DRMAA_LIBRARY_PATH=$LIB/libdrmaa.so.1.0" "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096" |
  sed 's/^/export /' | emit "$SGE_ROOT/env.sh"
