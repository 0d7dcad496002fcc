"""Signed runs (SPEC 5): keys, the manifest, and the parser's signature and sender rules.

Signatures are checked against ``cryptography``'s own Ed25519 verification (an independent
reference for what we wrote), and the unsigned bytes are checked unchanged."""

from __future__ import annotations

import os
import stat
import struct

import pytest

from distro_kernels import wire
from distro_kernels.wire import format as fmt
from distro_kernels.wire import signing
from test_wire_helpers import make_payload

# cryptography is a test dependency (the [signing] extra): missing, this module fails to
# import rather than skipping
import cryptography  # noqa: F401

LAYOUT = wire.Layout([(128, 64), (100,), (3, 5), (1,)], chunk=64, k=8)
WORLD = 3


@pytest.fixture(scope="module")
def keys():
    return {p: signing.generate_keypair() for p in range(WORLD)}


@pytest.fixture(scope="module")
def manifest(keys):
    return signing.Manifest({p: pub for p, (_, pub) in keys.items()}, coordinator=0,
                            nonce=bytes(range(16)))


def _payload(manifest, sender=1, step=3, codec="sign", seed=0):
    return make_payload(LAYOUT, codec, seed=seed, step=step, sender=sender,
                        run_id=manifest.run_id)


def test_signed_bytes_layout_and_independent_verification(keys, manifest):
    p = _payload(manifest)
    plain = p.to_bytes()
    signed = p.to_bytes(signing_key=keys[1][0])
    assert len(signed) == len(plain) + 64
    # header: only the flags and the total length differ
    h_plain, h_signed = wire.read_header(memoryview(plain), 1 << 30), \
        wire.read_header(memoryview(signed), 1 << 30)
    assert h_plain.flags == 0 and h_signed.flags == wire.FLAG_SIGNED
    assert h_signed.total_length == len(signed)
    assert signed[96:len(plain) - 16] == plain[96:-16]  # the sections are the same bytes
    # trailer: BLAKE2b-128 of everything before it, then the signature over all before it
    body_end = len(signed) - 64 - 16
    assert signed[body_end:-64] == fmt.digest16(signed[:body_end])
    keys[1][0].public_key().verify(signed[-64:], signed[:-64])  # raises if wrong
    # deterministic (Ed25519 is), and sign_payload turns unsigned bytes into the same
    assert p.to_bytes(signing_key=keys[1][0]) == signed
    assert signing.sign_payload(plain, keys[1][0]) == signed
    with pytest.raises(ValueError):
        signing.sign_payload(signed, keys[1][0])


def test_unsigned_bytes_are_unchanged_by_the_signing_code(manifest):
    # the flags word stays 0 and the message is header + sections + digest exactly
    p = _payload(manifest, codec="f32")
    data = p.to_bytes()
    assert struct.unpack_from("<I", data, fmt.OFF_FLAGS)[0] == 0
    assert data[-16:] == fmt.digest16(data[:-16])
    assert wire.Payload.from_bytes(data, LAYOUT) == p


@pytest.mark.parametrize("codec", ["sign", "f32", "bf16"])
def test_signed_round_trip_with_manifest(keys, manifest, codec):
    for sender in range(WORLD):
        p = _payload(manifest, sender=sender, codec=codec, seed=sender)
        data = p.to_bytes(signing_key=keys[sender][0])
        q = wire.Payload.from_bytes(data, LAYOUT, manifest=manifest, expect_sender=sender,
                                    expect_step=3, expect_run_id=manifest.run_id)
        assert q == p
        # a parser without a manifest reads it too (signature unchecked)
        assert wire.Payload.from_bytes(data, LAYOUT) == p
        st = wire.stats(data, LAYOUT)
        assert st.total_bytes == len(data) and st.framing_bytes >= 96 + 16 + 64


def test_missing_signature_is_refused(manifest):
    data = _payload(manifest).to_bytes()
    with pytest.raises(wire.MissingSignature) as e:
        wire.Payload.from_bytes(data, LAYOUT, manifest=manifest)
    assert isinstance(e.value, wire.SignatureError) and "[signature_missing]" in str(e.value)


def test_impersonation_with_own_key_is_refused(keys, manifest):
    # peer 2 signs a payload that says sender 1
    data = _payload(manifest, sender=1).to_bytes(signing_key=keys[2][0])
    with pytest.raises(wire.BadSignature):
        wire.Payload.from_bytes(data, LAYOUT, manifest=manifest)


def test_unknown_sender_is_refused(keys, manifest):
    outsider, _ = signing.generate_keypair()
    data = _payload(manifest, sender=7).to_bytes(signing_key=outsider)
    with pytest.raises(wire.UnknownSender):
        wire.Payload.from_bytes(data, LAYOUT, manifest=manifest)


def test_other_manifests_run_is_refused(keys, manifest):
    other = signing.Manifest(manifest.peers, nonce=bytes(16))  # same keys, another run
    assert other.run_id != manifest.run_id
    data = make_payload(LAYOUT, "sign", sender=1, run_id=other.run_id).to_bytes(
        signing_key=keys[1][0])
    with pytest.raises(wire.WrongRun):
        wire.Payload.from_bytes(data, LAYOUT, manifest=manifest)
    wire.Payload.from_bytes(data, LAYOUT, manifest=other)


def test_every_altered_byte_is_refused(keys, manifest):
    data = _payload(manifest, codec="f32").to_bytes(signing_key=keys[1][0])
    n = len(data)
    # flip a byte in the header, a section, the digest and the signature; redo the digest
    # where the attacker can (it cannot redo the signature)
    for pos in (fmt.OFF_STEP, 100, n - 64 - 16 - 1, n - 64 - 1, n - 1, n - 40):
        b = bytearray(data)
        b[pos] ^= 0x01
        if pos < n - 80:
            end = n - 80
            b[end:n - 64] = fmt.digest16(bytes(b[:end]))
        with pytest.raises(wire.PayloadError) as e:
            wire.Payload.from_bytes(bytes(b), LAYOUT, manifest=manifest)
        assert isinstance(e.value, (wire.BadSignature, wire.DigestMismatch)), (pos, e.value)


def test_signed_flag_without_room_for_a_signature_is_truncated(manifest):
    data = bytearray(_payload(manifest).to_bytes())
    struct.pack_into("<I", data, fmt.OFF_FLAGS, wire.FLAG_SIGNED)
    data = data[:130]
    struct.pack_into("<Q", data, fmt.OFF_TOTAL_LEN, len(data))
    with pytest.raises(wire.Truncated):
        wire.Payload.from_bytes(bytes(data), LAYOUT, manifest=manifest)


def test_signature_of_a_stripped_message_is_refused(keys, manifest):
    # strip the signature and clear the flag: a valid unsigned message, refused in a signed run
    signed = _payload(manifest).to_bytes(signing_key=keys[1][0])
    stripped = bytearray(signed[:-64 - 16])
    struct.pack_into("<I", stripped, fmt.OFF_FLAGS, 0)
    struct.pack_into("<Q", stripped, fmt.OFF_TOTAL_LEN, len(stripped) + 16)
    stripped = bytes(stripped) + fmt.digest16(bytes(stripped))
    assert wire.Payload.from_bytes(stripped, LAYOUT) == _payload(manifest)
    with pytest.raises(wire.MissingSignature):
        wire.Payload.from_bytes(stripped, LAYOUT, manifest=manifest)


def test_other_reserved_flag_bits_still_refused(keys, manifest):
    for bits in (0x1, 0x4, 0x80000000):
        data = bytearray(_payload(manifest).to_bytes())
        struct.pack_into("<I", data, fmt.OFF_FLAGS, bits)
        data[-16:] = fmt.digest16(bytes(data[:-16]))
        with pytest.raises(wire.ReservedField):
            wire.Payload.from_bytes(bytes(data), LAYOUT)


# ---------------------------------------------------------------------------- keys, manifest


def test_key_files_are_owner_only_and_round_trip(tmp_path, keys):
    priv, pub = keys[0]
    for f in ("pem", "raw"):
        path = tmp_path / f"k.{f}"
        signing.save_private_key(priv, path, fmt=f)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        back = signing.load_private_key(path)
        assert signing.public_key_bytes(back) == pub
        with pytest.raises(FileExistsError):
            signing.save_private_key(priv, path, fmt=f)
        os.chmod(path, 0o644)
        with pytest.raises(PermissionError):
            signing.load_private_key(path)
        signing.save_private_key(priv, path, fmt=f, overwrite=True)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ValueError):
        signing.save_private_key(priv, tmp_path / "x", fmt="der")
    junk = tmp_path / "junk"
    junk.write_bytes(b"-----BEGIN NOTHING-----\n")
    os.chmod(junk, 0o600)
    with pytest.raises(ValueError):
        signing.load_private_key(junk)


def test_manifest_file_round_trip_and_digest_checks(tmp_path, keys, manifest):
    path = tmp_path / "m.json"
    manifest.to_file(path)
    back = signing.Manifest.from_file(path, expect_digest=manifest.digest.hex())
    assert back == manifest and back.peers == manifest.peers and back.coordinator == 0
    assert back.run_id == manifest.digest and len(back.run_id) == 16
    with pytest.raises(ValueError, match="expected"):
        signing.Manifest.from_file(path, expect_digest=bytes(16))
    # the digest does not depend on the file's spacing, only on its content
    text = path.read_text()
    assert signing.Manifest.from_json(text.replace("\n", " ")) == manifest
    # a changed key is caught by the digest field
    other = keys[1][1].hex()
    tampered = text.replace(keys[0][1].hex(), other)
    with pytest.raises(ValueError, match="digest"):
        signing.Manifest.from_json(tampered)
    for bad in ("[]", "{}", '{"format": "x"}', "not json"):
        with pytest.raises(ValueError):
            signing.Manifest.from_json(bad)


def test_manifest_argument_checks(keys):
    pub = keys[0][1]
    with pytest.raises(ValueError):
        signing.Manifest({})
    with pytest.raises(ValueError):
        signing.Manifest({0: pub[:31]})
    with pytest.raises(ValueError):
        signing.Manifest({0: pub}, coordinator=1)
    with pytest.raises(ValueError):
        signing.Manifest({-1: pub})
    with pytest.raises(ValueError):
        signing.Manifest({0: pub}, nonce=b"short")
    m = signing.Manifest({0: pub, 5: keys[1][1]})
    assert 5 in m and 1 not in m and len(m) == 2
    m.check_key(0, keys[0][0])
    with pytest.raises(ValueError):
        m.check_key(0, keys[1][0])
    with pytest.raises(ValueError):
        m.check_key(3, keys[1][0])
    assert m.verify(0, signing.sign(keys[0][0], b"abc"), b"abc")
    assert not m.verify(0, signing.sign(keys[0][0], b"abc"), b"abd")
    assert not m.verify(5, signing.sign(keys[0][0], b"abc"), b"abc")
    assert not m.verify(9, bytes(64), b"abc")
    # a random nonce by default: two manifests of the same keys are two runs
    assert signing.Manifest({0: pub}).run_id != signing.Manifest({0: pub}).run_id


def test_verify_envelope_checks_what_a_transport_can_without_the_layout(keys, manifest):
    data = _payload(manifest, sender=2, step=4).to_bytes(signing_key=keys[2][0])
    h = signing.verify_envelope(data, manifest, expect_sender=2, expect_step=4,
                                max_bytes=len(data))
    assert h.sender == 2 and h.step == 4
    cases = [
        (data, dict(expect_sender=1), wire.WrongSender),
        (data, dict(expect_step=5), wire.WrongStep),
        (data, dict(max_bytes=len(data) - 1), wire.LengthOverLimit),
        (_payload(manifest, sender=2).to_bytes(), {}, wire.MissingSignature),
        (_payload(manifest, sender=2).to_bytes(signing_key=keys[1][0]), {}, wire.BadSignature),
        (data[:-1] + bytes([data[-1] ^ 1]), {}, wire.BadSignature),
        (b"DKWP" + data[4:90], {}, wire.Truncated),
        (b"XXXX" + data[4:], {}, wire.BadMagic),
    ]
    for raw, kw, err in cases:
        with pytest.raises(err):
            signing.verify_envelope(raw, manifest, **({"max_bytes": 1 << 20} | kw))


def test_random_damage_to_signed_messages_raises_only_payload_errors(keys, manifest):
    import numpy as np

    rng = np.random.default_rng(3)
    data = _payload(manifest, codec="f32").to_bytes(signing_key=keys[1][0])
    for _ in range(300):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), size=int(rng.integers(1, 4))):
            b[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            b = b[: int(rng.integers(0, len(b)))]
        try:
            wire.Payload.from_bytes(bytes(b), LAYOUT, manifest=manifest)
        except wire.PayloadError:
            continue
        assert bytes(b) == data  # only the undamaged message parses


def test_manifest_generate_makes_a_consistent_run():
    m, priv = signing.Manifest.generate(3, coordinator=2)
    assert sorted(priv) == [0, 1, 2] and m.coordinator == 2
    for p, k in priv.items():
        m.check_key(p, k)


def test_identity_command_line(tmp_path, capsys):
    from distro_kernels import identity

    pubs = {}
    for p in range(2):
        assert identity.main(["keygen", str(tmp_path / f"p{p}.key")]) == 0
        pubs[p] = capsys.readouterr().out.strip()
        assert stat.S_IMODE(os.stat(tmp_path / f"p{p}.key").st_mode) == 0o600
        assert identity.main(["pubkey", str(tmp_path / f"p{p}.key")]) == 0
        assert capsys.readouterr().out.strip() == pubs[p]
    out = str(tmp_path / "run.json")
    assert identity.main(["manifest", out, f"0={pubs[0]}", f"1={pubs[1]}"]) == 0
    digest = capsys.readouterr().out.strip()
    m = signing.Manifest.from_file(out)
    assert m.digest.hex() == digest and m.peers[1].hex() == pubs[1]
    assert identity.main(["show", out, "--expect-digest", digest]) == 0
    shown = capsys.readouterr().out
    assert f"digest {digest}" in shown and f"peer 1 {pubs[1]}" in shown
    assert identity.main(["show", out, "--expect-digest", "00" * 16]) == 1
    assert identity.main(["keygen", str(tmp_path / "p0.key")]) == 1  # never overwrites
    assert identity.main(["manifest", out + "2", f"0={pubs[0]}", f"0={pubs[1]}"]) == 1
    with pytest.raises(SystemExit):
        identity.main(["manifest", out, "zero=ab"])
