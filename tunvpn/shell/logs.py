"""Where the daemons' log lines go and how they look (issue 20): ``--log-format text|json``,
``--syslog``, and the systemd journal's level prefixes.

* **text** (the default): ``time LEVEL logger: message`` on stderr. Under systemd (its stderr
  is the journal: ``JOURNAL_STREAM`` is set) each line starts with the syslog level in angle
  brackets (``<4>`` for a warning, sd-daemon(3)) and carries no time (the journal stamps it),
  so ``journalctl -u tunvpn-gateway -p warning`` shows warnings and worse.
* **json**: one JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
  ``message`` and ``exception`` when there is one; for log shippers.
* **--syslog**: to the local syslog socket (``/dev/log``), facility daemon, tagged
  ``tunvpn[PID]``, in the chosen format.

Every format escapes control characters of the message (a peer's text in a log argument
cannot forge a line or drive a terminal; :class:`tunvpn.untrusted.SafeFormatter`); JSON escapes
them by itself.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import os
import socket
import sys
from collections.abc import Mapping

from tunvpn.untrusted import SafeFormatter

FORMATS = ("text", "json")
SYSLOG_SOCKET = "/dev/log"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def syslog_priority(level: int) -> int:
    """The syslog severity of a logging level (sd-daemon's ``<N>`` prefixes)."""
    if level >= logging.CRITICAL:
        return 2
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    if level >= logging.INFO:
        return 6
    return 7


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class JournalFormatter(SafeFormatter):
    """Text for the systemd journal: ``<N>logger: message`` (the journal adds the time)."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"<{syslog_priority(record.levelno)}>" + super().format(record)


def make_handler(
    fmt: str = "text",
    *,
    syslog: bool = False,
    syslog_address: str = SYSLOG_SOCKET,
    env: Mapping[str, str] | None = None,
) -> logging.Handler:
    """The handler for ``--log-format fmt`` (and ``--syslog``).

    :raises ValueError: an unknown format.
    :raises OSError: ``--syslog`` without a syslog socket.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    environ = os.environ if env is None else env
    if syslog:
        if not os.path.exists(syslog_address):  # the handler would only fail at the first line
            raise FileNotFoundError(2, "No such file or directory", syslog_address)
        syslog_handler = logging.handlers.SysLogHandler(
            address=syslog_address,
            facility=logging.handlers.SysLogHandler.LOG_DAEMON,
            socktype=socket.SOCK_DGRAM,
        )
        syslog_handler.ident = f"tunvpn[{os.getpid()}]: "
        syslog_handler.setFormatter(
            JsonFormatter() if fmt == "json" else SafeFormatter("%(name)s: %(message)s")
        )
        return syslog_handler
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(SafeFormatter(TEXT_FORMAT))
    return handler


__all__ = ["FORMATS", "JournalFormatter", "JsonFormatter", "make_handler", "syslog_priority"]
