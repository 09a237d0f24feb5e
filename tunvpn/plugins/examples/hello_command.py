"""Example for ``tunvpn_add_commands``: ``tunvpn hello-example NAME`` prints a greeting."""

from __future__ import annotations

import argparse

from tunvpn.plugins import hookimpl


def hello(args: argparse.Namespace) -> int:
    print(f"hello, {args.name}")
    return 0


@hookimpl
def tunvpn_add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("hello-example", help="print a greeting (an example plugin)")
    parser.add_argument("name")
    parser.set_defaults(handler=hello)
