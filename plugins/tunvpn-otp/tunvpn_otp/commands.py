"""``tunvpn otp enroll|set-pin|unlock``: manage the secrets store from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import sys
from collections.abc import Callable

from tunvpn_otp import core
from tunvpn_otp.store import Store, StoreError


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    otp = subparsers.add_parser(
        "otp",
        help="manage the OTP plugin's tokens (tunvpn-otp)",
        description="Enroll users for PIN + tokencode XAUTH (TOTP or HOTP), set PINs, unlock users.",
    )
    sub = otp.add_subparsers(dest="otp_command", metavar="ACTION")
    sub.required = True

    def action(name: str, help: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("user", metavar="USER")
        p.add_argument("--store", required=True, metavar="FILE", help="the secrets store (mode 600)")
        p.set_defaults(handler=lambda args: _run(handler, args))
        return p

    enroll = action("enroll", "create USER's token and print its otpauth:// URI (and a QR code)", enroll_user)
    enroll.add_argument("--hotp", action="store_true", help="counter-based (RFC 4226) instead of TOTP")
    enroll.add_argument("--issuer", default="tunvpn", help="shown by the authenticator app (tunvpn)")
    enroll.add_argument("--digits", type=int, choices=(6, 7, 8), default=6, help="code length (6)")
    enroll.add_argument("--force", action="store_true", help="replace an existing token")
    set_pin = action("set-pin", "set USER's PIN (asked twice), or --clear it", set_user_pin)
    set_pin.add_argument("--clear", action="store_true", help="the user chooses a new PIN at the next login")
    action("unlock", "clear USER's failure count and lockout", unlock_user)


def _run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except (StoreError, ValueError) as exc:
        print(f"tunvpn otp: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the store's directory is missing or not writable
        print(f"tunvpn otp: error: {args.store}: {exc.strerror}", file=sys.stderr)
        return 2


def enroll_user(args: argparse.Namespace) -> int:
    record = core.Record.new(core.Kind.HOTP if args.hotp else core.Kind.TOTP, digits=args.digits)
    with Store(args.store).edit(create=True) as users:
        if args.user in users and not args.force:
            raise ValueError(f"{args.user!r} has a token already in {args.store} (--force replaces it)")
        users[args.user] = record
    uri = record.uri(args.user, args.issuer)
    print(uri)
    try:
        import qrcode  # optional: pip install tunvpn-otp[qr]
    except ImportError:
        pass
    else:
        qr = qrcode.QRCode(border=1)
        qr.add_data(uri)
        qr.print_ascii(out=sys.stdout, invert=True)
    print(
        f"{args.user}: scan the URI into an authenticator app; at the first login enter the tokencode "
        "alone, then choose a PIN",
        file=sys.stderr,
    )
    return 0


def set_user_pin(args: argparse.Namespace) -> int:
    pin = None
    if not args.clear:
        pin = getpass.getpass(f"new PIN for {args.user}: ")
        if getpass.getpass("again: ") != pin:
            raise ValueError("the two PINs differ")
    with Store(args.store).edit() as users:
        record = _record(users, args)
        if pin is None:
            users[args.user] = dataclasses.replace(record, pin_hash=None, must_change_pin=True)
        else:
            users[args.user] = core.set_pin(record, pin, core.Policy())
    return 0


def unlock_user(args: argparse.Namespace) -> int:
    with Store(args.store).edit() as users:
        users[args.user] = core.unlock(_record(users, args))
    return 0


def _record(users: dict[str, core.Record], args: argparse.Namespace) -> core.Record:
    if args.user not in users:
        raise ValueError(f"{args.user!r} has no token in {args.store} (tunvpn otp enroll)")
    return users[args.user]
