"""HMAC-SHA256 and a constant-time comparison, from the interpreter's built-in SHA-256.

Who uses it: the handshake proofs (``protocol.proof``), the master's stateless challenge
tickets (``auth.Gate``) and the shared-memory probe (``shm``).  Why not ``hmac``: it (and
``hashlib``) loads OpenSSL's libcrypto at import, 3.4 MiB of every worker's resident memory
for two MACs per connection.  The construction is RFC 2104's; ``tests/test_protocol.py``
checks it against ``hmac`` on RFC 4231's test vectors.  Where the interpreter was built
without its own SHA-256, ``hashlib``'s is used.
"""

from __future__ import annotations

from _operator import _compare_digest as compare_digest  # what hmac.compare_digest falls back to

try:
    from _sha256 import sha256  # CPython up to 3.11
except ImportError:  # pragma: no cover - depends on the interpreter
    try:
        from _sha2 import sha256  # CPython 3.12 and later
    except ImportError:
        from hashlib import sha256

__all__ = ["compare_digest", "hmac_sha256", "sha256"]

_BLOCK = 64  # SHA-256's block size in bytes
_INNER = bytes(x ^ 0x36 for x in range(256))
_OUTER = bytes(x ^ 0x5C for x in range(256))


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 of *message* under *key* (the 32-byte digest)."""
    if len(key) > _BLOCK:
        key = sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = sha256(key.translate(_INNER))
    inner.update(message)
    return sha256(key.translate(_OUTER) + inner.digest()).digest()
