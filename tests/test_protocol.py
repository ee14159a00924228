"""Wire format, handshake proofs, version fingerprint, secrets: pure units."""

import os

import pytest

from clustermgr import digest
from clustermgr import protocol as P
from clustermgr.errors import AuthError, ProtocolError


def test_header_round_trip():
    raw = P.pack_header(P.Kind.CALL, P.Flag.WANT_VALUE, 1, 7, 2**40, 99)
    assert len(raw) == P.HEADER_SIZE == 28
    hdr = P.unpack_header(raw)
    assert (hdr.kind, hdr.flags, hdr.src, hdr.dst, hdr.id, hdr.ref) == (
        P.Kind.CALL, P.Flag.WANT_VALUE, 1, 7, 2**40, 99)


@pytest.mark.parametrize("frame, why", [
    (b"", "header of 0 bytes"),
    (b"x" * 29, "header of 29 bytes"),
    (bytes([9]) + bytes(27), "protocol version 9"),
    (bytes([1, 250]) + bytes(26), "unknown message kind 250"),
])
def test_malformed_headers_are_rejected(frame, why):
    with pytest.raises(ProtocolError, match=why):
        P.unpack_header(frame)


def test_json_bodies_are_bounded_and_typed():
    assert P.load_json(P.dump_json({"a": 1})) == {"a": 1}
    with pytest.raises(ProtocolError, match="not JSON"):
        P.load_json(b"\x80\x05garbage")
    with pytest.raises(ProtocolError, match="not a JSON object"):
        P.load_json(b"[1]")
    with pytest.raises(ProtocolError, match="too large"):
        P.load_json(b" " * (2 << 20))


def test_proofs_depend_on_secret_role_and_both_nonces():
    s, cn, sn = P.new_secret(), P.new_nonce(), P.new_nonce()
    good = P.proof(s, b"worker", cn, sn)
    assert P.check_proof(s, b"worker", cn, sn, good)
    assert not P.check_proof(P.new_secret(), b"worker", cn, sn, good)
    assert not P.check_proof(s, b"master", cn, sn, good)
    assert not P.check_proof(s, b"worker", sn, cn, good)
    assert not P.check_proof(s, b"worker", cn, sn, None)


@pytest.mark.parametrize("key, msg, mac", [  # RFC 4231, test cases 1, 2 and 6
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
])
def test_the_built_in_hmac_is_rfc_4231s(key, msg, mac):
    assert digest.hmac_sha256(key, msg).hex() == mac


def test_the_built_in_hmac_agrees_with_the_standard_library():
    import hashlib
    import hmac

    for n in (0, 1, 32, 63, 64, 65, 200):
        key, msg = os.urandom(n), os.urandom(3 * n + 1)
        assert digest.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()
    assert digest.compare_digest(b"abc", b"abc") and not digest.compare_digest(b"abc", b"abd")


def test_a_worker_loads_no_openssl(tmp_path):
    import subprocess
    import sys

    code = ("import sys, clustermgr.worker.loop, clustermgr.worker.__main__; "
            "print('_hashlib' in sys.modules, 'ctypes' in sys.modules)")
    # a plain interpreter: not the outside suites' start-up hook other tests may have set
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTERMGR_OUTSIDE", "PYTHON"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.split() == ["False", "False"]  # 3.4 MiB (libcrypto) and ctypes spared


def test_version_mismatch_names_both_sides():
    mine = P.versions()
    assert P.version_mismatch(mine, dict(mine)) is None
    other = dict(mine, cloudpickle="0.0.1")
    msg = P.version_mismatch(mine, other)
    assert f"cloudpickle {mine['cloudpickle']}" in msg and "cloudpickle 0.0.1" in msg


def test_nonce_validation():
    with pytest.raises(AuthError):
        P.decode_nonce("zz")
    with pytest.raises(AuthError):
        P.decode_nonce("00")


def test_secret_from_env_is_removed_from_environment():
    env = {"CLUSTERMGR_COOKIE": "ab" * 16}
    assert P.read_secret_from_env(env) == bytes.fromhex("ab" * 16)
    assert "CLUSTERMGR_COOKIE" not in env


def test_cookie_file_must_be_private(tmp_path):
    path = tmp_path / "cookie"
    path.write_text("cd" * 16)
    os.chmod(path, 0o644)
    with pytest.raises(AuthError, match="chmod 600"):
        P.read_cookie_file(str(path))
    os.chmod(path, 0o600)
    assert P.read_cookie_file(str(path)) == bytes.fromhex("cd" * 16)
