"""Example for ``tunvpn_announce_protocol`` and ``tunvpn_serve`` (gateway side): a protocol
``notice`` that a client runs after its SAs are up (``notice_client.py``); the gateway
announces where its notice board is and serves it::

    [gateway]
    plugins = ["notice"]
    [[protocol]]
    name = "notice"
    [plugin.notice]
    port = 8465
"""

from __future__ import annotations

import asyncio

from tunvpn.plugins import ExtraProtocol, GatewayContext, ProtocolAnnouncement, hookimpl

NAME = "notice"


@hookimpl
def tunvpn_announce_protocol(protocol: ExtraProtocol, context: GatewayContext) -> ProtocolAnnouncement:
    port = int(context.settings(NAME).get("port", 8465))
    return ProtocolAnnouncement(params=(("exchange", "notice"), ("port", str(port))))


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"maintenance on Sunday 02:00-04:00\n")
        await writer.drain()
    finally:
        writer.close()


@hookimpl
async def tunvpn_serve(context: GatewayContext) -> None:
    settings = context.settings(NAME)
    server = await asyncio.start_server(
        _answer, settings.get("address", "127.0.0.1"), int(settings.get("port", 8465))
    )
    try:
        await asyncio.Future()  # until the gateway stops (or reloads) and cancels us
    finally:
        server.close()
        await server.wait_closed()
