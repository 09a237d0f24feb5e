"""Example for ``tunvpn_accounting`` and ``tunvpn_accounting_onoff``: one JSON line per session
start, interim, stop, and per gateway start and clean stop, appended to a file::

    [plugin.session-log]
    log_file = "/var/log/tunvpn/sessions.jsonl"
"""

from __future__ import annotations

import json
import threading

from tunvpn.plugins import AccountingRecord, GatewayContext, hookimpl

NAME = "session-log"
_lock = threading.Lock()  # plain hooks run in worker threads, several at once


def _append(context: GatewayContext, line: dict[str, object]) -> None:
    path = context.settings(NAME).get("log_file")
    if path is None:
        return
    with _lock, open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


@hookimpl
def tunvpn_accounting(record: AccountingRecord, context: GatewayContext) -> None:
    _append(
        context,
        {
            "kind": record.kind,
            "session": record.session_id,
            "user": record.user,
            "address": str(record.address) if record.address else None,
            "bytes_in": record.bytes_in,
            "bytes_out": record.bytes_out,
            "reason": record.reason or None,
        },
    )


@hookimpl
def tunvpn_accounting_onoff(kind: str, context: GatewayContext) -> None:
    _append(context, {"kind": f"gateway-{kind}"})
