"""Keys and run manifests for signed runs, from Python or the command line.

The functions are :mod:`distro_kernels.wire.signing`'s (re-exported here). The command line
does the launcher's part of docs/threat-model.md section 1::

    python -m distro_kernels.identity keygen peer3.key          # on peer 3: prints its public key
    python -m distro_kernels.identity manifest run.json 0=<hex> 1=<hex> ... [--coordinator 0]
    python -m distro_kernels.identity show run.json             # digest (= run id) and peers
"""

from __future__ import annotations

import argparse
import sys

from .wire.signing import (
    Manifest,
    generate_keypair,
    load_private_key,
    public_key_bytes,
    save_private_key,
    sign_payload,
    verify_envelope,
)

__all__ = ["Manifest", "generate_keypair", "load_private_key", "main", "public_key_bytes",
           "save_private_key", "sign_payload", "verify_envelope"]


def _peer_arg(text: str) -> tuple[int, bytes]:
    try:
        peer, key = text.split("=", 1)
        return int(peer), bytes.fromhex(key)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PEER=HEXKEY, got {text!r}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distro_kernels.identity",
                                 description="Ed25519 keys and run manifests for signed runs.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen", help="write a new private key (mode 0600), print its public key")
    k.add_argument("path")
    k.add_argument("--format", choices=("pem", "raw"), default="pem")
    p = sub.add_parser("pubkey", help="print the public key of a private key file")
    p.add_argument("path")
    m = sub.add_parser("manifest", help="write a run manifest, print its digest (the run id)")
    m.add_argument("out")
    m.add_argument("peers", nargs="+", type=_peer_arg, metavar="PEER=HEXKEY")
    m.add_argument("--coordinator", type=int, default=0)
    s = sub.add_parser("show", help="check a manifest file and print its digest and peers")
    s.add_argument("path")
    s.add_argument("--expect-digest", default=None)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "keygen":
            priv, pub = generate_keypair()
            save_private_key(priv, args.path, fmt=args.format)
            print(pub.hex())
        elif args.cmd == "pubkey":
            print(public_key_bytes(load_private_key(args.path)).hex())
        elif args.cmd == "manifest":
            peers = dict(args.peers)
            if len(peers) != len(args.peers):
                raise ValueError("a peer id is given twice")
            man = Manifest(peers, coordinator=args.coordinator)
            man.to_file(args.out)
            print(man.digest.hex())
        else:
            man = Manifest.from_file(args.path, expect_digest=args.expect_digest)
            print(f"digest {man.digest.hex()}")
            print(f"coordinator {man.coordinator}")
            for peer, key in man.peers.items():
                print(f"peer {peer} {key.hex()}")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
