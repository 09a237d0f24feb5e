"""A small blocking RADIUS client (RFC 2865 authentication, RFC 2866 accounting) over pyrad's
packet classes, with its own UDP I/O: the plugin's hooks run in a worker thread.

- Every request carries a Message-Authenticator (RFC 2869 5.14), and every Access-Accept,
  -Reject and -Challenge must carry a valid one: a reply without it, or with a wrong one, is
  dropped (logged once per server and reason) as if it never came. This is the BlastRADIUS
  countermeasure (CVE-2024-3596). An Accounting-Response's Message-Authenticator is checked
  when present; its Response Authenticator already covers the whole packet with the secret.
- The Response Authenticator of every reply is verified; authenticators are compared in
  constant time (:func:`hmac.compare_digest`).
- Each server is tried ``1 + retries`` times, ``timeout`` seconds each, then the next one in
  the configured order (a server answering "port unreachable" is skipped at once).
- PAP: User-Password hidden as in RFC 2865 5.2. CHAP (RFC 2865 5.3): the gateway has the
  cleartext password from XAUTH and computes CHAP-Password = ID + MD5(ID + password +
  challenge) with a random CHAP-Challenge.

Secrets (the shared secret, passwords) are never logged and never in a ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from ipaddress import IPv4Address
from typing import Any

from pyrad.dictionary import Dictionary
from pyrad.packet import AuthPacket, Packet

log = logging.getLogger("tunvpn.radius")

ACCESS_REQUEST = 1
ACCESS_ACCEPT = 2
ACCESS_REJECT = 3
ACCOUNTING_REQUEST = 4
ACCOUNTING_RESPONSE = 5
ACCESS_CHALLENGE = 11
CODE_NAMES = {
    ACCESS_REQUEST: "Access-Request",
    ACCESS_ACCEPT: "Access-Accept",
    ACCESS_REJECT: "Access-Reject",
    ACCOUNTING_REQUEST: "Accounting-Request",
    ACCOUNTING_RESPONSE: "Accounting-Response",
    ACCESS_CHALLENGE: "Access-Challenge",
}
MESSAGE_AUTHENTICATOR = 80
ZERO16 = bytes(16)

_DICTIONARY: Dictionary | None = None


def dictionary() -> Dictionary:
    """The attributes this client knows (the ``dictionary`` file shipped in the package)."""
    global _DICTIONARY
    if _DICTIONARY is None:
        with resources.as_file(resources.files("tunvpn_radius") / "dictionary") as path:
            _DICTIONARY = Dictionary(str(path))
    return _DICTIONARY


class RadiusError(Exception):
    """No RADIUS server gave a valid answer."""


@dataclass(frozen=True)
class Server:
    """One RADIUS server: where to send Access- and Accounting-Requests, and its secret."""

    host: str
    port: int = 1812
    secret: bytes = field(default=b"", repr=False)
    acct_port: int | None = None
    """Accounting port; ``port + 1`` when not given."""

    @property
    def accounting_port(self) -> int:
        return self.acct_port if self.acct_port is not None else self.port + 1

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Reply:
    """A verified reply: its code and attributes (name -> values, in order)."""

    code: int
    attributes: dict[str, list[Any]] = field(repr=False)
    server: str = ""

    @property
    def name(self) -> str:
        return CODE_NAMES.get(self.code, str(self.code))

    def get(self, name: str) -> list[Any]:
        return self.attributes.get(name, [])

    @property
    def reply_message(self) -> str | None:
        """The Reply-Message attributes joined (RFC 2865 5.18: may be several lines)."""
        parts = [str(v) for v in self.get("Reply-Message")]
        return "\n".join(parts) if parts else None

    @property
    def state(self) -> bytes | None:
        values = self.get("State")
        return bytes(values[0]) if values else None

    @property
    def framed_ip_address(self) -> IPv4Address | None:
        values = self.get("Framed-IP-Address")
        if not values:
            return None
        address = IPv4Address(values[0])
        # 255.255.255.255: "let the user choose"; 255.255.255.254: "the NAS picks from its pool"
        return (
            None if address in (IPv4Address("255.255.255.255"), IPv4Address("255.255.255.254")) else address
        )

    @property
    def framed_routes(self) -> tuple[str, ...]:
        return tuple(str(v) for v in self.get("Framed-Route"))

    @property
    def classes(self) -> tuple[bytes, ...]:
        return tuple(bytes(v) for v in self.get("Class"))


# --------------------------------------------------------------------------- crypto


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 5.2: pad to 16 octets, XOR with MD5(secret + previous block) chains."""
    if len(password) > 128:
        raise ValueError("a RADIUS User-Password is at most 128 octets")
    padded = password + bytes((-len(password)) % 16 if password else 16)
    out = bytearray()
    previous = authenticator
    for i in range(0, len(padded), 16):
        digest = hashlib.md5(secret + previous).digest()
        block = bytes(a ^ b for a, b in zip(padded[i : i + 16], digest, strict=True))
        out += block
        previous = block
    return bytes(out)


def chap_password(ident: int, password: bytes, challenge: bytes) -> bytes:
    """RFC 2865 5.3 / RFC 1994: the CHAP ID octet, then MD5(ID + password + challenge)."""
    return bytes([ident]) + hashlib.md5(bytes([ident]) + password + challenge).digest()


def _attributes_with_zero_ma(raw_attrs: bytes) -> tuple[bytes, bytes | None]:
    """The attributes with the Message-Authenticator's value zeroed, and that value (None if
    absent, or malformed: not 16 octets, or twice)."""
    out = bytearray(raw_attrs)
    found: bytes | None = None
    count = 0
    i = 0
    while i + 2 <= len(raw_attrs):
        kind, length = raw_attrs[i], raw_attrs[i + 1]
        if length < 2 or i + length > len(raw_attrs):
            raise ValueError("malformed attribute")
        if kind == MESSAGE_AUTHENTICATOR:
            count += 1
            if length != 18:
                return bytes(out), None
            found = raw_attrs[i + 2 : i + 18]
            out[i + 2 : i + 18] = ZERO16
        i += length
    if i != len(raw_attrs):
        raise ValueError("malformed attribute")
    return bytes(out), (found if count == 1 else None)


def _message_authenticator(secret: bytes, header4: bytes, vector: bytes, attrs_zeroed: bytes) -> bytes:
    return hmac.new(secret, header4 + vector + attrs_zeroed, "md5").digest()


def encode_request(
    code: int, ident: int, secret: bytes, attributes: Iterable[tuple[str, Any]], authenticator: bytes | None
) -> tuple[bytes, bytes]:
    """A request on the wire, Message-Authenticator first, and its Request Authenticator.

    Access-Request: ``authenticator`` is the random Request Authenticator (it also hides the
    password). Accounting-Request: pass None; the authenticator is MD5 over the packet with
    the secret (RFC 2866 3), computed after the Message-Authenticator (computed with a zero
    vector, RFC 3579 3.2)."""
    pkt = AuthPacket(
        code=code, id=ident, secret=secret, authenticator=authenticator or ZERO16, dict=dictionary()
    )
    pkt.AddAttribute("Message-Authenticator", ZERO16)
    for name, value in attributes:
        pkt.AddAttribute(name, value)
    raw = bytearray(pkt.RequestPacket())
    zeroed, _ = _attributes_with_zero_ma(bytes(raw[20:]))
    vector = authenticator or ZERO16
    mac = _message_authenticator(secret, bytes(raw[:4]), vector, zeroed)
    raw[20 + 2 : 20 + 18] = mac  # it is the first attribute
    if authenticator is None:
        authenticator = hashlib.md5(bytes(raw[:4]) + ZERO16 + bytes(raw[20:]) + secret).digest()
    raw[4:20] = authenticator
    return bytes(raw), authenticator


class BadReply(ValueError):
    """A datagram that is not a valid reply to our request (the reason says why)."""


def verify_reply(data: bytes, request_code: int, ident: int, request_auth: bytes, secret: bytes) -> Reply:
    """Check a datagram against the request it answers; the decoded reply, or BadReply."""
    if len(data) < 20:
        raise BadReply("shorter than a RADIUS header")
    code, rid, length = struct.unpack("!BBH", data[:4])
    if length < 20 or length > len(data):
        raise BadReply("bad length")
    data = data[:length]
    if rid != ident:
        raise BadReply("answers another request (id)")
    expected = (
        (ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE)
        if request_code == ACCESS_REQUEST
        else (ACCOUNTING_RESPONSE,)
    )
    if code not in expected:
        raise BadReply(f"unexpected code {code}")
    response_auth = data[4:20]
    calculated = hashlib.md5(data[:4] + request_auth + data[20:] + secret).digest()
    if not hmac.compare_digest(calculated, response_auth):
        raise BadReply("wrong Response Authenticator (wrong shared secret?)")
    try:
        zeroed, mac = _attributes_with_zero_ma(data[20:])
    except ValueError as exc:
        raise BadReply(str(exc)) from None
    has_ma = any(True for _ in _ma_positions(data[20:]))
    if mac is None and (has_ma or code != ACCOUNTING_RESPONSE):
        raise BadReply("no (valid) Message-Authenticator (BlastRADIUS, CVE-2024-3596)")
    if mac is not None:
        vector = request_auth if code != ACCOUNTING_RESPONSE else ZERO16
        if not hmac.compare_digest(_message_authenticator(secret, data[:4], vector, zeroed), mac):
            raise BadReply("wrong Message-Authenticator")
    try:
        pkt = Packet(packet=data, secret=secret, dict=dictionary())
    except Exception as exc:  # pyrad raises PacketError and others on odd attributes
        raise BadReply(f"undecodable: {exc}") from None
    attributes: dict[str, list[Any]] = {}
    for key in pkt.keys():  # noqa: SIM118 - pyrad: keys() gives names, iteration codes
        if isinstance(key, str):
            attributes[key] = list(pkt[key])
    return Reply(code, attributes)


def _ma_positions(raw_attrs: bytes) -> Iterable[int]:
    i = 0
    while i + 2 <= len(raw_attrs):
        if raw_attrs[i] == MESSAGE_AUTHENTICATOR:
            yield i
        i += max(raw_attrs[i + 1], 2)


# --------------------------------------------------------------------------- the client


_logged: set[tuple[str, str]] = set()


def _log_once(server: Server, reason: str) -> None:
    key = (str(server), reason)
    if key not in _logged:
        _logged.add(key)
        log.warning("RADIUS server %s: dropped a reply: %s", server, reason)


@dataclass
class RadiusClient:
    """Sends requests to ``servers`` in order, with ``timeout`` seconds and ``retries``."""

    servers: Sequence[Server]
    timeout: float = 3.0
    retries: int = 2
    nas_identifier: str = "tunvpn"
    nas_ip_address: str | None = None
    """NAS-IP-Address of every request; None: the address this host sends from towards the
    first IPv4 server (what the server sees as the packet's source, unless NATed)."""

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("no RADIUS servers configured")
        if self.nas_ip_address is not None:
            self.nas_ip_address = str(IPv4Address(self.nas_ip_address))
        self._source_address: str | None = None

    def nas_address(self) -> str | None:
        """The NAS-IP-Address this client sends: configured, or the local address of the route
        to the first IPv4 server (None without one)."""
        if self.nas_ip_address is not None:
            return self.nas_ip_address
        if self._source_address is None:
            for server in self.servers:
                if ":" in server.host:
                    continue
                try:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                        sock.connect((server.host, server.port))  # no packet: only the route
                        self._source_address = sock.getsockname()[0]
                except OSError:
                    continue
                break
        return self._source_address

    # ---------------------------------------------------------------- requests

    def authenticate(
        self,
        user: str,
        password: str,
        *,
        auth: str = "pap",
        state: bytes | None = None,
        calling_station: str | None = None,
        chap: tuple[int, bytes, bytes] | None = None,
        session_id: str | None = None,
    ) -> Reply:
        """An Access-Request (PAP or CHAP) for ``user``; the verified Access-Accept, -Reject or
        -Challenge of the first server that answers. Raises RadiusError if none does.

        ``chap``: a CHAP answer the client computed itself (identifier, challenge, response;
        e.g. PPP CHAP in L2TP), passed on as CHAP-Password and CHAP-Challenge (RFC 2865 5.3);
        ``password`` and ``auth`` are then not used. ``session_id``: sent as Acct-Session-Id
        (RFC 2865 5.44 allows it in an Access-Request), the key an address pool on the server
        can lease by (FreeRADIUS sqlippool ``pool_key``), the same as in the session's
        accounting."""
        if auth not in ("pap", "chap"):
            raise ValueError(f"auth {auth!r}: pap or chap")
        if chap is not None and (len(chap[2]) != 16 or not 0 <= chap[0] <= 255 or not chap[1]):
            raise ValueError("a CHAP answer is an identifier 0..255, a challenge and 16 octets")

        def build(server: Server, ident: int) -> tuple[bytes, bytes]:
            authenticator = secrets.token_bytes(16)
            attrs: list[tuple[str, Any]] = [("User-Name", user)]
            if chap is not None:
                attrs += [("CHAP-Password", bytes([chap[0]]) + chap[2]), ("CHAP-Challenge", chap[1])]
            elif auth == "pap":
                attrs.append(
                    ("User-Password", hide_password(password.encode(), server.secret, authenticator))
                )
            else:
                challenge = secrets.token_bytes(16)
                attrs += [
                    ("CHAP-Password", chap_password(ident, password.encode(), challenge)),
                    ("CHAP-Challenge", challenge),
                ]
            attrs += self._nas_attributes(calling_station)
            if session_id:
                attrs.append(("Acct-Session-Id", session_id))
            if state is not None:
                attrs.append(("State", state))
            return encode_request(ACCESS_REQUEST, ident, server.secret, attrs, authenticator)

        return self._transact(ACCESS_REQUEST, build, accounting=False)

    def account(self, attributes: Sequence[tuple[str, Any]], *, calling_station: str | None = None) -> Reply:
        """An Accounting-Request with ``attributes`` (Acct-Status-Type etc.); the verified
        Accounting-Response of the first server that answers. Raises RadiusError."""
        attrs = [*attributes, *self._nas_attributes(calling_station)]

        def build(server: Server, ident: int) -> tuple[bytes, bytes]:
            return encode_request(ACCOUNTING_REQUEST, ident, server.secret, attrs, None)

        return self._transact(ACCOUNTING_REQUEST, build, accounting=True)

    def _nas_attributes(self, calling_station: str | None) -> list[tuple[str, Any]]:
        attrs: list[tuple[str, Any]] = [
            ("NAS-Identifier", self.nas_identifier),
            ("NAS-Port-Type", "Virtual"),
            *([("NAS-IP-Address", nas_ip)] if (nas_ip := self.nas_address()) else []),
            ("Service-Type", "Framed-User"),
        ]
        if calling_station:
            attrs.append(("Calling-Station-Id", calling_station))
        return attrs

    # ---------------------------------------------------------------- I/O

    def _transact(self, code: int, build: Any, *, accounting: bool) -> Reply:
        failures = []
        for server in self.servers:
            port = server.accounting_port if accounting else server.port
            ident = secrets.randbelow(256)
            packet, request_auth = build(server, ident)
            try:
                reply = self._exchange(server, port, packet, code, ident, request_auth)
            except OSError as exc:
                failures.append(f"{server.host}:{port}: {exc.strerror or exc}")
                log.warning(
                    "RADIUS server %s:%d: %s; trying the next one", server.host, port, exc.strerror or exc
                )
                continue
            if reply is not None:
                return Reply(reply.code, reply.attributes, f"{server.host}:{port}")
            failures.append(f"{server.host}:{port}: no answer")
            log.warning(
                "RADIUS server %s:%d: no valid answer to %s after %d tries of %.1f s",
                server.host,
                port,
                CODE_NAMES[code],
                1 + self.retries,
                self.timeout,
            )
        raise RadiusError("no RADIUS server answered (" + "; ".join(failures) + ")")

    def _exchange(
        self, server: Server, port: int, packet: bytes, code: int, ident: int, request_auth: bytes
    ) -> Reply | None:
        family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((server.host, port))
            for _attempt in range(1 + self.retries):
                sock.send(packet)  # a retransmission: the same id and authenticator
                deadline = time.monotonic() + self.timeout
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    try:
                        data = sock.recv(4096)
                    except TimeoutError:
                        break
                    try:
                        return verify_reply(data, code, ident, request_auth, server.secret)
                    except BadReply as exc:
                        _log_once(server, str(exc))
        return None


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """A shared secret from a file only its owner may read (``chmod 600``), else ValueError."""
    from tunvpn.plugins import SecretFileError, parse_secret, read_private_file

    try:
        text = read_private_file(path, "RADIUS secret_file")
    except SecretFileError as exc:
        raise ValueError(str(exc)) from None
    secret = parse_secret(text.strip())
    if not secret:
        raise ValueError(f"RADIUS secret_file {path}: empty")
    return secret
