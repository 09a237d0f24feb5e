"""``tunvpn demo``: the files it writes and the gateway TOML it changes (the transfer over
loopback is tested in tests/loopback/test_demo_traffic.py, the whole demo end to end in
tests/netns/test_demo.py)."""

from __future__ import annotations

from pathlib import Path

from tunvpn.config.gateway import BUILT_IN, parse_gateway_config
from tunvpn.demo.tour import ADDED, REMOVED, Files, changed_config

# --------------------------------------------------------------------------- without root


def test_the_written_files_are_private_and_the_config_loads(tmp_path: Path) -> None:
    files, text = Files.write(tmp_path)
    for name in ("gateway.psk", "users", "client.psk", "client.password", "gateway.toml", "profile.toml"):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0, name
    assert len(files.profile.read_text().splitlines()) == 3
    config = parse_gateway_config(text, BUILT_IN, base_dir=tmp_path)
    assert [r.policy.name for r in config.rules] == ["net-a", "net-b", "eng"]
    assert config.control_socket is not None and Path(config.control_socket) == files.control
    psk = (tmp_path / "client.psk").read_text().strip()
    assert psk not in text and psk not in files.profile.read_text()


def test_the_changed_config_drops_one_policy_and_adds_one(tmp_path: Path) -> None:
    _, text = Files.write(tmp_path)
    changed = parse_gateway_config(changed_config(text), BUILT_IN, base_dir=tmp_path)
    assert [r.policy.name for r in changed.rules] == ["net-a", "eng", ADDED]
    assert REMOVED not in {r.policy.name for r in changed.rules}
    [added] = [r.policy for r in changed.rules if r.policy.name == ADDED]
    assert str(added.gateway_ts) == "10.78.2.0/24" and str(added.suite) == "chacha20poly1305"
    original = parse_gateway_config(text, BUILT_IN, base_dir=tmp_path)
    assert [r for r in changed.rules if r.policy.name != ADDED] == [
        r for r in original.rules if r.policy.name != REMOVED
    ], "the policies kept must stay exactly as they were (the client keeps their SAs)"
