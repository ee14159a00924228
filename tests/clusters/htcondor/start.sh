#!/usr/bin/env bash
# A real personal HTCondor pool (collector, negotiator, schedd, startd) on 127.0.0.1:$HTCONDOR_KIT_PORT
# (9618, shared port) for the HTCondor tests.  Prints HTCONDOR_ENV (a file to source:
# CONDOR_CONFIG, PATH, token auth), HTCONDOR_JOB_USER, HTCONDOR_SCRATCH, HTCONDOR_MASTER_PID.
#
#   - Debian 12 has no HTCondor package, and PyPI's `htcondor` holds only Python bindings.  We
#     take Debian 13's `condor` with its dependency closure, downloaded through a private apt
#     configuration (own lists, cache and empty dpkg status: the system's apt state and libc
#     stay untouched), unpack it under $KIT_OPT/htcondor and point every ELF file's loader and
#     DT_RPATH at that tree (patchelf), so the daemons never mix in the host's libraries.
#   - HTCondor refuses jobs owned by root or by "condor": the pool runs as the unprivileged
#     $HTCONDOR_KIT_USER (htcjob), and root's clients authenticate as that user with an
#     IDTOKEN.  Jobs therefore cannot read /root (a pyenv there is unusable in jobs) and need
#     a world-writable initialdir: $HTCONDOR_SCRATCH.
#   - Negotiation every second instead of every 20 s: a job runs within ~0.5 s.
set -euo pipefail
KIT_NAME=htcondor; . "$(dirname "$0")/../lib.sh"
R=$KIT_OPT/htcondor S=$KIT_STATE/htcondor
PORT=${HTCONDOR_KIT_PORT:-9618} U=${HTCONDOR_KIT_USER:-htcjob}
CPUS=${HTCONDOR_KIT_CPUS:-8} MEM=${HTCONDOR_KIT_MEMORY:-8192} SUITE=${HTCONDOR_KIT_SUITE:-trixie}
info() {
  printf 'HTCONDOR_ENV=%s\nHTCONDOR_JOB_USER=%s\nHTCONDOR_SCRATCH=%s\nHTCONDOR_MASTER_PID=%s\n' \
    "$S/env.sh" "$U" "$S/scratch" "$1" | emit "$S/env"
}
need_root
if p=$(pid_of "$S/run/master.pid" condor_master) && [ -e "$S/env.sh" ]; then info "$p"; exit 0; fi

install_condor() {
  need_apt
  command -v patchelf >/dev/null || apt_install patchelf
  local w; w=$(mktemp -d)
  mkdir -p "$w/lists/partial" "$w/cache/archives/partial" && : >"$w/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main" >"$w/sources.list"
  local apt=(apt-get -q -o Dir::Etc::sourcelist="$w/sources.list" -o Dir::Etc::sourceparts=/nonexistent
    -o Dir::State::Lists="$w/lists" -o Dir::Cache="$w/cache" -o Dir::State::status="$w/status"
    -o APT::Install-Recommends=false -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  say "downloading Debian $SUITE's condor and its dependencies (private apt state)"
  { "${apt[@]}" update && "${apt[@]}" install --download-only -y condor; } >>"$KIT_STATE/apt.log" 2>&1 ||
    { tail -n 15 "$KIT_STATE/apt.log" >&2; rm -rf "$w"; die "could not download condor from Debian $SUITE"; }
  rm -rf "$R" && mkdir -p "$R"
  local f
  for f in "$w"/cache/archives/*.deb; do dpkg-deb -x "$f" "$R"; done
  local version; version=$(dpkg-deb -f "$w"/cache/archives/condor_*.deb Version)
  rm -rf "$w"
  say "pointing the ELF files at $R"
  local ld=$R/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
  local rpath=$R/usr/lib/x86_64-linux-gnu:$R/usr/lib:$R/usr/lib/condor
  find "$R/usr" -type f \( -perm -u+x -o -name '*.so*' \) ! -name 'ld-linux-x86-64.so.2' -print0 |
    while IFS= read -r -d '' f; do
      [ "$(head -c 4 "$f" | tr -d '\0')" = $'\x7fELF' ] || continue
      if readelf -l "$f" 2>/dev/null | grep -q 'program interpreter'; then patchelf --set-interpreter "$ld" "$f"; fi
      # DT_RPATH, unlike RUNPATH, also applies to the libraries' own dependencies
      if readelf -d "$f" 2>/dev/null | grep -q NEEDED; then patchelf --force-rpath --set-rpath "$rpath" "$f"; fi
    done
  "$R/usr/sbin/condor_master" -version >/dev/null || die "the unpacked condor_master does not run"
  echo "$version" >"$R/.installed"
}
[ -e "$R/.installed" ] || install_condor
id "$U" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$U"
rm -rf "$S" && mkdir -p "$S"/{log,spool,execute,lock,run,cred_dir,etc,scratch,tokens}
cat >"$S/etc/condor_config" <<CFG
RELEASE_DIR = $R/usr
LOCAL_DIR = $S
LOG = \$(LOCAL_DIR)/log
SPOOL = \$(LOCAL_DIR)/spool
EXECUTE = \$(LOCAL_DIR)/execute
LOCK = \$(LOCAL_DIR)/lock
RUN = \$(LOCAL_DIR)/run
CRED_STORE_DIR = \$(LOCAL_DIR)/cred_dir
ETC = \$(LOCAL_DIR)/etc
BIN = \$(RELEASE_DIR)/bin
SBIN = \$(RELEASE_DIR)/sbin
LIB = \$(RELEASE_DIR)/lib/condor
LIBEXEC = \$(RELEASE_DIR)/libexec/condor
SHARE = \$(RELEASE_DIR)/share/condor
LOCAL_CONFIG_FILE =
LOCAL_CONFIG_DIR =
use ROLE : Personal
CONDOR_IDS = $(id -u "$U").$(id -g "$U")
CONDOR_HOST = 127.0.0.1
NETWORK_INTERFACE = 127.0.0.1
BIND_ALL_INTERFACES = False
COLLECTOR_HOST = 127.0.0.1:$PORT
USE_SHARED_PORT = True
SHARED_PORT_PORT = $PORT
UID_DOMAIN = localhost
FILESYSTEM_DOMAIN = localhost
TRUST_UID_DOMAIN = True
SOFT_UID_DOMAIN = True
SEC_DEFAULT_AUTHENTICATION_METHODS = FS, IDTOKENS
SEC_CLIENT_AUTHENTICATION_METHODS = FS, IDTOKENS
ALLOW_READ = *
ALLOW_WRITE = *
ALLOW_ADMINISTRATOR = *
ALLOW_DAEMON = *
ALLOW_NEGOTIATOR = *
ALLOW_CONFIG = *
NUM_CPUS = $CPUS
MEMORY = $MEM
RUNBENCHMARKS = False
START = TRUE
SUSPEND = FALSE
PREEMPT = FALSE
KILL = FALSE
WANT_SUSPEND = FALSE
WANT_VACATE = FALSE
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_MIN_INTERVAL = 1
NEGOTIATOR_CYCLE_DELAY = 1
NEGOTIATOR_UPDATE_INTERVAL = 2
SCHEDD_INTERVAL = 5
SCHEDD_MIN_INTERVAL = 0
UPDATE_INTERVAL = 5
STARTER_UPDATE_INTERVAL = 5
SHADOW_QUEUE_UPDATE_INTERVAL = 5
STARTD_CRON_JOBLIST =
SINGULARITY =
CFG
chown -R "$U:" "$S" && chown root: "$S/scratch" "$S/tokens"
chmod 1777 "$S/scratch" && chmod 700 "$S/tokens"
port_taken "$PORT" && die "127.0.0.1:$PORT is taken by another program (set HTCONDOR_KIT_PORT)"
as_pool() { runuser -u "$U" -- env -i PATH="$R/usr/bin:$R/usr/sbin:/usr/bin:/bin" \
  HOME="$(getent passwd "$U" | cut -d: -f6)" CONDOR_CONFIG="$S/etc/condor_config" "$@"; }
as_pool "$R/usr/sbin/condor_master" -pidfile "$S/run/master.pid"
export CONDOR_CONFIG=$S/etc/condor_config PATH=$R/usr/bin:$R/usr/sbin:$PATH
pool_up() { [ -s "$S/run/master.pid" ] && condor_status -af Name | grep -q . && condor_q -totals; }
wait_until 60 pool_up || { tail -n 20 "$S/log/MasterLog" >&2; die "the pool did not come up ($S/log)"; }
as_pool "$R/usr/bin/condor_token_create" -identity "$U@localhost" >"$S/tokens/$U.token"
chmod 600 "$S/tokens/$U.token"
printf '%s\n' "export CONDOR_CONFIG=$S/etc/condor_config" "export PATH=$R/usr/bin:$R/usr/sbin:\$PATH" \
  "export _CONDOR_SEC_TOKEN_DIRECTORY=$S/tokens" "export _CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS=IDTOKENS,FS" \
  >"$S/env.sh"
say "ready: HTCondor $(cat "$R/.installed") on 127.0.0.1:$PORT, jobs run as $U"
info "$(cat "$S/run/master.pid")"
