#!/usr/bin/env bash
# Stop the sshd of start.sh (by its pid file).  Sessions still open end with their connections.
set -u
KIT_NAME=ssh; . "$(dirname "$0")/../lib.sh"
S=$KIT_STATE/ssh
if p=$(pid_of "$S/sshd.pid" sshd); then stop_pid "$p" sshd 5; else say "not running"; fi
rm -f "$S/sshd.pid"
