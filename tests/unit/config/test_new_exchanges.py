"""Issue 14: the budget of new phase 1 exchanges a gateway starts before the engine parses
them is set in [gateway] (``new_exchanges_per_source`` and friends, restart to change) and
reaches the running gateway's UdpDriver; 0 turns one kind of limit off."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.gwconfig import MINIMAL, load_config, private_file
from tunvpn.config.gateway import ConfigFileError
from tunvpn.gateway.daemon import RESTART_SETTINGS, options_from_config
from tunvpn.ipsec.budget import Budget
from tunvpn.shell.udp import NewExchangeLimit

KEYS = (
    "new_exchanges_per_source",
    "new_exchanges_per_source_burst",
    "new_exchanges_total",
    "new_exchanges_total_burst",
)


@pytest.fixture
def gwdir(tmp_path: Path) -> Path:
    private_file(tmp_path / "gw.psk", "correct-horse-battery-staple-group\n")
    private_file(tmp_path / "users", "alice:alice-password-xyzzy\n")
    return tmp_path


def _with(lines: str) -> str:
    return MINIMAL.replace('psk_file = "gw.psk"', f'psk_file = "gw.psk"\n{lines}')


def test_the_defaults_and_the_file_values_reach_the_gateway_options(gwdir: Path) -> None:
    options = options_from_config(load_config(gwdir, MINIMAL))
    assert [getattr(options, key) for key in KEYS] == [5, 20, 3000, 6000]
    text = _with(
        "new_exchanges_per_source = 50\nnew_exchanges_per_source_burst = 100\n"
        "new_exchanges_total = 1000\nnew_exchanges_total_burst = 3000"
    )
    options = options_from_config(load_config(gwdir, text))
    assert [getattr(options, key) for key in KEYS] == [50, 100, 1000, 3000]
    assert set(KEYS) <= set(RESTART_SETTINGS)


@pytest.mark.parametrize("line", ["new_exchanges_per_source = -1", "new_exchanges_total_burst = 0"])
def test_a_bad_value_names_its_key(gwdir: Path, line: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        load_config(gwdir, _with(line))
    assert line.split(" = ")[0] in str(info.value)


def test_zero_turns_a_limit_off() -> None:
    assert NewExchangeLimit.of(0, 20, 0, 400) is None
    only_total = NewExchangeLimit.of(0, 20, 2, 3)
    assert only_total is not None
    budget = only_total.budget(0.0)
    assert [budget.allow("one source", 0.0) for _ in range(4)] == [True, True, True, False]
    only_source = NewExchangeLimit.of(1, 2, 0, 400)
    assert only_source is not None
    budget = only_source.budget(0.0)
    assert [budget.allow(f"10.0.0.{i}", 0.0) for i in range(1000)] == [True] * 1000
    assert [budget.allow("10.0.0.1", 0.0) for _ in range(2)] == [True, False]
    assert isinstance(budget, Budget)


def test_a_driver_without_the_option_budgets_nothing() -> None:
    """A client's driver (it talks to its gateway only) has no budget; the gateway's daemon
    passes its options (tests/loopback/test_first_look.py: a served gateway drops a flood)."""
    from tests.helpers.ike_pair import client_config
    from tunvpn.ike.engine import IkeEngine
    from tunvpn.shell.udp import UdpDriver

    driver = UdpDriver(IkeEngine(client_config()), "127.0.0.1")
    assert driver.inbox._budget is None
    limited = UdpDriver(IkeEngine(client_config()), "127.0.0.1", limit_new=NewExchangeLimit())
    assert limited.inbox._budget is not None and limited.inbox._budget.per_key_burst == 20
