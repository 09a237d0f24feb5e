"""``tunvpn demo``: its pieces without root (the gateway TOML it writes and changes, the
transfer ends over loopback), and the whole demo end to end in network namespaces."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tunvpn.config.gateway import BUILT_IN, parse_gateway_config
from tunvpn.demo import traffic as demo_traffic
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


def test_the_transfer_ends_check_every_byte_over_loopback() -> None:
    import socket

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = threading.Thread(target=demo_traffic.sink, args=("127.0.0.1", port), daemon=True)
    sink.start()
    for _ in range(100):
        try:
            result = demo_traffic.send("127.0.0.1", port, 3 << 20, timeout=10)
            break
        except ConnectionRefusedError:
            threading.Event().wait(0.02)
    else:
        pytest.fail("the sink never listened")
    sink.join(10)
    assert result["sent"] == result["received"] == 3 << 20
    assert result["sha256"] == result["received_sha256"]
    assert isinstance(result["seconds"], float) and result["seconds"] > 0


# --------------------------------------------------------------------------- end to end


def _ours(listing: str) -> set[str]:
    return {line.split()[0] for line in listing.splitlines() if line.startswith("tvm")}


@pytest.mark.netns
def test_demo_shows_every_phase_follows_a_live_change_and_leaves_nothing() -> None:
    before_ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    before_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    out = subprocess.run([sys.executable, "-m", "tunvpn", "demo"], capture_output=True, text=True, timeout=90)
    text = out.stdout
    assert out.returncode == 0, text[-4000:] + out.stderr[-3000:]

    sections = re.findall(r"^== \d+\. (.+) ==$", text, re.M)
    assert sections == [
        "network",
        "gateway",
        "client",
        "phase 1",
        "XAUTH",
        "Mode Config",
        "Quick Mode",
        "ping through the tunnel",
        "data transfer",
        "live policy change",
        "ping through the tunnel",
        "cleanup",
    ]
    [tag] = set(re.findall(r"namespace (tvm[0-9a-f]{6})c:", text))
    assert 'gateway = "10.77.0.1"' in text and 'user = "demo"' in text
    assert re.search(r"chosen suite: aes256-sha512-ecp_521 .*authentication xauth_init_preshared", text)
    assert "user demo accepted" in text
    assert "address 10.79.0.10" in text
    for name in ("net-a", "net-b", "eng"):
        assert re.search(rf"^  {name}: 10\.79\.0\.10/32 === \S+  ESP aes256gcm16, PFS ECP_256", text, re.M)
    for host in ("10.78.0.10", "10.78.1.10", "10.20.0.10", "10.78.2.10"):
        assert re.search(rf"^  {re.escape(host)} \(.*\): 3/3 replies", text, re.M), host
    assert re.search(r"MiB of random data over TCP .* \d+ Mbit/s", text)
    assert "verified: the server got every byte intact" in text
    assert "reloaded: policy generation 2" in text
    assert re.search(r"^    added     net-c$", text, re.M) and re.search(r"^    removed   net-b$", text, re.M)
    assert re.search(r"^    unchanged net-a, eng$", text, re.M)
    assert "new SA net-c: 10.79.0.10/32 === 10.78.2.0/24  ESP chacha20poly1305, PFS ECP_384" in text
    assert "net-a, eng kept their SPIs" in text
    assert "10.78.1.10 (net-b): no reply, as it should be" in text
    assert f"checked: no namespace, link or process named {tag}* is left" in text
    assert text.rstrip().endswith("demo: every step passed")

    after_ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    after_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert _ours(after_ns) <= _ours(before_ns) and not any(n.startswith(tag) for n in _ours(after_ns))
    assert tag not in after_links and after_links.count("tvm") <= before_links.count("tvm")


def _run_demo_until(text: str, sig: signal.Signals) -> tuple[int, str, str]:
    """Start the demo, send ``sig`` once ``text`` is in its output; its status and output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunvpn", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell starts background jobs with SIGINT ignored; the demo must see Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:
        seen += line
        if text in line:
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=60)
    return proc.returncode, seen + out, err


@pytest.mark.netns
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_demo_still_removes_everything(sig: signal.Signals, status: int) -> None:
    code, out, err = _run_demo_until("== 8. ping through the tunnel ==", sig)
    assert code == status, out[-3000:] + err[-3000:]
    assert f"demo: interrupted ({sig.name}) during step 'ping through the tunnel'" in err
    [tag] = set(re.findall(r"namespace (tvm[0-9a-f]{6})c:", out))
    assert "client stopped (exit status 0); ISAKMP SA deleted" in out
    assert f"checked: no namespace, link or process named {tag}* is left" in out
    assert tag not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.netns
def test_a_failed_step_is_named_and_still_cleaned_up() -> None:
    """A real failure, not a simulated one: no gateway starts within 0.05 s."""
    out = subprocess.run(
        [sys.executable, "-m", "tunvpn", "demo", "--timeout", "0.05"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    # the step that runs out of time is the gateway's: usually its 'gateway ready' wait, on a
    # loaded machine already the forwarding command before it (the same limit applies to both)
    last = out.stderr.rstrip().splitlines()[-1]
    assert re.fullmatch(r"demo: FAILED at step 'gateway': .+ within 0\.05 s", last), out.stderr
    [tag] = set(re.findall(r"namespace (tvm[0-9a-f]{6})c:", out.stdout))
    assert f"checked: no namespace, link or process named {tag}* is left" in out.stdout
