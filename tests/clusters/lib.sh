# Helpers shared by the test kit's start.sh/stop.sh scripts (sourced, never run).
#
# Conventions every script follows:
#   - start.sh is idempotent, prints its client environment as KEY=VALUE lines on stdout
#     (tests/backends.py reads them) and writes the same lines to $KIT_STATE/<name>/env;
#     progress goes to stderr.
#   - exit 1: the back end failed to start (a message and log tails say why);
#     exit 3: this machine cannot host it (not root, no apt-get, not Debian-like): one line
#     on stderr naming what is needed.  tests/backends.py turns 3 into a skip outside CI.
#   - stop.sh stops only the processes its start.sh recorded in pid files.
# Knobs: KIT_STATE (/var/tmp/clustermgr-kit) for state and logs, KIT_OPT (/opt/clustermgr-kit)
# for software unpacked outside dpkg.

KIT_STATE=${KIT_STATE:-/var/tmp/clustermgr-kit}
KIT_OPT=${KIT_OPT:-/opt/clustermgr-kit}
KIT_NAME=${KIT_NAME:?set KIT_NAME before sourcing lib.sh}
export DEBIAN_FRONTEND=noninteractive

say() { echo "$KIT_NAME: $*" >&2; }
die() { echo "$KIT_NAME: ERROR: $*" >&2; exit 1; }
cannot() { echo "$KIT_NAME: needs $*" >&2; exit 3; }

# The machine can host a back end: root, and apt-get when something must be installed.
need_root() { [ "$(id -u)" = 0 ] || cannot "root (run the tests as root, e.g. sudo -E python -m pytest)"; }
need_apt() { command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
  cannot "a Debian-like system with apt-get to install its packages"; }

# apt_install PKG...: install missing packages, never removing any (Slurm's Torque wrappers
# and Grid Engine conflict as packages; --no-remove keeps apt from resolving that for us).
apt_install() {
  local missing=() p log=$KIT_STATE/apt.log
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_apt
  mkdir -p "$KIT_STATE"
  say "apt-get install ${missing[*]}"
  local opts=(-q -y -o DPkg::Lock::Timeout=600 --no-install-recommends --no-remove)
  apt-get "${opts[@]}" install "${missing[@]}" >>"$log" 2>&1 && return 0
  apt-get -q -o DPkg::Lock::Timeout=600 update >>"$log" 2>&1 || true
  apt-get "${opts[@]}" install "${missing[@]}" >>"$log" 2>&1 ||
    { tail -n 15 "$log" >&2; die "apt-get install ${missing[*]} failed (log: $log)"; }
}

# apt_fetch DIR PKG...: download .debs into DIR without installing them (dpkg never sees them).
apt_fetch() {
  local dir=$1 log=$KIT_STATE/apt.log; shift
  need_apt
  mkdir -p "$dir" "$KIT_STATE"
  (cd "$dir" && apt-get -q -o APT::Sandbox::User=root download "$@") >>"$log" 2>&1 && return 0
  apt-get -q -o DPkg::Lock::Timeout=600 update >>"$log" 2>&1 || true
  (cd "$dir" && apt-get -q -o APT::Sandbox::User=root download "$@") >>"$log" 2>&1 ||
    { tail -n 15 "$log" >&2; die "apt-get download $* failed (log: $log)"; }
}

# pid_of FILE [EXE]: the pid in FILE when that process lives (and, given EXE, runs EXE or a
# program whose name starts with EXE's basename).  Never matches a recycled pid of another program.
pid_of() {
  local p exe
  p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
  if [ -n "${2:-}" ]; then
    exe=$(readlink "/proc/$p/exe" 2>/dev/null) || return 1
    case $2 in
      /*) [ "$exe" = "$2" ] || return 1 ;;
      *) case ${exe##*/} in "$2"*) ;; *) return 1 ;; esac ;;
    esac
  fi
  echo "$p"
}

# stop_pid PID NAME [SECONDS]: TERM, wait, then KILL.
stop_pid() {
  local p=$1 name=$2 n=$(( ${3:-10} * 10 ))
  kill -TERM "$p" 2>/dev/null || return 0
  while [ $n -gt 0 ] && kill -0 "$p" 2>/dev/null; do sleep 0.1; n=$((n - 1)); done
  if kill -0 "$p" 2>/dev/null; then say "$name ($p) ignored TERM: KILL"; kill -KILL "$p" 2>/dev/null; fi
  say "stopped $name ($p)"
}

# wait_until SECONDS CMD...: poll CMD (these daemons offer no event to wait on).
wait_until() {
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || return 1; sleep 0.1; done
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# emit FILE: the client environment, to stdout and to FILE (KEY=VALUE lines on stdin).
emit() { mkdir -p "$(dirname "$1")"; tee "$1"; }
