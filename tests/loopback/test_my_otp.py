# test_my_otp.py
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
    assert not tunvpn_session(
        plugin_names=["my-otp"],
        plugin_settings={"my-otp": {"codes": {"carol": "314159"}}},
        users={"carol": "c-pass"},
        user="carol",
        password="c-pass",
        answers=["000000"],
    ).connected
