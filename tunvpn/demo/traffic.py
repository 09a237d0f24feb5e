"""The two ends of ``tunvpn demo``'s data transfer, run inside its namespaces
(``python -m tunvpn.demo.traffic sink ADDRESS PORT`` / ``send ADDRESS PORT BYTES``).

The sender pushes random bytes over one TCP connection and closes its side; the sink answers
with the byte count and the SHA-256 of what it received, and the sender prints one JSON line:
what it sent (count, SHA-256), what the sink saw, and the seconds from connect to answer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Sequence

CHUNK = 1 << 16


def sink(address: str, port: int) -> None:
    """Accept one connection, read it to the end, answer ``COUNT SHA256HEX``."""
    with socket.create_server((address, port)) as server:
        print("listening", flush=True)
        conn, _ = server.accept()
        with conn:
            digest = hashlib.sha256()
            count = 0
            while chunk := conn.recv(CHUNK):
                digest.update(chunk)
                count += len(chunk)
            conn.sendall(f"{count} {digest.hexdigest()}".encode())


def send(address: str, port: int, size: int, timeout: float = 60.0) -> dict[str, object]:
    """Send ``size`` random bytes to a sink; what was sent and what the sink reported."""
    data = os.urandom(size)
    start = time.monotonic()
    with socket.create_connection((address, port), timeout=timeout) as conn:
        view = memoryview(data)
        for offset in range(0, size, CHUNK):
            conn.sendall(view[offset : offset + CHUNK])
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
    seconds = time.monotonic() - start
    count, _, digest = reply.decode(errors="replace").partition(" ")
    return {
        "sent": size,
        "sha256": hashlib.sha256(data).hexdigest(),
        "received": int(count) if count.isdigit() else -1,
        "received_sha256": digest,
        "seconds": seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunvpn.demo.traffic")
    sub = parser.add_subparsers(dest="role", required=True)
    sink_parser = sub.add_parser("sink")
    sink_parser.add_argument("address")
    sink_parser.add_argument("port", type=int)
    send_parser = sub.add_parser("send")
    send_parser.add_argument("address")
    send_parser.add_argument("port", type=int)
    send_parser.add_argument("size", type=int)
    args = parser.parse_args(argv)
    try:
        if args.role == "sink":
            sink(args.address, args.port)
        else:
            print(json.dumps(send(args.address, args.port, args.size)), flush=True)
    except OSError as exc:
        print(f"{args.role}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main", "send", "sink"]
