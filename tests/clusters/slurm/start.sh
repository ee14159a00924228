#!/usr/bin/env bash
# A real one-node Slurm (Debian's 22.05: munged, slurmctld, slurmd) for the Slurm tests, plus
# Slurm's Torque/PBS wrappers (qsub, qstat, qdel) for the PBS tests.
#   - The node is `hostname -s` at 127.0.0.1 with $SLURM_KIT_CPUS (8) CPUs whatever the real
#     count, so 8 one-CPU jobs run at once and a 9th pends; partition "debug", no time limit.
#   - No cgroups (proctrack/linuxproc, task/none), no accounting database (sacct does not
#     work; a finished job stays in squeue for MinJobAge=300 s, then its id is unknown).
#   - batch_sched_delay=0: a job starts within the controller's 1 s scheduling tick.
#   - The config is /etc/slurm/slurm.conf, Slurm's compiled-in path, so every shell finds it;
#     one Slurm per machine.  slurmctld starts with -c: every start has an empty queue.
#   - The Torque wrappers' package (slurm-wlm-torque) conflicts with Grid Engine's client
#     (both own /usr/bin/qsub); installing it would remove SGE.  We unpack it aside into
#     $KIT_STATE/slurm/torque/bin (SLURM_TORQUE_BIN) with sbatch/srun beside it, as qsub
#     runs the sbatch in its own folder.  spank_pbs sets PBS_JOBID etc. in jobs.
# Prints SLURM_CONF, SLURM_TORQUE_BIN, SLURM_NODE, SLURM_PARTITION.
set -euo pipefail
KIT_NAME=slurm; . "$(dirname "$0")/../lib.sh"
S=$KIT_STATE/slurm CONF=/etc/slurm/slurm.conf NODE=$(hostname -s)
CPUS=${SLURM_KIT_CPUS:-8} MEM=${SLURM_KIT_MEM_MB:-8192} PART=${SLURM_KIT_PARTITION:-debug}
info() {
  printf 'SLURM_CONF=%s\nSLURM_TORQUE_BIN=%s\nSLURM_NODE=%s\nSLURM_PARTITION=%s\n' \
    "$CONF" "$S/torque/bin" "$NODE" "$PART" | emit "$S/env"
}
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
node_ready() { scontrol ping 2>/dev/null | grep -q UP &&
  sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }
need_root
mkdir -p "$S"/{run,log,state,spool}
if munge_ok && pid_of "$S/run/slurmctld.pid" slurmctld >/dev/null && pid_of "$S/run/slurmd.pid" slurmd >/dev/null \
   && [ -x "$S/torque/bin/qsub" ] && node_ready; then info; exit 0; fi

# perl modules: the Torque wrappers are perl scripts over Slurm's perl API
apt_install slurmctld slurmd slurm-client munge libslurm-perl libslurmdb-perl libswitch-perl
if [ ! -x "$S/torque/bin/qsub" ]; then
  rm -rf "$S/torque" && apt_fetch "$S/torque" slurm-wlm-torque
  dpkg-deb -x "$S"/torque/slurm-wlm-torque_*.deb "$S/torque/pkg"
  mkdir -p "$S/torque/bin" && cp "$S"/torque/pkg/usr/bin/* "$S/torque/bin/"
  for c in sbatch srun salloc; do ln -sf "$(command -v "$c")" "$S/torque/bin/$c"; done
fi

# munge: use one that works (the system's), else start ours and record its pid
if ! munge_ok; then
  [ -s /etc/munge/munge.key ] || mungekey -c -k /etc/munge/munge.key 2>/dev/null ||
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/munged.pid ||
    die "munged did not start (/var/log/munge/munged.log)"
  wait_until 10 munge_ok || die "munge does not work (/var/log/munge/munged.log)"
  cp /run/munge/munged.pid "$S/run/munged.pid"
fi

ctld=$(pid_of "$S/run/slurmctld.pid" slurmctld || true)
slurmd_=$(pid_of "$S/run/slurmd.pid" slurmd || true)
if [ -z "$ctld" ] && scontrol ping 2>/dev/null | grep -q UP; then
  die "a slurmctld this kit did not start answers already (one Slurm per machine): stop it first"
fi
if [ -z "$ctld" ] && [ -z "$slurmd_" ]; then
  mkdir -p /etc/slurm
  echo "optional spank_pbs.so" >"$S/plugstack.conf"
  cat >"$CONF" <<CFG
# Written by clustermgr's tests/clusters/slurm/start.sh: a one-node loopback test cluster.
ClusterName=clustermgr-kit
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
PlugStackConfig=$S/plugstack.conf
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# the node reports the CPUs and memory below, not the hardware's
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN
PartitionName=$PART Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CFG
fi
[ -n "$ctld" ] || slurmctld -c || die "slurmctld did not start ($S/log/slurmctld.log)"
[ -n "$slurmd_" ] || slurmd -N "$NODE" || die "slurmd did not start ($S/log/slurmd.log)"
wait_until "${SLURM_KIT_TIMEOUT:-60}" node_ready || {
  tail -n 15 "$S/log/slurmctld.log" "$S/log/slurmd.log" >&2; die "node $NODE not ready"; }
say "ready: node $NODE, $CPUS CPUs, partition $PART"
info
