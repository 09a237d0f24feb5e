"""The full storm of issue 14 against tunvpn and against strongSwan, side by side (not run in CI;
the smoke version is tests/netns/test_storm.py). As root::

    python3 -m tests.helpers.storm_bench --seconds 120 --rate 5000 --sources 50 \
        --target tunvpn --target strongswan

Per target, in fresh namespaces (tests/helpers/storm.py, StormNet):

1. the gateway: ``tunvpn gateway`` (its defaults: 1,000 half-open, 5 per source, queue 1,024)
   or strongSwan's charon 5.9 (kernel-libipsec, log level 1 everywhere, its defaults), both
   with a pre-shared key + XAUTH + Mode Config from a pool and 10.78.0.0/24 behind them;
2. the live tunnel: tunvpn's client (alice, TUN device) from 10.77.0.2, a ping at 20/s to
   10.78.0.1 through it for the whole storm and after;
3. a new user (tunvpn's client, bob, ``--ike-only --once`` from 10.77.0.3-8; the same client
   for both gateways) logs in before the storm (the baseline), again and again during it,
   right after it and 5 s after it; each login is timed from its first message to its Quick
   Mode (the client's JSON lines, timed as they arrive);
4. the storm: seeded mutated ISAKMP (tests/helpers/mutator.py) at ``--rate`` from ``--sources``
   spoofed addresses for ``--seconds``; the gateway's RSS is sampled (peak), its CPU time,
   log lines, UDP answers towards the spoofed addresses and the kernel's receive-buffer drops
   are counted;
5. the spoofed-first-message cases: 1,000 real first messages from one address, then a login;
   20,000 from 2,000 addresses; a sustained flood (``--flood-seconds`` at ``--flood-rate``
   from ``--flood-sources`` addresses, default 20 s at 1,000/s from 500); each with logins
   while it lasts (if a second or more) and one after, and the kernel's receive-buffer drops;
6. SIGTERM: how long until the process is gone.

The text table and the raw JSON go to docs/bench/storm-<UTC date and time>.txt (``--out``).
The figures depend on the machine and on what else runs on it; the report says what it saw
(cores, load average before the run, the sender's achieved rate).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.netns import netns_unavailable_reason, run_in, stop_process
from tests.helpers.storm import (
    CLIENT,
    GATEWAY,
    NEW_USERS,
    POOL,
    PROTECTED,
    PROTECTED_NET,
    Connect,
    RssSampler,
    StormNet,
    connect_user,
    finish_storm,
    proc_status,
    start_storm,
    wait_sending,
)
from tests.helpers.tunvpn_proc import popen_tunvpn, private_file, read_text, run_tunvpn, wait_for_line

REPO = Path(__file__).resolve().parents[2]
PSK = "storm-bench-psk-0c7e41d2"
USERS = {"alice": "alice-pw", "bob": "bob-pw"}
TICK = os.sysconf("SC_CLK_TCK")
PING_INTERVAL = 0.05

TUNVPN_TOML = f"""\
[gateway]
listen = "{GATEWAY}"
psk_file = "gw.psk"
users_file = "users"
tun = "tvgw%d"

[network]
pool = "{POOL}"

[[policy]]
name = "protected"
local = "{PROTECTED_NET}"
"""

SWANCTL_CONF = f"""\
connections {{
  rw {{
    version = 1
    local_addrs = {GATEWAY}
    pools = rwpool
    proposals = aes256-sha512-ecp521, aes256-sha256-ecp256, aes256-sha256-modp2048
    local {{
      auth = psk
      id = {GATEWAY}
    }}
    remote {{
      auth = psk
    }}
    remote-xauth {{
      auth = xauth-generic
    }}
    children {{
      rw {{
        mode = tunnel
        local_ts = {PROTECTED_NET}
        esp_proposals = aes256gcm16-ecp256, aes256gcm16
      }}
    }}
  }}
}}
pools {{
  rwpool {{
    addrs = {POOL}
  }}
}}
secrets {{
  ike-rw {{
    secret = "{PSK}"
  }}
  xauth-alice {{
    id = alice
    secret = "{USERS["alice"]}"
  }}
  xauth-bob {{
    id = bob
    secret = "{USERS["bob"]}"
  }}
}}
"""


class Gateway:
    """One gateway under test in namespace ``net.g``."""

    name = ""
    program = ""

    def __init__(self, net: StormNet, tmp: Path) -> None:
        self.net, self.tmp = net, tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        raise NotImplementedError

    def log_lines(self) -> int:
        return len(self.log_text())

    def log_text(self) -> list[str]:
        raise NotImplementedError

    @staticmethod
    def log_source(line: str) -> str:
        """Who wrote a log line: tunvpn's logger name, charon's subsystem."""
        raise NotImplementedError

    def counters(self) -> dict[str, Any]:
        """What the gateway itself says about its IKE side."""
        raise NotImplementedError

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Tunvpn(Gateway):
    name = "tunvpn"

    def start(self) -> None:
        try:
            from tunvpn.cli import version

            release = version()
        except ImportError:  # a tunvpn older than `tunvpn --version`
            release = "(no version)"
        self.program = f"tunvpn {release} (git {_git_head()})"
        (self.tmp / "gateway.toml").write_text(TUNVPN_TOML)
        self.log = self.tmp / "gateway.log"
        self.proc = popen_tunvpn(
            self.net.g,
            ["gateway", "-c", str(self.tmp / "gateway.toml"), "--control", str(self.tmp / "gw.sock")],
            self.log,
        )
        wait_for_line(self.log, "gateway ready", self.proc, 30, "the tunvpn gateway")

    def log_text(self) -> list[str]:
        return read_text(self.log).splitlines()

    @staticmethod
    def log_source(line: str) -> str:
        words = line.split()  # 2026-12-06 04:12:00,650 INFO tunvpn.esp.ratelimit: ...
        return words[3].rstrip(":") if len(words) > 3 else "?"

    def counters(self) -> dict[str, Any]:
        out = run_tunvpn(self.net.g, ["status", "--socket", str(self.tmp / "gw.sock"), "--json"], timeout=30)
        if out.returncode != 0:
            return {"error": (out.stdout + out.stderr)[-500:]}
        ike: dict[str, Any] = json.loads(out.stdout).get("ike", {"error": "tunvpn status has no 'ike'"})
        return ike


class Strongswan(Gateway):
    name = "strongswan"

    def start(self) -> None:
        from tests.interop.strongswan import Charon

        version = subprocess.run(
            ["/usr/lib/ipsec/charon", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        self.program = f"{version or 'strongSwan charon'} (kernel-libipsec)"
        self.charon = Charon(self.tmp / "charon", self.net.g, log_levels={"default": 1})
        self.charon.start()
        self.charon.load(SWANCTL_CONF)
        self.proc = self.charon.proc

    def log_text(self) -> list[str]:
        return self.charon.log_text().splitlines() + read_text(self.charon.stdout_path).splitlines()

    @staticmethod
    def log_source(line: str) -> str:
        words = line.split()  # 04:12:00 07[NET] ...
        return words[1][2:] if len(words) > 1 and words[1][:2].isdigit() else "?"

    def counters(self) -> dict[str, Any]:
        out = self.charon.swanctl("stats", check=False, timeout=30)
        return {"swanctl --stats": " ".join(line.strip() for line in out.splitlines() if "IKE_SAs" in line)}


TARGETS: dict[str, type[Gateway]] = {"tunvpn": Tunvpn, "strongswan": Strongswan}


def _git_head() -> str:
    """The commit, and whether tunvpn/ had uncommitted changes (the code that really ran)."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "tunvpn"], capture_output=True, text=True
    ).stdout.strip()
    return (head or "?") + (" + uncommitted changes in tunvpn/" if dirty else "")


def _logins(results: list[Connect]) -> dict[str, Any]:
    times = [r.seconds for r in results if r.ok and r.seconds is not None]
    return {
        "tries": len(results),
        "ok": sum(r.ok for r in results),
        "seconds": [round(t, 3) for t in times],
        "median": round(statistics.median(times), 3) if times else None,
        "max": round(max(times), 3) if times else None,
    }


def run_target(
    target: str, args: argparse.Namespace, workdir: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """The whole sequence against one gateway; returns its raw figures."""
    tmp = workdir / target
    tmp.mkdir(parents=True)
    tmp.chmod(0o700)
    private_file(tmp / "gw.psk", PSK + "\n")
    private_file(tmp / "client.psk", PSK + "\n")
    private_file(tmp / "users", "".join(f"{u}:{p}\n" for u, p in USERS.items()))
    for user, password in USERS.items():
        private_file(tmp / f"{user}.pw", password + "\n")
    result: dict[str, Any] = {"target": target}
    with StormNet() as net:
        gw = TARGETS[target](net, tmp)
        gw.start()
        result["program"] = gw.program
        say(f"[{target}] {gw.program} up, pid {gw.pid}")
        alice_log = tmp / "alice.log"
        alice = popen_tunvpn(
            net.c,
            [
                "connect",
                GATEWAY,
                "--local",
                CLIENT,
                "--psk-file",
                str(tmp / "client.psk"),
                "--user",
                "alice",
                "--password-file",
                str(tmp / "alice.pw"),
                "--tun",
                "tvcl%d",
                "--control",
                "none",
                "--dns-backend",
                "none",
            ],
            alice_log,
        )
        users = iter(range(1 << 30))

        def login() -> Connect:
            local = NEW_USERS[next(users) % len(NEW_USERS)]
            return connect_user(
                net.c, GATEWAY, local, tmp / "client.psk", "bob", tmp / "bob.pw", timeout=args.login_timeout
            )

        try:
            wait_for_line(alice_log, "IPsec SA pair(s) up", alice, 60, "alice's tunnel")
            check = run_in(
                net.c, ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "3", PROTECTED], check=False
            )
            if " 0% packet loss" not in check.stdout:
                raise RuntimeError(f"the live tunnel does not pass ping before the storm:\n{check.stdout}")
            time.sleep(2)
            baseline = [login() for _ in range(3)]
            result["login_before"] = _logins(baseline)
            say(f"[{target}] logins before the storm: {result['login_before']}")
            before = proc_status(gw.pid)
            lines_before = gw.log_lines()
            udp_before = net.udp_counters(net.g)
            answers_before = net.answers_to_attacker()
            result["rss_kb_before"] = before["VmRSS"]
            pings = int((args.seconds + args.after + 10) / PING_INTERVAL)
            ping_argv = ["ping", "-n", "-q", "-c", str(pings), "-i", str(PING_INTERVAL), "-W", "3", PROTECTED]
            ping = subprocess.Popen(
                ["ip", "netns", "exec", net.c, *ping_argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            storm_log = tmp / "storm.log"
            storm_args = [
                "--rate",
                str(args.rate),
                "--seconds",
                str(args.seconds),
                "--sources",
                str(args.sources),
            ]
            storm_args += ["--seed", str(args.seed), "--pool", str(args.pool)]
            with RssSampler(gw.pid) as rss:
                storm = start_storm(net, storm_log, *storm_args)
                wait_sending(storm, storm_log)
                before = proc_status(gw.pid)
                storm_start = time.monotonic()
                during: list[Connect] = []
                time.sleep(1.0)
                while storm.poll() is None:
                    one = login()
                    if storm.poll() is None:  # it counts as "during" only if the storm still ran
                        during.append(one)
                    time.sleep(args.login_every)
                sent = finish_storm(storm, storm_log)
                storm_seconds = time.monotonic() - storm_start
                end = proc_status(gw.pid)
                result["storm"] = sent
                result["login_during"] = _logins(during)
                result["login_after_at_once"] = _logins([login()])
                say(f"[{target}] storm done: {sent}")
                time.sleep(args.after)
                result["login_after_5s"] = _logins([login()])
                result["rss_kb_after"] = proc_status(gw.pid)["VmRSS"]
            ping_out, _ = ping.communicate(timeout=args.seconds + args.after + 120)
            result["rss_kb_peak"] = max(rss.peak_kb, result["rss_kb_after"])
            result["rss_kb_hwm"] = proc_status(gw.pid)["VmHWM"]
            result["rss_samples"] = len(rss.samples)
            result["cpu_seconds_storm"] = round((end["cpu_ticks"] - before["cpu_ticks"]) / TICK, 2)
            result["cpu_pct_of_one_core"] = round(100 * result["cpu_seconds_storm"] / storm_seconds, 1)
            storm_lines = gw.log_text()[lines_before:]
            result["log_lines_storm"] = len(storm_lines)
            result["log_lines_by_source"] = dict(Counter(map(gw.log_source, storm_lines)).most_common())
            udp = net.udp_counters(net.g)
            result["udp"] = {k: udp[k] - udp_before.get(k, 0) for k in udp}
            answers = net.answers_to_attacker()
            result["answers_to_spoofed"] = {k: answers[k] - answers_before[k] for k in answers}
            result["ping"] = _ping_summary(ping_out)
            result["counters_after_storm"] = gw.counters()
            result["alive_after_storm"] = gw.alive()
            say(
                f"[{target}] ping {result['ping']}, rss {result['rss_kb_before']}->{result['rss_kb_peak']} kB"
            )

            # the spoofed-first-message cases
            cases = [
                ("first_1000_from_1", ["--count", "1000"], args.rate, 1, 1000 / args.rate),
                ("first_20000_from_2000", ["--count", "20000"], args.rate, 2000, 20000 / args.rate),
            ]
            if args.flood_seconds > 0:
                flood_args = ["--seconds", str(args.flood_seconds)]
                cases.append(
                    ("first_flood", flood_args, args.flood_rate, args.flood_sources, args.flood_seconds)
                )
            for n, (key, limit, rate, sources, lasts) in enumerate(cases, start=1):
                log = tmp / f"{key}.log"
                udp_before = net.udp_counters(net.g)
                flood = start_storm(
                    net,
                    log,
                    "--kind",
                    "first",
                    *limit,
                    "--rate",
                    str(rate),
                    "--sources",
                    str(sources),
                    "--seed",
                    str(args.seed + n),
                    "--pool",
                    "20000",
                )
                wait_sending(flood, log)
                during = []
                # logins that start while the flood runs (if it lasts a second or more)
                if lasts >= 1:
                    time.sleep(0.3)
                    while flood.poll() is None:
                        one = login()
                        if flood.poll() is None or not during:
                            during.append(one)
                        time.sleep(1)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    flood.wait(lasts + 120)
                sent = finish_storm(flood, log)
                after = login()
                udp = net.udp_counters(net.g)
                result[key] = {
                    "sent": sent["sent"],
                    "rate": sent["rate"],
                    "sources": sources,
                    "login_during": _logins(during) if during else None,
                    "login": _logins([after]),
                    "kernel_drops": udp["RcvbufErrors"] - udp_before["RcvbufErrors"],
                    "counters": gw.counters(),
                    "alive": gw.alive(),
                }
                say(f"[{target}] {key}: {result[key]}")
            result["rss_kb_end"] = proc_status(gw.pid)["VmRSS"]
            result["log_lines_total"] = gw.log_lines()
        except Exception:  # keep what was measured; the report says where it stopped
            result["error"] = traceback.format_exc(limit=3)
            say(f"[{target}] stopped by an error:\n{result['error']}")
        finally:
            stop_process(alice)
            if gw.proc is not None and gw.proc.poll() is None:
                start = time.monotonic()
                gw.proc.terminate()
                try:
                    code: int | None = gw.proc.wait(30)
                except subprocess.TimeoutExpired:
                    code = None
                result["sigterm_exit_seconds"] = (
                    round(time.monotonic() - start, 2) if code is not None else None
                )
                result["sigterm_exit_code"] = code
                stop_process(gw.proc)
            code, took = result.get("sigterm_exit_code"), result.get("sigterm_exit_seconds")
            say(f"[{target}] SIGTERM: exit {code} after {took} s")
    return result


def _ping_summary(out: str) -> dict[str, Any]:
    import re

    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    if not match:
        return {"error": out[-300:]}
    sent, got = int(match.group(1)), int(match.group(2))
    return {"sent": sent, "received": got, "loss_pct": round(100 * (sent - got) / sent, 3) if sent else None}


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def _t(login: dict[str, Any] | None) -> str:
    if not login:
        return "-"
    text = ", ".join(f"{t:g}" for t in login["seconds"]) + " s" if login["seconds"] else ""
    if len(login["seconds"]) > 6:
        slow = sum(t > 1 for t in login["seconds"])
        text = f"median {login['median']} s, max {login['max']} s, {slow} over 1 s ({login['tries']} logins)"
    if login["ok"] < login["tries"]:
        text = f"{login['tries'] - login['ok']} of {login['tries']} FAILED" + (
            f"; ok: {text}" if text else ""
        )
    return text


def table(results: list[dict[str, Any]]) -> str:
    """The figures side by side, one column per target (markdown)."""
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("program", lambda r: r.get("program", "-")),
        (
            "storm sent (datagrams, achieved rate)",
            lambda r: f"{r['storm']['sent']} in {r['storm']['seconds']} s ({r['storm']['rate']}/s)",
        ),
        ("alive after the storm", lambda r: "yes" if r.get("alive_after_storm") else "NO"),
        (
            "live tunnel: pings lost",
            lambda r: (
                f"{r['ping']['sent'] - r['ping']['received']} of {r['ping']['sent']} "
                f"({r['ping']['loss_pct']} %)"
            ),
        ),
        ("login before the storm", lambda r: _t(r.get("login_before"))),
        ("login during the storm", lambda r: _t(r.get("login_during"))),
        ("login right after the storm", lambda r: _t(r.get("login_after_at_once"))),
        ("login 5 s after the storm", lambda r: _t(r.get("login_after_5s"))),
        (
            "RSS before / peak / after (MB)",
            lambda r: f"{_mb(r['rss_kb_before'])} / {_mb(r['rss_kb_peak'])} / {_mb(r['rss_kb_after'])}",
        ),
        (
            "CPU during the storm",
            lambda r: f"{r['cpu_seconds_storm']} s ({r['cpu_pct_of_one_core']} % of a core)",
        ),
        (
            "log lines during the storm (most frequent sources)",
            lambda r: f"{r['log_lines_storm']} ({_top(r['log_lines_by_source'])})",
        ),
        (
            "answers to the spoofed sources",
            lambda r: (
                f"{r['answers_to_spoofed']['tx_packets']} packets, {r['answers_to_spoofed']['tx_bytes']} "
                f"bytes (storm: {r['storm']['bytes']} bytes)"
            ),
        ),
        ("UDP dropped by the kernel (receive buffer full)", lambda r: str(r["udp"].get("RcvbufErrors", "-"))),
        ("gateway's own counters after the storm", lambda r: _counters(r.get("counters_after_storm"))),
        ("1,000 first messages from 1 address, then a login", lambda r: _first(r.get("first_1000_from_1"))),
        (
            "20,000 first messages from 2,000 addresses, then a login",
            lambda r: _first(r.get("first_20000_from_2000")),
        ),
        (
            "first messages for --flood-seconds at --flood-rate from --flood-sources addresses",
            lambda r: _first(r.get("first_flood")),
        ),
        (
            "SIGTERM at the end",
            lambda r: f"exit {r.get('sigterm_exit_code')} after {r.get('sigterm_exit_seconds')} s",
        ),
    ]
    rows.append(
        ("stopped by an error", lambda r: r["error"].strip().splitlines()[-1] if r.get("error") else "no")
    )
    lines = ["| | " + " | ".join(r["target"] for r in results) + " |", "|---" * (len(results) + 1) + "|"]
    for label, cell in rows:
        cells = []
        for r in results:
            try:
                cells.append(cell(r).replace("|", "/"))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _top(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in list(counts.items())[:3])


def _counters(counters: dict[str, Any] | None) -> str:
    if not counters:
        return "-"
    if "swanctl --stats" in counters:
        return str(counters["swanctl --stats"])
    dropped = counters.get("dropped", {})
    total = sum(dropped.values()) if isinstance(dropped, dict) else 0
    return f"half-open {counters.get('half_open')}, queue {counters.get('queue_depth')}, dropped {total}"


def _first(case: dict[str, Any] | None) -> str:
    if not case:
        return "-"
    during = f"login during {_t(case['login_during'])}, " if case.get("login_during") else ""
    return (
        f"sent {case['sent']} at {case['rate']}/s from {case.get('sources', '?')} addresses; "
        f"{during}login after {_t(case['login'])}; "
        f"{case.get('kernel_drops', '-')} dropped by the kernel; {_counters(case['counters'])}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.helpers.storm_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--target", action="append", choices=sorted(TARGETS), help="repeatable (default: both)"
    )
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--sources", type=int, default=50)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--pool", type=int, default=50000, help="mutated datagrams made before the storm")
    parser.add_argument(
        "--after", type=float, default=5.0, help="seconds between the storm and the last login"
    )
    parser.add_argument(
        "--login-every", type=float, default=3.0, help="pause between logins during the storm"
    )
    parser.add_argument("--login-timeout", type=float, default=30)
    parser.add_argument(
        "--flood-seconds", type=float, default=20, help="a sustained first-message flood (0: none)"
    )
    parser.add_argument("--flood-rate", type=float, default=1000)
    parser.add_argument("--flood-sources", type=int, default=500)
    parser.add_argument(
        "--out", type=Path, default=None, help="report file (default docs/bench/storm-DATE.txt)"
    )
    parser.add_argument(
        "--label", default="", help="a line for the report (e.g. 'short run, shared machine')"
    )
    args = parser.parse_args(argv)
    if reason := netns_unavailable_reason():
        parser.error(reason)
    targets = args.target or ["tunvpn", "strongswan"]
    started = datetime.datetime.now(datetime.UTC)
    out = args.out or REPO / "docs" / "bench" / f"storm-{started:%Y-%m-%d-%H%M}.txt"
    import tempfile

    machine = {
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="tvstorm-") as workdir:
        for target in targets:
            results.append(run_target(target, args, Path(workdir), lambda s: print(s, flush=True)))
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    command = "python3 -m tests.helpers.storm_bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = "\n".join(
        [
            f"# Storm (issue 14): {started:%Y-%m-%d %H:%M} UTC",
            "",
            f"{args.label}" if args.label else "",
            f"command: {command}",
            f"storm: mutated ISAKMP (tests/helpers/mutator.py, seed {args.seed}) at {args.rate:g}/s from "
            f"{args.sources} spoofed addresses for {args.seconds:g} s; ports 500 and 4500 (with and without "
            "the non-ESP marker)",
            f"machine: {machine['cpus']} CPUs, load average {machine['loadavg_before']} before, "
            f"{machine['loadavg_after']} after; Linux {machine['kernel']}, Python {machine['python']}",
            "new user: tunvpn's client (Main Mode PSK + XAUTH + Mode Config + Quick Mode, --ike-only), "
            "timed from its first message to its Quick Mode",
            "",
            table(results),
            "",
            "## raw",
            "",
            json.dumps({"command": command, "machine": machine, "results": results}, indent=1),
            "",
        ]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(table(results))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
