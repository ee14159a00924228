"""The gate in front of every listener: what an unauthenticated peer can cost us.

Used by the master's ROUTER (``master.py``, which the elastic endpoints share) and by the
session daemon's control socket (``session/control.py``).  Three rules, each bounding what
a peer without the secret can do:

- **No state per pending handshake.**  The server nonce of a CHALLENGE is a *ticket*: its
  expiry and an HMAC, under a key private to this process, of the peer's routing id, its
  nonce and that expiry.  The peer echoes both nonces in AUTH, and the listener recomputes
  the ticket instead of remembering it, so 10,000 unfinished handshakes cost nothing and
  can never crowd out a peer that holds the secret.  Only a ticket whose AUTH carried a
  valid proof is remembered (until it expires), so that an AUTH cannot be replayed; an
  unauthenticated peer cannot add to that set.
- **Bounded replies.**  Each unauthenticated routing id is answered a few times at most
  (``ReplyBudget``), so a peer that sends without reading cannot grow our send queue.
- **Bounded logging.**  Rejected messages are counted; a WARNING says how many, at most
  once per ``interval`` (``RejectLog``).

Parsing itself (sizes checked before any copy, JSON depth) is ``protocol.load_json`` and
``protocol.unpack_header``.
"""

from __future__ import annotations

import collections
import logging
import os
import time

from . import protocol as P
from .digest import compare_digest, hmac_sha256
from .errors import AuthError

log = logging.getLogger("clustermgr")

#: A CHALLENGE must be answered within this many seconds.
HANDSHAKE_TIMEOUT = 30.0
_EXPIRY_BYTES = 8
TICKET_BYTES = _EXPIRY_BYTES + 24


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


class Gate:
    """Server side of the challenge-response, for one listener and one secret.

    ``challenge`` answers a HELLO, ``verify`` checks an AUTH; both raise :class:`AuthError`
    with a reason that may be sent back to the peer.  Called on the listener's own thread.
    """

    def __init__(self, secret: bytes, server_role: bytes, client_role: bytes,
                 timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.secret = secret
        self.server_role, self.client_role = server_role, client_role
        self.timeout = timeout
        self._key = os.urandom(32)
        self._used: dict[bytes, int] = {}  # ticket -> expiry (ms), for tickets already spent
        # per second: [second, challenges sent, AUTHs accepted], over the last `timeout` s
        self._recent: collections.deque[list[int]] = collections.deque()

    def _mac(self, identity: bytes, cn: bytes, expiry: bytes) -> bytes:
        digest = hmac_sha256(self._key, identity + b"|" + cn + b"|" + expiry)
        return digest[:TICKET_BYTES - _EXPIRY_BYTES]

    def challenge(self, identity: bytes, hello: dict) -> dict[str, str]:
        """The CHALLENGE body for a HELLO from *identity*."""
        cn = P.decode_nonce(hello.get("nonce"))
        expiry = (_now_ms() + int(self.timeout * 1000)).to_bytes(_EXPIRY_BYTES, "big")
        sn = expiry + self._mac(identity, cn, expiry)
        self._count(1)
        return {"nonce": sn.hex(), "proof": P.proof(self.secret, self.server_role, cn, sn)}

    def verify(self, identity: bytes, auth: dict) -> None:
        """Accept an AUTH from *identity*, or raise AuthError saying why not."""
        cn = P.decode_nonce(auth.get("client_nonce"))
        sn = P.decode_nonce(auth.get("nonce"), TICKET_BYTES)
        expiry = int.from_bytes(sn[:_EXPIRY_BYTES], "big")
        if not compare_digest(sn[_EXPIRY_BYTES:], self._mac(identity, cn, sn[:_EXPIRY_BYTES])):
            raise AuthError("AUTH does not answer a CHALLENGE of this listener: send HELLO first")
        now = _now_ms()
        if now > expiry:
            raise AuthError("the handshake expired; start again with HELLO")
        if not P.check_proof(self.secret, self.client_role, cn, sn, auth.get("proof")):
            raise AuthError("authentication failed: the peer does not hold this cluster's "
                            "secret (check CLUSTERMGR_COOKIE or the cookie file)")
        if sn in self._used:
            raise AuthError("this AUTH was already used; start again with HELLO")
        self._used[sn] = expiry
        self._count(2)
        self.expire(now)

    def _count(self, column: int) -> None:
        second = int(time.monotonic())
        if not self._recent or self._recent[-1][0] != second:
            self._recent.append([second, 0, 0])
        self._recent[-1][column] += 1
        while self._recent and self._recent[0][0] < second - self.timeout:
            self._recent.popleft()

    def pending(self) -> int:
        """About how many handshakes were started within the timeout and not finished."""
        horizon = time.monotonic() - self.timeout
        live = [row for row in list(self._recent) if row[0] >= horizon]
        return max(0, sum(r[1] for r in live) - sum(r[2] for r in live))

    def expire(self, now_ms: int | None = None) -> None:
        """Forget spent tickets that could no longer be replayed anyway."""
        now = _now_ms() if now_ms is None else now_ms
        for sn in [sn for sn, expiry in self._used.items() if expiry < now]:
            del self._used[sn]


def client_auth(secret: bytes, server_role: bytes, client_role: bytes, cn: bytes,
                challenge: dict) -> dict[str, str]:
    """Client side: check the server's proof in *challenge*, return the AUTH fields.

    Raises AuthError when the server does not hold *secret* (nothing it sends may then be
    run)."""
    sn = P.decode_nonce(challenge.get("nonce"), TICKET_BYTES)
    if not P.check_proof(secret, server_role, cn, sn, challenge.get("proof")):
        raise AuthError("the server holds a different secret than this process (check "
                        "CLUSTERMGR_COOKIE or the cookie file); refusing to run anything it sends")
    return {"proof": P.proof(secret, client_role, cn, sn), "client_nonce": cn.hex(),
            "nonce": sn.hex()}


class ReplyBudget:
    """How many answers each unauthenticated routing id may still get (LRU-bounded)."""

    def __init__(self, per_peer: int = 8, peers: int = 4096) -> None:
        self.per_peer, self.peers = per_peer, peers
        self._sent: collections.OrderedDict[bytes, int] = collections.OrderedDict()

    def take(self, identity: bytes) -> bool:
        """True when *identity* may be answered once more (and count it)."""
        n = self._sent.pop(identity, 0)
        self._sent[identity] = n + 1
        if len(self._sent) > self.peers:
            self._sent.popitem(last=False)
        return n < self.per_peer

    def forget(self, identity: bytes) -> None:
        """*identity* authenticated: it is no longer counted here."""
        self._sent.pop(identity, None)


class RejectLog:
    """Counts rejected messages; logs the first at once, then a summary per *interval*."""

    def __init__(self, where: str, interval: float = 30.0) -> None:
        self.where = where
        self.interval = interval
        self.total = 0
        self._since = 0
        self._last_reason = ""
        self._logged_at = float("-inf")

    def note(self, reason: str) -> None:
        self.total += 1
        self._since += 1
        self._last_reason = reason
        self.flush()

    def flush(self, now: float | None = None) -> None:
        """Log the count so far if the interval has passed (also called from ticks)."""
        now = time.monotonic() if now is None else now
        if not self._since or now - self._logged_at < self.interval:
            return
        first = self._logged_at == float("-inf")
        self._logged_at = now
        count, self._since = self._since, 0
        if first and count == 1:
            log.warning("%s: dropped a message from an unauthenticated or misbehaving peer: %s "
                        "(further drops are summarised every %.0f s)", self.where,
                        self._last_reason, self.interval)
        else:
            log.warning("%s: dropped %d messages from unauthenticated or misbehaving peers "
                        "(%d in all); the latest: %s", self.where, count, self.total,
                        self._last_reason)

