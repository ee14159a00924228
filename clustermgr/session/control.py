"""The session's control channel, and where sessions live on disk.

A session daemon binds a ZeroMQ ROUTER on 127.0.0.1; a client dials it with a DEALER and
proves it holds the session's secret (from the 0600 credential file) with the runtime's
HMAC challenge-response, both ways, before anything else is accepted::

    C -> D  HELLO     {"nonce": cn}
    D -> C  CHALLENGE {"nonce": sn, "proof": HMAC(secret, "session" | cn | sn)}
    C -> D  AUTH      {"proof": HMAC(secret, "client" | cn | sn), "client_nonce": cn, "nonce": sn}
    D -> C  WELCOME {}  or  REFUSED {"reason": ...}

``sn`` is a ticket the daemon can check without remembering it, and every message before
AUTH is bounded in size, nesting and replies (``clustermgr/auth.py``).  Then each request
is ``[b"REQ", json, *blobs]`` and each answer ``[b"OK", json, *blobs]`` or
``[b"ERR", {"error": ...}]`` (``{"reauth": true}`` when the daemon no longer knows the
client, which then authenticates again).  Blobs are task payloads (cloudpickle), which the
daemon stores without unpickling; the daemon never unpickles anything a client sends.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Any

import zmq

from .. import protocol as P
from ..auth import Gate, RejectLog, ReplyBudget, client_auth
from ..errors import AuthError, ClusterError

ROLE_DAEMON, ROLE_CLIENT = b"session", b"client"


class SessionError(ClusterError):
    """A session could not be found, reached, or asked to do something."""


def home() -> Path:
    """``$CLUSTERMGR_HOME``, else ``$XDG_STATE_HOME/clustermgr``, else
    ``~/.local/state/clustermgr``; created with mode 0700."""
    root = os.environ.get("CLUSTERMGR_HOME") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "clustermgr")
    path = Path(root) / "sessions"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        for p in (path.parent, path):
            os.chmod(p, 0o700)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"{path} is not writable")
    except (FileExistsError, NotADirectoryError):
        raise SessionError(f"CLUSTERMGR_HOME {root!r} is not a folder: point CLUSTERMGR_HOME at a "
                           "folder of your own (sessions live in its sessions/ subfolder)") from None
    except OSError as exc:  # not allowed, a read-only or special file system, ...
        raise SessionError(f"cannot use {root!r} for sessions ({exc.strerror or exc}): point "
                           "CLUSTERMGR_HOME at a folder you can write") from None
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
        self.secret = secret
        try:
            self._authenticate()
        except BaseException:
            self.close()
            raise

    def _authenticate(self) -> None:
        cn = P.new_nonce()
        self._send(b"HELLO", {"nonce": cn.hex()})
        kind, msg, _ = self._recv()
        try:
            if kind != b"CHALLENGE":
                raise AuthError(f"expected CHALLENGE, got {kind[:20]!r}")
            answer = client_auth(self.secret, ROLE_DAEMON, ROLE_CLIENT, cn, msg)
        except AuthError as exc:
            raise SessionError("the session daemon could not prove it holds the session's "
                               f"secret: {exc}") from None
        self._send(b"AUTH", answer)
        kind, msg, _ = self._recv()
        if kind != b"WELCOME":
            raise SessionError(f"the session refused this client: {msg.get('reason', kind)}")

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
        if kind == b"ERR" and msg.get("reauth"):  # the daemon forgot us; nothing was done
            self._authenticate()
            self._send(b"REQ", {"op": op, **args}, list(blobs))
            kind, msg, out = self._recv()
        if kind != b"OK":
            raise SessionError(msg.get("error", "the session daemon refused the request"))
        return msg, out

    def close(self) -> None:
        self.sock.close(linger=0)


class Server:
    """The daemon's side: authenticate peers, hand requests to *handler*.

    Called only from the daemon's loop thread.  Nothing a peer sends can make
    :meth:`handle_one` raise: unauthenticated input is bounded and dropped (counted in
    ``rejects``), and a handler's error goes back to its client as ``ERR``.
    """

    #: Authenticated clients remembered at once; the least recently active is forgotten
    #: first (it authenticates again on its next request).
    MAX_CLIENTS = 1024

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.ctx: zmq.Context = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.gate = Gate(secret, ROLE_DAEMON, ROLE_CLIENT)
        self.replies = ReplyBudget()
        self.rejects = RejectLog("clustermgr session daemon")
        self.authed: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def poll(self, timeout: float) -> bool:
        return bool(self.sock.poll(int(timeout * 1000)))

    def handle_one(self, handler: Any) -> None:
        """Read one message (poll first) and answer it."""
        frames = self.sock.recv_multipart(copy=False)
        peer = frames[0].bytes
        if peer in self.authed:
            self.authed.move_to_end(peer)
            self._request(peer, frames, handler)
            return
        try:
            self._handshake(peer, frames)
        except (P.ProtocolError, AuthError) as exc:
            self.rejects.note(str(exc))
            self._reply_unauthenticated(peer, b"REFUSED", {"reason": str(exc)})

    def _handshake(self, peer: bytes, frames: list) -> None:
        kind = frames[1].bytes[:16] if len(frames) > 1 else b""
        if kind == b"REQ":  # a client this daemon forgot (or never knew): it may try again
            self.rejects.note("a request before authentication")
            self._reply_unauthenticated(peer, b"ERR", {"error": "not authenticated", "reauth": True})
            return
        if kind not in (b"HELLO", b"AUTH") or len(frames) != 3:
            raise P.ProtocolError(f"unexpected message {kind!r} of {len(frames) - 1} frames "
                                  "before authentication")
        msg = P.load_json(frames[2], limit=P.HANDSHAKE_LIMIT)
        if kind == b"HELLO":
            self._reply_unauthenticated(peer, b"CHALLENGE", self.gate.challenge(peer, msg))
            return
        self.gate.verify(peer, msg)
        self.replies.forget(peer)
        self.authed[peer] = None
        if len(self.authed) > self.MAX_CLIENTS:
            self.authed.popitem(last=False)
        self._reply(peer, b"WELCOME", {})

    def _request(self, peer: bytes, frames: list, handler: Any) -> None:
        try:
            if len(frames) < 3 or frames[1].bytes != b"REQ":
                raise P.ProtocolError("expected [REQ, json, *blobs]")
            msg = P.load_json(frames[2], limit=64 << 20)
            answer, blobs = handler(msg, [f.bytes for f in frames[3:]])
        except Exception as exc:  # noqa: BLE001 - the client gets the error text
            self._reply(peer, b"ERR", {"error": f"{type(exc).__name__}: {exc}"})
            return
        self._reply(peer, b"OK", answer, blobs)

    def _reply_unauthenticated(self, peer: bytes, kind: bytes, msg: dict) -> None:
        if self.replies.take(peer):  # a peer that never reads cannot fill our queue
            self._reply(peer, kind, msg)

    def _reply(self, peer: bytes, kind: bytes, msg: dict, blobs: list[bytes] = ()) -> None:  # type: ignore[assignment]
        self.sock.send_multipart([peer, kind, P.dump_json(msg), *blobs])

    def tick(self) -> None:
        """Periodic upkeep (the daemon loop calls it a few times a second)."""
        self.gate.expire()
        self.rejects.flush()

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
