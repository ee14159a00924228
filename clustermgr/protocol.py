"""Wire format and handshake.

Every message is a ZeroMQ multipart message::

    [header, body, buffer_1, ..., buffer_n]        (the master's ROUTER adds the peer
                                                    routing id in front)

``header`` is 28 bytes, little endian, parsed without touching the body::

    offset  size  field
    0       1     protocol version (PROTOCOL_VERSION)
    1       1     kind   (Kind)
    2       2     flags  (Flag bits)
    4       4     src    sender's process id (1 = master)
    8       4     dst    receiver's process id; the master relays when dst is not 1
    12      8     id     message id, unique per sender (a call's id is its Future's id)
    20      8     ref    the id this message answers (RESULT), or an object id

A ``BUNDLE`` (``ref`` = how many) carries several complete messages of one sender, each
a header and one body (no out-of-band buffers), in the order they were sent, packed into
one frame::

    [bundle_header, (u32 body length | header | body) * n]

It is how tiny calls and results travel when many are in flight (``transport.Cork``):
one ZeroMQ frame, one wake-up and one read for many; the receiver handles each inner
message exactly as if it had come alone (its own id, answer, revocation, relay).

Because the header stands apart, a body that fails to deserialize can still be answered
with an error addressed to the right call.  Bodies are ``serialize.dumps`` frames
(cloudpickle protocol 5 + out-of-band buffers) for CALL / RESULT / FETCH / CHANNEL
messages, UTF-8 text for OUTPUT, and JSON for the handshake and control messages (never a
pickle, so nothing needs unpickling before the peer is authenticated).

Handshake (worker W dials master M; nothing is unpickled by either side before it ends)::

    W -> M  HELLO      {"nonce": cn}
    M -> W  CHALLENGE  {"nonce": sn, "proof": HMAC(secret, "master" | cn | sn)}
    W -> M  AUTH       {"proof": HMAC(secret, "worker" | cn | sn), "client_nonce": cn,
                        "nonce": sn, "versions": {...}, ...}
    M -> W  WELCOME    {"id": 3, "settings": {...}}   or   REFUSED {"reason": "..."}

Both proofs are checked with a constant-time comparison (``digest.compare_digest``); W
verifies M's proof too, since a worker must not run pickles from a master that does not
hold the secret either.  The secret itself never crosses the wire.  ``sn`` is a ticket M
can check without having stored anything for the handshake (``auth.Gate``); before AUTH
succeeds every frame is bounded in size (checked before it is copied), count and JSON
nesting.
"""

from __future__ import annotations

import enum
import json
import os
import struct
import sys
from typing import Any, NamedTuple

from .digest import compare_digest, hmac_sha256, sha256
from .errors import AuthError, ProtocolError

PROTOCOL_VERSION = 1
MASTER_ID = 1
_HEADER = struct.Struct("<BBHIIQQ")
HEADER_SIZE = _HEADER.size
NONCE_BYTES = 16


class Kind(enum.IntEnum):
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    WELCOME = 4
    REFUSED = 5
    CALL = 10          # run a function; flags say what to send back
    RESULT = 11        # answer to CALL / FETCH / CHANNEL (ref = the asking message id)
    FETCH = 12         # fetch the value of a Future owned by the receiver (ref = its id)
    CHANNEL = 13       # an operation on a RemoteChannel owned by the receiver
    HEARTBEAT = 20
    INTERRUPT = 21     # interrupt the task running on the receiver
    OUTPUT = 22        # worker stdout / stderr text
    SHUTDOWN = 23      # master asks a worker to exit
    MEMBERS = 24       # master tells workers who is in the cluster (JSON)
    PEER_DIED = 25     # master tells workers a peer is gone (JSON)
    BYE = 26           # a worker says it is leaving
    REFS = 27          # reference counts for objects the receiver owns (JSON, refs.py)
    REVOKE = 28        # withdraw a CALL the receiver holds unstarted (ref = the CALL's id)
    BUNDLE = 29        # several messages of one sender to one receiver, as header/body pairs
    PREEMPT = 30       # a worker got its scheduler's preemption warning (JSON: the signal)


class Flag:
    """Bits of a header's flags (plain ints: the hot path tests them per message)."""

    NONE = 0
    ERROR = 1          # RESULT body is an exception
    WANT_VALUE = 2     # CALL: send the value back
    WANT_ACK = 4       # CALL: send back only completion (remotecall_wait)
    STDERR = 8         # OUTPUT came from stderr
    REVOKED = 16       # RESULT: the CALL was withdrawn before it started (REVOKE); no body


_KINDS = {k.value: k for k in Kind}


class Header(NamedTuple):
    """A parsed header (a tuple: made for every message, so made cheaply)."""

    kind: Kind
    flags: int
    src: int
    dst: int
    id: int
    ref: int


#: Inner messages per BUNDLE at most, and their bytes (the sender flushes at either).
BUNDLE_MAX = 64
BUNDLE_BYTES = 256 << 10
_LEN = struct.Struct("<I")


def pack_bundle(messages: list) -> bytes:
    """The body of a BUNDLE: *messages* is ``[header, body, header, body, ...]``."""
    parts = []
    for k in range(0, len(messages), 2):
        body = messages[k + 1]
        parts += (_LEN.pack(len(body)), messages[k], body)
    return b"".join(parts)


def unpack_bundle(frame: Any) -> list[tuple[Header, list]]:
    """The inner messages of a BUNDLE body, each ``(header, [header_view, body_view])``;
    ``ProtocolError`` if it is malformed (read only from authenticated peers)."""
    view = memoryview(getattr(frame, "buffer", frame))
    out = []
    off, end = 0, len(view)
    while off < end:
        start = off + 4 + HEADER_SIZE
        if start > end:
            raise ProtocolError("a truncated bundle")
        size = _LEN.unpack_from(view, off)[0]
        if start + size > end:
            raise ProtocolError("a truncated bundle")
        head = view[off + 4:start]
        out.append((unpack_header(head), [head, view[start:start + size]]))
        off = start + size
    return out


def pack_header(kind: int, flags: int, src: int, dst: int, mid: int = 0, ref: int = 0) -> bytes:
    return _HEADER.pack(PROTOCOL_VERSION, kind, flags, src, dst, mid, ref)


def unpack_header(frame: Any) -> Header:
    """Parse a header frame; raise :class:`ProtocolError` on anything malformed.  The size
    is checked before anything is copied (the frame may come from an unauthenticated peer)."""
    if len(frame) != HEADER_SIZE:
        raise ProtocolError(f"header of {len(frame)} bytes, expected {HEADER_SIZE}")
    version, kind, flags, src, dst, mid, ref = _HEADER.unpack(getattr(frame, "buffer", frame))
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    known = _KINDS.get(kind)
    if known is None:
        raise ProtocolError(f"unknown message kind {kind}")
    return Header(known, flags, src, dst, mid, ref)


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


#: Handshake bodies are a few hundred bytes; anything much larger is not a handshake.
HANDSHAKE_LIMIT = 16 << 10
#: Control messages nest two or three levels; a JSON body deeper than this is refused.
MAX_JSON_DEPTH = 16


def load_json(frame: Any, limit: int = 1 << 20, max_depth: int = MAX_JSON_DEPTH) -> dict:
    """Decode a JSON control body, or raise :class:`ProtocolError` (never anything else).

    Bounded for input from unauthenticated peers: the size is checked before the frame is
    copied, the nesting after decoding (the decoder's own recursion limit stops deeper
    input early, as a RecursionError caught here), and integers keep Python's digit limit.
    """
    if len(frame) > limit:
        raise ProtocolError(f"control message of {len(frame)} bytes is too large (limit {limit})")
    try:
        obj = json.loads(bytes(getattr(frame, "buffer", frame)))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise ProtocolError(f"control message is not JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("control message is not a JSON object")
    if _depth(obj) > max_depth:
        raise ProtocolError(f"control message nests deeper than {max_depth} levels")
    return obj


def _depth(obj: Any) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


# --- versions --------------------------------------------------------------------------

def versions() -> dict[str, str]:
    """The fingerprint both sides must share for pickles to mean the same thing."""
    import cloudpickle

    from . import __version__

    return {
        "python": "{}.{}".format(*sys.version_info[:2]),
        "cloudpickle": cloudpickle.__version__,
        "clustermgr": __version__,
    }


def version_mismatch(master: dict, worker: dict) -> str | None:
    """A message naming both sides' versions, or None when they agree."""
    keys = ("python", "cloudpickle", "clustermgr")
    if all(master.get(k) == worker.get(k) for k in keys):
        return None
    show = lambda v: ", ".join(f"{k} {v.get(k, '?')}" for k in keys)  # noqa: E731
    return (
        f"version mismatch: master has {show(master)}; worker has {show(worker)}. "
        "Install the same versions on both sides (same Python minor version, same "
        "cloudpickle and clustermgr)."
    )


# --- secrets and proofs ----------------------------------------------------------------

def new_secret() -> bytes:
    return os.urandom(32)


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def proof(secret: bytes, role: bytes, client_nonce: bytes, server_nonce: bytes) -> str:
    return hmac_sha256(secret, role + b"|" + client_nonce + b"|" + server_nonce).hex()


def check_proof(secret: bytes, role: bytes, cn: bytes, sn: bytes, claimed: Any) -> bool:
    if not isinstance(claimed, str):
        return False
    return compare_digest(proof(secret, role, cn, sn).encode(), claimed.encode())


def decode_nonce(value: Any, size: int = NONCE_BYTES) -> bytes:
    """A nonce of *size* bytes from its hex form; AuthError for anything else."""
    if not isinstance(value, str) or len(value) != 2 * size:
        raise AuthError("malformed nonce in handshake")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise AuthError("malformed nonce in handshake") from None


def curve_keys(secret: bytes, role: bytes) -> tuple[bytes, bytes]:
    """A CurveZMQ key pair (z85 public, z85 secret) derived from the cluster secret, so that
    only holders of the secret know the master's public key and can complete the
    encrypted ZeroMQ handshake at all."""
    import zmq
    from zmq.utils import z85

    private = z85.encode(sha256(b"clustermgr-curve|" + role + b"|" + secret).digest())
    return zmq.curve_public(private), private


def is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("localhost", "::1")


def read_secret_from_env(environ: dict | None = None) -> bytes | None:
    """The secret from ``CLUSTERMGR_COOKIE`` (hex or text) or ``CLUSTERMGR_COOKIE_FILE``.

    The variables are removed from the environment so user code and its subprocesses never
    see them.  A cookie file must not be readable by group or others.
    """
    env = os.environ if environ is None else environ
    cookie = env.pop("CLUSTERMGR_COOKIE", None)
    path = env.pop("CLUSTERMGR_COOKIE_FILE", None)
    if cookie is not None:
        return cookie_bytes(cookie)
    if path:
        return read_cookie_file(path)
    return None


def read_cookie_file(path: str) -> bytes:
    mode = os.stat(path).st_mode
    if mode & 0o077:
        raise AuthError(
            f"cookie file {path} is readable by others (mode {oct(mode & 0o777)}); "
            f"run 'chmod 600 {path}' and try again"
        )
    with open(path) as fh:
        return cookie_bytes(fh.read().strip())


def cookie_bytes(cookie: str) -> bytes:
    """Secrets travel as hex; any other text is used as is (a user-chosen cookie)."""
    try:
        return bytes.fromhex(cookie)
    except ValueError:
        return cookie.encode()
