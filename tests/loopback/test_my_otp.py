# test_my_otp.py
import pytest

from tunvpn.testing import ConfigError


def test_password_then_code(tunvpn_session):
    result = tunvpn_session(
        plugin_names=["my-otp"],  # loaded through its entry point
        plugin_settings={"my-otp": {"codes": {"carol": "314159"}}},
        users={"carol": "c-pass"},  # the users file the plugin checks
        user="carol",
        password="c-pass",
        answers=["314159"],
    )
    assert result.connected, result.failure
    assert result.prompts == ["Enter the code shown on your token [the answer to the challenge]: "]
    assert result.sas == {"intranet"}
    assert result.groups == {"eng"}
    assert not tunvpn_session(
        plugin_names=["my-otp"],
        plugin_settings={"my-otp": {"codes": {"carol": "314159"}}},
        users={"carol": "c-pass"},
        user="carol",
        password="c-pass",
        answers=["000000"],
    ).connected


def test_a_bad_setting_stops_the_gateway(tunvpn_session):
    with pytest.raises(ConfigError, match=r"\[plugin.my-otp\] codes.carol: expected a string of digits"):
        tunvpn_session(
            plugin_names=["my-otp"],
            plugin_settings={"my-otp": {"codes": {"carol": 314159}}},
            user="carol",
        )
