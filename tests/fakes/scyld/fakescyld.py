"""A faithful fake of Scyld ClusterWare's beomap, bpsh, bpstat and bpctl, for the tests.

NOT a real Scyld cluster: no BProc, no compute nodes.  "Nodes" are numbers whose state
lives in $FAKE_SCYLD_HOME/nodes.json ($FAKE_SCYLD_NODES of them, default 4, all up);
``bpsh NODE cmd`` runs cmd here.  What it reproduces, because clustermgr relies on it:
- ``beomap --no-local --np N`` prints N up nodes, colon-separated, least loaded first
  (``0:1:2``); with no node up: ``beomap: no nodes are available`` on stderr, exit 1.
- ``bpsh NODE cmd [args]`` runs cmd with the caller's environment (BProc migrates the
  process, environment included) and returns its exit status; a down node:
  ``bpsh: Node N is down``, exit 1; an unknown one: ``bpsh: invalid node number N``, exit 1.
- ``bpstat -s NODE`` prints the node's state (``up``, ``down``); ``bpstat`` alone the
  ``Node(s) Status Mode User Group`` table.
- ``bpctl -S NODE -s down``: the node goes down and every process running on it dies
  (SIGKILL), as when a compute node is taken out; ``-s up`` brings it back.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from spool import Spool, alive  # noqa: E402

SPOOL = Spool(os.environ.get("FAKE_SCYLD_HOME", f"/tmp/fakescyld-{getpass.getuser()}"))
STATE = os.path.join(SPOOL.home, "nodes.json")


def _nodes() -> dict[str, dict]:
    if os.path.exists(STATE):
        with open(STATE) as fh:
            nodes = json.load(fh)
    else:
        count = int(os.environ.get("FAKE_SCYLD_NODES", "4"))
        nodes = {str(n): {"state": "up", "pids": []} for n in range(count)}
    for node in nodes.values():
        node["pids"] = [p for p in node["pids"] if alive(p)]
    return nodes


def _save(nodes: dict[str, dict]) -> None:
    with open(STATE, "w") as fh:
        json.dump(nodes, fh)


def beomap(argv: list[str]) -> int:
    np = int(argv[argv.index("--np") + 1]) if "--np" in argv else 1
    nodes = _nodes()
    up = sorted((n for n, v in nodes.items() if v["state"] == "up"),
                key=lambda n: (len(nodes[n]["pids"]), int(n)))
    if not up:
        sys.stderr.write("beomap: no nodes are available\n")
        return 1
    print(":".join(up[i % len(up)] for i in range(np)))
    return 0


def bpsh(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: bpsh [-n] [-N] nodenumber command\n")
        return 1
    node, cmd = argv[0], argv[1:]
    lock = SPOOL.locked()
    nodes = _nodes()
    if node not in nodes:
        sys.stderr.write(f"bpsh: invalid node number {node}\n")
        return 1
    if nodes[node]["state"] != "up":
        sys.stderr.write(f"bpsh: Node {node} is down\n")
        return 1
    nodes[node]["pids"].append(os.getpid())  # this process becomes the command
    _save(nodes)
    lock.close()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        sys.stderr.write(f"bpsh: {cmd[0]}: {exc.strerror}\n")
        return 127


def bpstat(argv: list[str]) -> int:
    nodes = _nodes()
    if "-s" in argv:
        node = argv[argv.index("-s") + 1]
        if node not in nodes:
            sys.stderr.write(f"bpstat: invalid node number {node}\n")
            return 1
        print(nodes[node]["state"])
        return 0
    print(f"{'Node(s)':<34}{'Status':<17}{'Mode':<11}{'User':<11}Group")
    for n, v in nodes.items():
        print(f"{n:<34}{v['state']:<17}{'---x--x--x':<11}{'root':<11}root")
    return 0


def bpctl(argv: list[str]) -> int:
    if "-S" not in argv or "-s" not in argv:
        sys.stderr.write("usage: bpctl -S node -s state\n")
        return 1
    node, state = argv[argv.index("-S") + 1], argv[argv.index("-s") + 1]
    nodes = _nodes()
    if node not in nodes:
        sys.stderr.write(f"bpctl: invalid node number {node}\n")
        return 1
    if state != "up":
        for pid in nodes[node]["pids"]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        nodes[node]["pids"] = []
    nodes[node]["state"] = state
    _save(nodes)
    return 0


def main() -> int:
    command = sys.argv[1]
    if command == "bpsh":
        return bpsh(sys.argv[2:])  # takes the lock itself: it must not hold it while running
    SPOOL.locked()
    return {"beomap": beomap, "bpstat": bpstat, "bpctl": bpctl}[command](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
