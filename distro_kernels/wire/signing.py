"""Identity for signed runs (SPEC 5): Ed25519 keys, the run manifest, payload signatures.

All cryptography is ``cryptography``'s Ed25519 (``pip install 'distro_kernels[signing]'``);
nothing here is home-made crypto. Typical setup, once per run, by whoever launches it::

    keys = {peer: signing.generate_keypair() for peer in range(world)}   # or each peer makes
    for peer, (priv, _) in keys.items():                                 # its own and sends
        signing.save_private_key(priv, f"peer{peer}.key")                # only the public key
    manifest = signing.Manifest({p: pub for p, (_, pub) in keys.items()})
    manifest.to_file("run.manifest.json")          # the same file goes to every peer
    print(manifest.digest.hex())                   # compare out of band (it is the run id)

and on every peer::

    manifest = signing.Manifest.from_file("run.manifest.json", expect_digest=...)
    key = signing.load_private_key("peer3.key")    # refused unless the file is mode 0600
    data = payload.to_bytes(signing_key=key)       # signed
    peer = Payload.from_bytes(data, layout, manifest=manifest)  # checks signature and sender

The manifest's digest is the run id (``manifest.run_id``): a payload signed for another
manifest (another run, or the same keys with another peer set) fails ``WrongRun``.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import struct
from typing import Mapping

from .format import FLAG_SIGNED, HEADER, HEADER_SIZE, OFF_FLAGS, OFF_TOTAL_LEN, TRAILER_SIZE
from .format import U32_MAX, digest16

SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32
MANIFEST_FORMAT = "distro_kernels-manifest/v1"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest file larger than this is refused unread
MAX_KEY_FILE_BYTES = 64 * 1024
_DOMAIN = b"distro_kernels/manifest/v1\x00"


def _ed25519():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - cryptography is a test dependency
        raise ImportError("signed runs need the 'cryptography' package "
                          "(pip install 'distro_kernels[signing]')") from e
    return ed25519


def _serialization():
    from cryptography.hazmat.primitives import serialization

    return serialization


# ---------------------------------------------------------------------------- keys


def generate_keypair():
    """A new Ed25519 key: ``(private_key, public_key_bytes)`` (32 raw bytes)."""
    priv = _ed25519().Ed25519PrivateKey.generate()
    return priv, public_key_bytes(priv)


def public_key_bytes(key) -> bytes:
    """The 32 raw bytes of a private or public Ed25519 key's public half."""
    ser = _serialization()
    pub = key.public_key() if hasattr(key, "public_key") else key
    return pub.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)


def save_private_key(key, path, *, fmt: str = "pem", overwrite: bool = False) -> None:
    """Write ``key`` to ``path`` readable by its owner only (mode 0600, created so, never
    widened). ``fmt``: ``"pem"`` (PKCS#8, unencrypted) or ``"raw"`` (the 32-byte seed)."""
    ser = _serialization()
    if fmt == "pem":
        data = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                 ser.NoEncryption())
    elif fmt == "raw":
        data = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    else:
        raise ValueError(f"fmt must be 'pem' or 'raw', got {fmt!r}")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(os.fspath(path), flags | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file (overwrite=True) may have had wider bits
        os.write(fd, data)
    finally:
        os.close(fd)


def load_private_key(path, *, check_mode: bool = True):
    """Read a key written by :func:`save_private_key` (PEM or 32 raw bytes). Refuses a file
    that its group or others may read or write (as ssh does), unless ``check_mode=False``."""
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if check_mode and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(
                f"{path}: private key file mode {stat.S_IMODE(st.st_mode):04o} lets others "
                f"read it; chmod 600 it")
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise ValueError(f"{path}: {st.st_size} bytes is too large for a key file")
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    ed = _ed25519()
    if len(data) == 32:
        return ed.Ed25519PrivateKey.from_private_bytes(data)
    key = _serialization().load_pem_private_key(data, password=None)
    if not isinstance(key, ed.Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def sign(key, message) -> bytes:
    """The 64-byte Ed25519 signature of ``message`` by ``key``."""
    return key.sign(bytes(message))


# ---------------------------------------------------------------------------- manifest


class Manifest:
    """The run's peers and their public keys: ``{peer_id: 32-byte Ed25519 public key}``.

    ``coordinator``: the peer id whose key signs each step's roster in the store exchange
    (docs/threat-model.md); ``nonce``: 16 bytes that make this run's id unique even when the
    keys are reused (random by default). ``digest`` (BLAKE2b-128 over a canonical binary
    encoding, independent of the JSON file's spacing) is also the run id.
    """

    __slots__ = ("peers", "coordinator", "nonce", "digest", "_keys")

    def __init__(self, peers: Mapping[int, bytes], *, coordinator: int = 0,
                 nonce: bytes | None = None):
        if not peers:
            raise ValueError("a manifest needs at least one peer")
        out = {}
        for p, k in peers.items():
            p = int(p)
            if not 0 <= p <= U32_MAX:
                raise ValueError(f"peer id {p} not in [0, 2**32)")
            k = bytes(k) if not hasattr(k, "public_bytes") else public_key_bytes(k)
            if len(k) != PUBLIC_KEY_SIZE:
                raise ValueError(f"peer {p}: a public key is {PUBLIC_KEY_SIZE} bytes, got {len(k)}")
            out[p] = k
        self.peers: dict[int, bytes] = dict(sorted(out.items()))
        if int(coordinator) not in self.peers:
            raise ValueError(f"coordinator {coordinator} is not a peer of the manifest")
        self.coordinator = int(coordinator)
        self.nonce = secrets.token_bytes(16) if nonce is None else bytes(nonce)
        if len(self.nonce) != 16:
            raise ValueError("nonce must be 16 bytes")
        self.digest = digest16(self.canonical_bytes())
        self._keys: dict = {}

    @classmethod
    def generate(cls, n: int, *, coordinator: int = 0):
        """A new run of peers ``0..n-1`` with fresh keys, for simulations and tests (in a real
        run each peer makes its own key): ``(manifest, {peer: private key})``."""
        keys = {p: generate_keypair() for p in range(int(n))}
        return (cls({p: pub for p, (_, pub) in keys.items()}, coordinator=coordinator),
                {p: priv for p, (priv, _) in keys.items()})

    # ------------------------------------------------------------------ identity
    def canonical_bytes(self) -> bytes:
        """What ``digest`` covers: domain, nonce, coordinator, then each (id, key) ascending."""
        parts = [_DOMAIN, self.nonce, struct.pack("<II", self.coordinator, len(self.peers))]
        parts += [struct.pack("<I", p) + k for p, k in self.peers.items()]
        return b"".join(parts)

    @property
    def run_id(self) -> bytes:
        """The run id that payloads of this run carry (16 bytes: the digest)."""
        return self.digest

    def __contains__(self, peer) -> bool:
        return int(peer) in self.peers

    def __len__(self) -> int:
        return len(self.peers)

    def __eq__(self, other) -> bool:
        return isinstance(other, Manifest) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return (f"Manifest({len(self.peers)} peers, coordinator={self.coordinator}, "
                f"digest={self.digest.hex()})")

    def public_key(self, peer: int):
        """The peer's ``Ed25519PublicKey`` (``KeyError`` if it is not in the manifest)."""
        peer = int(peer)
        if peer not in self._keys:
            self._keys[peer] = _ed25519().Ed25519PublicKey.from_public_bytes(self.peers[peer])
        return self._keys[peer]

    def verify(self, peer: int, signature, message) -> bool:
        """Whether ``signature`` is ``peer``'s over ``message`` (False for unknown peers)."""
        from cryptography.exceptions import InvalidSignature

        if int(peer) not in self.peers or len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self.public_key(peer).verify(bytes(signature), bytes(message))
        except InvalidSignature:
            return False
        return True

    def check_key(self, peer: int, key) -> None:
        """Raise ``ValueError`` unless ``key`` (private or public) is ``peer``'s in here."""
        if int(peer) not in self.peers:
            raise ValueError(f"peer {peer} is not in the manifest")
        if public_key_bytes(key) != self.peers[int(peer)]:
            raise ValueError(f"this key is not peer {peer}'s key in the manifest")

    # ------------------------------------------------------------------ files
    def to_json(self) -> str:
        doc = {
            "format": MANIFEST_FORMAT,
            "nonce": self.nonce.hex(),
            "coordinator": self.coordinator,
            "peers": {str(p): k.hex() for p, k in self.peers.items()},
            "digest": self.digest.hex(),
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, expect_digest: bytes | str | None = None):
        """Parse a manifest file's text. Its ``digest`` field must match its content, and
        ``expect_digest`` (bytes or hex, e.g. told out of band) when given."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"not a {MANIFEST_FORMAT} document")
            peers = doc["peers"]
            if not isinstance(peers, dict):
                raise ValueError("'peers' must be an object")
            m = cls({int(p): bytes.fromhex(k) for p, k in peers.items()},
                    coordinator=int(doc["coordinator"]), nonce=bytes.fromhex(doc["nonce"]))
            stated = bytes.fromhex(doc["digest"])
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"invalid manifest: {e}") from None
        if stated != m.digest:
            raise ValueError("invalid manifest: its digest field does not match its content")
        if expect_digest is not None:
            want = bytes.fromhex(expect_digest) if isinstance(expect_digest, str) else bytes(
                expect_digest)
            if want != m.digest:
                raise ValueError(f"manifest digest {m.digest.hex()}, expected {want.hex()}")
        return m

    def to_file(self, path) -> None:
        with open(path, "w", encoding="ascii") as f:
            f.write(self.to_json())

    @classmethod
    def from_file(cls, path, *, expect_digest: bytes | str | None = None) -> "Manifest":
        size = os.path.getsize(path)
        if size > MAX_MANIFEST_BYTES:
            raise ValueError(f"{path}: {size} bytes is too large for a manifest")
        with open(path, "rb") as f:
            return cls.from_json(f.read(MAX_MANIFEST_BYTES + 1), expect_digest=expect_digest)


# ---------------------------------------------------------------------------- payloads


def sign_payload(data, key) -> bytes:
    """Turn an unsigned message (``Payload.to_bytes()``) into the signed one: set the
    ``signed`` flag, add 64 to the total length, redo the digest, append the signature.
    Gives the same bytes as ``Payload.to_bytes(signing_key=key)``."""
    data = bytes(data)
    if len(data) < HEADER_SIZE + TRAILER_SIZE:
        raise ValueError("not a wire message")
    fields = list(HEADER.unpack_from(data, 0))
    if fields[4] & FLAG_SIGNED:
        raise ValueError("the message is already signed")
    fields[4] |= FLAG_SIGNED
    fields[9] = len(data) + SIGNATURE_SIZE
    header = HEADER.pack(*fields)
    body = data[HEADER_SIZE:-TRAILER_SIZE]
    unsigned = header + body + digest16(header, body)
    return unsigned + key.sign(unsigned)


def seal(header: bytes, body: bytes, key) -> bytes:
    """``header + body + digest + signature`` for a header that already says signed."""
    msg = b"".join((header, body, digest16(header, body)))
    return msg + key.sign(msg)


assert OFF_FLAGS == 8 and OFF_TOTAL_LEN == 32  # the field positions sign_payload rewrites


def verify_envelope(data, manifest: Manifest, *, expect_sender: int | None = None,
                    expect_step: int | None = None, max_bytes: int):
    """Check what a signed run's transport can check without the model layout: the size
    limit, magic, version and length (as ``read_header``), the trailer digest, the signature
    by the manifest key of the header's sender, the manifest's run id, and the expected
    sender and step. Returns the header; raises the same typed ``PayloadError``s as
    ``Payload.from_bytes`` (which still does the full parse)."""
    from .errors import (BadSignature, DigestMismatch, MissingSignature, UnknownSender,
                         WrongRun, WrongSender, WrongStep)
    from .header import as_buffer, read_header

    mv = as_buffer(data)
    h = read_header(mv, int(max_bytes))
    n = len(mv)
    if not h.flags & FLAG_SIGNED or n < HEADER_SIZE + TRAILER_SIZE + SIGNATURE_SIZE:
        raise MissingSignature("the run is signed; this payload carries no signature", offset=8)
    end = n - SIGNATURE_SIZE - TRAILER_SIZE
    if digest16(mv[:end]) != bytes(mv[end : end + TRAILER_SIZE]):
        raise DigestMismatch("trailer digest does not match the message", offset=end)
    if h.sender not in manifest:
        raise UnknownSender(f"sender {h.sender} is not in the run's manifest", offset=40)
    if h.run_id != manifest.run_id:
        raise WrongRun(f"run id {h.run_id.hex()} is not the manifest's run", offset=48)
    sig_at = n - SIGNATURE_SIZE
    if not manifest.verify(h.sender, mv[sig_at:], mv[:sig_at]):
        raise BadSignature(f"signature does not verify under sender {h.sender}'s key",
                           offset=sig_at)
    if expect_sender is not None and h.sender != int(expect_sender):
        raise WrongSender(f"sender {h.sender}, expected {int(expect_sender)}", offset=40)
    if expect_step is not None and h.step != int(expect_step):
        raise WrongStep(f"step {h.step}, expected {int(expect_step)}", offset=24)
    return h
