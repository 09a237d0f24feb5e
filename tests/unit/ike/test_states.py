"""The transition tables of tunvpn/ike/states.py: the rendered page is current, every row's
handler is a real function, and a message the table does not allow never reaches a handler."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.ike_pair import PSK, Pair, client_config, connect, gateway_config
from tunvpn.ike import events as ev
from tunvpn.ike import exchanges, states
from tunvpn.ike.config import EngineConfig, PskTable
from tunvpn.ike.constants import CfgType, ExchangeType, NotifyType
from tunvpn.ike.messages import AttributePayload
from tunvpn.ike.sa import ExchangeKind, ExState

DOC = Path(__file__).resolve().parents[3] / "docs" / "engine-states.md"


def test_rendered_page_is_current() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tunvpn.ike.states"], capture_output=True, text=True, check=True
    ).stdout
    assert out == states.render_markdown()
    assert DOC.read_text() == out, "docs/engine-states.md is stale: python -m tunvpn.ike.states > it"


def test_every_row_names_a_callable_and_a_state() -> None:
    for (kind, state, message), t in states.EXCHANGE_TABLE.items():
        assert isinstance(kind, ExchangeKind) and isinstance(state, ExState)
        assert isinstance(message, states.Message)
        assert callable(t.handler) and isinstance(t.next_state, ExState)
    for rule in states.INFORMATIONAL_TABLE.values():
        assert callable(rule.handler)


def test_message_outside_the_table_is_refused_before_any_handler() -> None:
    """A CFG_REPLY nobody asked for (a Transaction in state NEW) has no row: refused with a
    Notify and a ProtocolError; the reply handler never runs (no Mode Config event)."""
    pair = Pair(client_config(), gateway_config())
    sa_id = connect(pair)
    sa = pair.client.engine.get_sa(sa_id)
    ex = exchanges.new_exchange(pair.client.engine, sa, ExchangeKind.TRANSACTION)
    reply = AttributePayload(CfgType.REPLY, 7, ())
    exchanges.send_protected(
        pair.client.engine, sa, ex, ExchangeType.TRANSACTION, [reply], pair.now, expect_reply=False
    )
    pair.run()
    errors = pair.gateway.of(ev.ProtocolError)
    assert errors and "CFG_REPLY not allowed in a transaction exchange in state new" in errors[-1].error
    assert errors[-1].notify == NotifyType.INVALID_MESSAGE_ID
    assert not pair.gateway.of(ev.ModeConfigReceived) and not pair.gateway.of(ev.XauthCredentials)
    assert pair.client.of(ev.NotifyReceived)[-1].notify_type == NotifyType.INVALID_MESSAGE_ID


def test_site_peer_without_login_is_granted_at_phase1() -> None:
    """The explicit door: no login configured and no XAUTH method -> GRANTED at phase 1."""
    pair = Pair(EngineConfig(psks=PskTable({"*": PSK})), gateway_config())
    connect(pair)
    assert pair.gateway.of(ev.AccessGranted)
    assert pair.gateway.engine.ike_sas()[0].access.name == "GRANTED"
