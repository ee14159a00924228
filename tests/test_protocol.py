"""Wire format, handshake proofs, version fingerprint, secrets: pure units."""

import os

import pytest

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
