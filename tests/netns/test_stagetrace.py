"""Issue 21: the latency breakdown on real daemons. A short ``tunvpn bench`` of the tunvpn path
with TUNVPN_STAGE_TRACE set: the client's and the gateway's data threads each write their
records when they stop, and ``python -m tunvpn.dataplane.stagetrace`` pairs them into the four
traversals of the pings. Only that the breakdown is there is checked: the figures are in
docs/datapath.md ("Latency")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.requires import require_root_netns, skip_or_fail
from tunvpn.bench.runner import BenchOptions, run_bench
from tunvpn.dataplane.stagetrace import ENV, STAGES, TRAVERSALS

pytestmark = pytest.mark.netns


def test_the_daemons_record_their_stages_and_the_pings_pair_into_four_traversals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_root_netns()
    if shutil.which("iperf3") is None:
        skip_or_fail("iperf3 is missing (bash contrib/test-all.sh installs it)")
    traces = tmp_path / "traces"
    traces.mkdir()
    monkeypatch.setenv(ENV, str(traces))  # the daemons the bench starts inherit it
    options = BenchOptions(
        paths=["tunvpn"],
        duration=1,
        pings=8,
        ping_interval=0.1,
        setup_timeout=30,
        workdir_parent=tmp_path,
        load_ping_interval=0,
    )
    report = run_bench(options)
    path = report.path("tunvpn")
    assert path is not None and path.runs and path.runs[0].ok, path
    files = sorted(traces.glob("stages-*.jsonl"))
    assert len(files) == 2, files  # the client's data thread and the gateway's
    run = subprocess.run(
        [sys.executable, "-m", "tunvpn.dataplane.stagetrace", str(traces), "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    pings = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(pings) >= 4, run.stdout  # most of the 8 pings; a few may share a batch
    for ping in pings:
        assert set(ping["stages"]) == set(TRAVERSALS)
        for traversal in TRAVERSALS:
            stages = ping["stages"][traversal]
            assert set(stages) == set(STAGES)
            # each stage is a duration; "wake" compares two clocks of one host: >= 0 as well
            assert all(value >= 0 for value in stages.values()), (traversal, stages)
            assert stages["core"] > 0 and stages["read"] > 0
