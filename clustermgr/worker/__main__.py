"""``python -m clustermgr.worker``: join a master and run its tasks.

The master's address comes from ``--connect HOST:PORT`` or ``CLUSTERMGR_MASTER``; the
secret from ``CLUSTERMGR_COOKIE`` or a 0600 file (``--cookie-file`` or
``CLUSTERMGR_COOKIE_FILE``), never from the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import NoReturn

from .. import shm
from ..protocol import MASTER_ID, read_cookie_file, read_secret_from_env
from .loop import EXIT_CHANNEL_CLOSED, EXIT_MASTER_LOST, EXIT_MASTER_RESTARTED, end_descendants, run_worker


def build_parser(prog: str = "python -m clustermgr.worker") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Join a clustermgr master and run its tasks. The secret is "
        "read from CLUSTERMGR_COOKIE or a cookie file (mode 0600), never from arguments.")
    parser.add_argument("--connect", metavar="HOST:PORT",
                        help="the master's address (default: $CLUSTERMGR_MASTER)")
    parser.add_argument("--cookie-file", metavar="PATH", help="file holding the secret (0600)")
    parser.add_argument("--stdin-config", action="store_true",
                        help="read the environment (secret included) as one JSON line on stdin "
                        "and exit when stdin closes (how SSHManager starts workers)")
    parser.add_argument("--encrypt", action="store_true",
                        default=os.environ.get("CLUSTERMGR_ENCRYPT", "") == "1",
                        help="CurveZMQ-encrypted link (needed when the master encrypts: it "
                        "does when it listens off loopback; default: $CLUSTERMGR_ENCRYPT=1)")
    parser.add_argument("--connect-timeout", type=float, metavar="SECONDS",
                        default=float(os.environ.get("CLUSTERMGR_CONNECT_TIMEOUT", 60)),
                        help="give up if the master does not answer in time (default 60)")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m clustermgr.worker") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.stdin_config:
        try:
            os.environ.update(json.loads(sys.stdin.buffer.readline())["env"])
        except (ValueError, KeyError, TypeError) as exc:
            print(f"clustermgr worker: --stdin-config needs one JSON line {{\"env\": {{...}}}}: {exc}",
                  file=sys.stderr)
            return 2
        threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    address = args.connect or os.environ.get("CLUSTERMGR_MASTER")
    if not address:
        print("clustermgr worker: no master address; pass --connect HOST:PORT or set "
              "CLUSTERMGR_MASTER", file=sys.stderr)
        return 2
    if "://" not in address:
        address = f"tcp://{address}"
    problem = _address_problem(address)
    if problem:
        print(f"clustermgr worker: {problem}; pass --connect HOST:PORT (e.g. 10.0.0.5:40123, as the "
              "master printed it)", file=sys.stderr)
        return 2
    try:
        secret = read_cookie_file(args.cookie_file) if args.cookie_file else read_secret_from_env()
    except (OSError, Exception) as exc:  # noqa: BLE001 - reported, exit 2
        print(f"clustermgr worker: cannot read the secret: {exc}", file=sys.stderr)
        return 2
    if not secret:
        print("clustermgr worker: no secret; set CLUSTERMGR_COOKIE or pass --cookie-file PATH "
              "(a file of mode 0600)", file=sys.stderr)
        return 2
    launch_id = os.environ.pop("CLUSTERMGR_LAUNCH_ID", "")
    while True:
        encrypt = args.encrypt or os.environ.get("CLUSTERMGR_ENCRYPT", "") == "1"
        code = run_worker(address, secret, launch_id, args.connect_timeout, encrypt)
        if code != EXIT_MASTER_RESTARTED:
            _leave(code)
        shm.forget(MASTER_ID)  # what the old master never took goes; the new one is probed
        shm.release()
        print(f"clustermgr worker: the master at {address} restarted; joining it again",
              file=sys.stderr)
        launch_id = ""  # the new master did not launch this worker


def _address_problem(address: str) -> str | None:
    """What is wrong with a master address (``tcp://HOST:PORT``), or None."""
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return f"the master address {address!r} is not tcp://HOST:PORT"
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        return f"the master address {address!r} has no port"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"the master address {address!r} has no valid port ({port!r})"
    return None


def _leave(code: int) -> NoReturn:
    """End the process now: a worker asked to leave must not be held up by threads its
    tasks started, by ZeroMQ's teardown or by exit handlers."""
    shm.release(sent=code != 0)  # leaving as asked: the master takes our last messages
    if code == EXIT_MASTER_LOST:
        shm.sweep()  # what a master that died left in shared memory
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - nothing left to report to
            pass
    os._exit(code)


def _exit_when_stdin_closes() -> None:
    """The launcher's channel is gone (an SSH connection dropped): leave, with our children."""
    while os.read(sys.stdin.fileno(), 65536):
        pass
    end_descendants(grace=1.0)
    shm.release()
    shm.sweep()
    os._exit(EXIT_CHANNEL_CLOSED)


if __name__ == "__main__":
    sys.exit(main())
