"""Example for ``tunvpn_client_protocol`` (client side): run the ``notice`` protocol the gateway
announced (``notice.py``): once the SAs are up, read the notice board and report it."""

from __future__ import annotations

import asyncio
from typing import Any

from tunvpn.plugins import ClientProtocol, ClientSession, ExtraProtocol, hookimpl


async def _read_notice(session: ClientSession) -> None:
    port = int(session.protocol.param("port") or 8465)
    reader, writer = await asyncio.open_connection(session.gateway, port)
    try:
        text = (await reader.readline()).decode(errors="replace").strip()
        session.report("notice", text, state="received")
    finally:
        writer.close()
        await writer.wait_closed()


@hookimpl
def tunvpn_client_protocol(
    protocol: ExtraProtocol, settings: dict[str, dict[str, Any]]
) -> ClientProtocol | None:
    if protocol.name != "notice":
        return None
    return ClientProtocol(name="notice", run=_read_notice)
