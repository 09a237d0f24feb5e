"""The smoke run of ``tunvpn bench logins`` (issue 14, "Capacity for real logins"): the command
as a user runs it, with a real gateway process and real clients on 127.77.x.y, small numbers.

Asserts only that every login completed, that the counts add up (the generator's and the
gateway's own, from ``tunvpn status``) and that the report has its fields; no speed is
asserted (the figures are in docs/capacity.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.loopback import needs_loopback

pytestmark = needs_loopback

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_logs_everyone_in_and_counts_add_up(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    argv = [
        sys.executable,
        "-m",
        "tunvpn",
        "bench",
        "logins",
        "--logins",
        "20",
        "--concurrency",
        "5",
        "--warmup",
        "5",
        "--hold",
        "50",
        "--timeout",
        "20",
        "--json",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False
    )
    print(done.stdout)
    print(done.stderr[-3000:], file=sys.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| logins/s |" in done.stdout and "| memory per connected client |" in done.stdout

    report = json.loads(out.read_text())
    assert report["command"].startswith("tunvpn bench logins --logins 20")

    logins = report["logins"]
    assert logins["started"] == 20
    assert logins["completed"] == 20 and logins["failed"] == 0 and logins["failures"] == {}
    assert logins["per_second"] > 0 and logins["window_seconds"] > 0
    assert set(logins["latency_ms"]) == {"p50", "p90", "p99", "max", "mean"}
    assert 0 < logins["latency_ms"]["p50"] <= logins["latency_ms"]["p99"] <= logins["latency_ms"]["max"]

    assert report["warmup"]["started"] == report["warmup"]["completed"] == 5

    memory = report["memory"]
    assert memory["clients_requested"] == memory["clients_up"] == memory["completed"] == 50
    # the gateway itself held every client: one session and one IPsec SA pair each
    assert memory["gateway_sessions"] == 50 and memory["gateway_ipsec_sas"] == 50
    assert memory["rss_0_kib"] > 0 and memory["rss_n_kib"] > 0
    assert memory["per_client_kib"] is not None

    gateway, generator = report["gateway_cpu"], report["generator_cpu"]
    assert gateway["seconds"] >= 0 and gateway["ms_per_login"] is not None
    assert generator["seconds"] > 0 and generator["percent_of_core"] is not None
    assert isinstance(report["lower_bound"], bool)
    assert ("LOWER BOUND: generator saturated" in done.stdout) == report["lower_bound"]

    setup = report["setup"]
    assert setup["suite"] == "ecp256" and setup["pfs"] == "ecp256" and setup["passwords"] == "clear"
    assert not any("exited with status" in note for note in report["notes"]), report["notes"]
