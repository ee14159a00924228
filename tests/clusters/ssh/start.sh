#!/usr/bin/env bash
# A private OpenSSH server for the SSH and LSF-over-ssh tests: 127.0.0.1:$SSH_PORT (2222),
# its own host key, key-only login for $SSH_USER (root), a generated client key.  The
# system's /etc/ssh and any sshd on :22 are left alone.  Prints SSH_HOST/PORT/USER/KEY/
# KNOWN_HOSTS/PID.  Remote commands need a pty (or a process-group kill) to die with
# their channel: the SSH manager uses one.
set -euo pipefail
KIT_NAME=ssh; . "$(dirname "$0")/../lib.sh"
S=$KIT_STATE/ssh PORT=${SSH_PORT:-2222} U=${SSH_USER:-root}
info() {
  printf 'SSH_HOST=127.0.0.1\nSSH_PORT=%s\nSSH_USER=%s\nSSH_KEY=%s\nSSH_KNOWN_HOSTS=%s\nSSH_PID=%s\n' \
    "$PORT" "$U" "$S/id_ed25519" "$S/known_hosts" "$1" | emit "$S/env"
}
need_root
if p=$(pid_of "$S/sshd.pid" sshd); then info "$p"; exit 0; fi
# the package's postinst would start the system sshd; policy-rc.d (exit 101) forbids that
# on this kind of machine, and we never rely on it
apt_install openssh-server openssh-client
port_taken "$PORT" && die "127.0.0.1:$PORT is taken by another program (set SSH_PORT)"
mkdir -p "$S" /run/sshd && chmod 755 "$S"
[ -s "$S/host_key" ] || ssh-keygen -q -t ed25519 -N '' -C kit-host -f "$S/host_key"
[ -s "$S/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C kit-client -f "$S/id_ed25519"
cp "$S/id_ed25519.pub" "$S/authorized_keys" && chmod 644 "$S/authorized_keys"
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$S/host_key.pub")" >"$S/known_hosts"
cat >"$S/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $PORT
HostKey $S/host_key
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
AllowUsers $U
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
X11Forwarding no
# tests open many sessions at once
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
CFG
/usr/sbin/sshd -t -f "$S/sshd_config" || die "sshd rejects its configuration ($S/sshd_config)"
rm -f "$S/sshd.pid"
/usr/sbin/sshd -f "$S/sshd_config" -E "$S/sshd.log"
login() { ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$S/known_hosts" \
  -i "$S/id_ed25519" -p "$PORT" "$U@127.0.0.1" true; }
wait_until 10 login || { tail -n 20 "$S/sshd.log" >&2; die "no login through 127.0.0.1:$PORT"; }
say "sshd up on 127.0.0.1:$PORT"
info "$(cat "$S/sshd.pid")"
