"""The session's control channel, and where sessions live on disk.

A session daemon binds a ZeroMQ ROUTER on 127.0.0.1; a client dials it with a DEALER and
proves it holds the session's secret (from the 0600 credential file) with the runtime's
HMAC challenge-response, both ways, before anything else is accepted::

    C -> D  HELLO     {"nonce": cn}
    D -> C  CHALLENGE {"nonce": sn, "proof": HMAC(secret, "session" | cn | sn)}
    C -> D  AUTH      {"proof": HMAC(secret, "client" | cn | sn)}
    D -> C  WELCOME {}  or  REFUSED {"reason": ...}

Then each request is ``[b"REQ", json, *blobs]`` and each answer ``[b"OK", json, *blobs]``
or ``[b"ERR", {"error": ...}]``.  Blobs are task payloads (cloudpickle), which the daemon
stores without unpickling; the daemon never unpickles anything a client sends.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import zmq

from .. import protocol as P
from ..errors import ClusterError

ROLE_DAEMON, ROLE_CLIENT = b"session", b"client"


class SessionError(ClusterError):
    """A session could not be found, reached, or asked to do something."""


def home() -> Path:
    """``$CLUSTERMGR_HOME``, else ``$XDG_STATE_HOME/clustermgr``, else
    ``~/.local/state/clustermgr``; created with mode 0700."""
    root = os.environ.get("CLUSTERMGR_HOME") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "clustermgr")
    path = Path(root) / "sessions"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for p in (path.parent, path):
        os.chmod(p, 0o700)
    return path


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to *path* with mode 0600, atomically."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def read_credential(sdir: Path) -> dict[str, Any]:
    path = sdir / "credential"
    st = path.stat()
    if st.st_mode & 0o077:
        raise SessionError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); "
                           "chmod 600 it: it holds the session's secret")
    return json.loads(path.read_text())


class Client:
    """One authenticated connection to a session daemon."""

    def __init__(self, address: str, secret: bytes, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.ctx: zmq.Context = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        try:
            cn = P.new_nonce()
            self._send(b"HELLO", {"nonce": cn.hex()})
            kind, msg, _ = self._recv()
            sn = P.decode_nonce(msg.get("nonce"))
            if kind != b"CHALLENGE" or not P.check_proof(secret, ROLE_DAEMON, cn, sn, msg.get("proof")):
                raise SessionError("the session daemon could not prove it holds the session's secret")
            self._send(b"AUTH", {"proof": P.proof(secret, ROLE_CLIENT, cn, sn)})
            kind, msg, _ = self._recv()
            if kind != b"WELCOME":
                raise SessionError(f"the session refused this client: {msg.get('reason', kind)}")
        except BaseException:
            self.close()
            raise

    def _send(self, kind: bytes, msg: dict, blobs: list[bytes] = ()) -> None:  # type: ignore[assignment]
        self.sock.send_multipart([kind, P.dump_json(msg), *blobs])

    def _recv(self) -> tuple[bytes, dict, list]:
        if not self.sock.poll(int(self.timeout * 1000)):
            raise SessionError(f"the session daemon did not answer within {self.timeout} s; "
                               "is it running? (clustermgr ps)")
        frames = self.sock.recv_multipart()
        return frames[0], P.load_json(frames[1]), frames[2:]

    def request(self, op: str, blobs: list[bytes] = (), **args: Any) -> tuple[dict, list]:  # type: ignore[assignment]
        self._send(b"REQ", {"op": op, **args}, list(blobs))
        kind, msg, out = self._recv()
        if kind != b"OK":
            raise SessionError(msg.get("error", "the session daemon refused the request"))
        return msg, out

    def close(self) -> None:
        self.sock.close(linger=0)


class Server:
    """The daemon's side: authenticate peers, hand requests to *handler*."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.ctx: zmq.Context = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.pending: dict[bytes, bytes] = {}   # peer -> our nonce (challenge sent)
        self.nonces: dict[bytes, bytes] = {}    # peer -> its nonce
        self.authed: set[bytes] = set()

    def poll(self, timeout: float) -> bool:
        return bool(self.sock.poll(int(timeout * 1000)))

    def handle_one(self, handler: Any) -> None:
        """Read one message (poll first) and answer it."""
        frames = self.sock.recv_multipart()
        peer, kind = frames[0], frames[1]
        try:
            msg = P.load_json(frames[2]) if len(frames) > 2 else {}
        except P.ProtocolError:
            return  # garbage: dropped
        if kind == b"HELLO":
            cn, sn = P.decode_nonce(msg.get("nonce")), P.new_nonce()
            self.pending[peer], self.nonces[peer] = sn, cn
            self._reply(peer, b"CHALLENGE",
                        {"nonce": sn.hex(), "proof": P.proof(self.secret, ROLE_DAEMON, cn, sn)})
        elif kind == b"AUTH" and peer in self.pending:
            sn, cn = self.pending.pop(peer), self.nonces.pop(peer)
            if P.check_proof(self.secret, ROLE_CLIENT, cn, sn, msg.get("proof")):
                self.authed.add(peer)
                self._reply(peer, b"WELCOME", {})
            else:
                self._reply(peer, b"REFUSED", {"reason": "wrong credential"})
        elif kind == b"REQ" and peer in self.authed:
            try:
                answer, blobs = handler(msg, frames[3:])
                self._reply(peer, b"OK", answer, blobs)
            except Exception as exc:  # noqa: BLE001 - the client gets the error text
                self._reply(peer, b"ERR", {"error": f"{type(exc).__name__}: {exc}"})
        else:
            self._reply(peer, b"ERR", {"error": "not authenticated"})

    def _reply(self, peer: bytes, kind: bytes, msg: dict, blobs: list[bytes] = ()) -> None:  # type: ignore[assignment]
        self.sock.send_multipart([peer, kind, P.dump_json(msg), *blobs])

    def close(self) -> None:
        self.sock.close(linger=0)


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll *check* until it returns a truthy value (files and processes of another
    process have no event to wait on here); SessionError after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SessionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
