"""Command line: ``python -m distro_kernels demo|info|profile`` (console script ``distro-kernels``)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from .app import cli as demo_cli

    parser = argparse.ArgumentParser(
        prog="distro-kernels", description="distro_kernels: DeMo/DisTrO compression kernels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="train a byte-level LM on N peer processes: DeMo vs AdamW + all-reduce",
        description="Spawns N peers (processes, torch.distributed gloo on loopback) that train a "
        "small byte-level transformer on the Python standard library's sources, first with DeMo "
        "through distro_kernels, then with AdamW and a full-gradient all-reduce, and prints "
        "losses, bytes sent per peer per step and time per step for both.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo_cli.add_arguments(demo)
    demo.set_defaults(func=demo_cli.main)
    info = sub.add_parser("info", help="version, backends, CPU features")
    info.set_defaults(func=_info)
    from .profile import cli as profile_cli

    profile = sub.add_parser(
        "profile", help="time every op and backend per device, vs the roofline and the eager path",
        description=profile_cli.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    profile_cli.add_arguments(profile)
    profile.set_defaults(func=profile_cli.main)
    return parser


def _info(args) -> int:
    import json

    from .info import info

    print(json.dumps(info(), indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
