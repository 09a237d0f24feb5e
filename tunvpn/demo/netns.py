"""Network namespaces and the processes in them, for ``tunvpn demo`` (:mod:`tunvpn.demo.tour`).

:class:`Topology` makes namespaces and veth pairs with names unique to one run and removes
them, killing what still runs inside, and says what it could not remove. :class:`Daemon` is
a long-running process in a namespace whose ``--json`` records and log lines are kept, so a
step can wait for a record (:meth:`Daemon.until`); :func:`run_in` and :func:`ping` run a
command to completion. Every wait is bounded; a failure is a :class:`StepFailed` with a
message for the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tunvpn.untrusted import for_terminal

Record = dict[str, Any]
"""One ``--json`` progress record of ``tunvpn connect``."""
T = TypeVar("T")


class StepFailed(Exception):
    """The step in progress cannot go on; the message says why, for the user."""


# --------------------------------------------------------------------------- the network


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


def _ip_lines(*args: str) -> list[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    return result.stdout.splitlines()


class Topology:
    """Namespaces ``<prefix><6 hex><role>`` and veth ends ``<prefix><6 hex><from><to>``
    (within the 15-character interface-name limit); ``remove`` deletes them all."""

    def __init__(self, prefix: str) -> None:
        self.tag = prefix + secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.veths: list[str] = []

    def add_ns(self, role: str) -> str:
        """A new namespace with its loopback up; ``role`` is one character."""
        ns = self.tag + role
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def link(self, a: str, a_addrs: Sequence[str], b: str, b_addrs: Sequence[str]) -> None:
        """A veth pair between namespaces ``a`` and ``b``, each end up with its addresses."""
        dev_a, dev_b = self.tag + a[-1] + b[-1], self.tag + b[-1] + a[-1]
        _ip("link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
        self.veths += [dev_a, dev_b]
        for ns, dev, addrs in ((a, dev_a, a_addrs), (b, dev_b, b_addrs)):
            _ip("link", "set", dev, "netns", ns)
            for addr in addrs:
                _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")

    def route(self, ns: str, *route: str) -> None:
        _ip("-n", ns, "route", "add", *route)

    def pids(self) -> dict[str, list[int]]:
        """Processes still running in our namespaces."""
        found = {}
        for ns in self.namespaces:
            pids = [int(p) for p in _ip_lines("netns", "pids", ns) if p.strip().isdigit()]
            if pids:
                found[ns] = pids
        return found

    def remove(self) -> list[str]:
        """Kill what still runs inside, delete the namespaces (their veths and TUN devices go
        with them) and any veth left in ours; what is still there afterwards, in words."""
        leftovers = []
        for ns, pids in self.pids().items():
            leftovers.append(f"{len(pids)} process(es) still running in {ns}: killed")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=30)
        for dev in self.veths:  # only there if a move into a namespace failed
            subprocess.run(["ip", "link", "del", dev], capture_output=True, check=False, timeout=30)
        left_ns = [line.split()[0] for line in _ip_lines("netns", "list") if line.startswith(self.tag)]
        left_links = [line for line in _ip_lines("-o", "link", "show") if self.tag in line]
        leftovers += [f"namespace {ns} is still there" for ns in left_ns]
        leftovers += [f"link still there: {line.split(':')[1].strip()}" for line in left_links]
        return leftovers


# --------------------------------------------------------------------------- processes


def _json_record(line: str) -> Record | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "event" in record else None


async def exec_in(
    ns: str, argv: Sequence[str], env: dict[str, str], *, stdout: int, stderr: int
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        ns,
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
    )


async def run_in(ns: str, argv: Sequence[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Run ``argv`` in ``ns`` to completion: exit status, stdout, stderr."""
    proc = await exec_in(ns, argv, env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise StepFailed(f"`{' '.join(argv[:3])} ...` did not finish within {timeout:g} s") from None
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def tunvpn_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunvpn", *args]


@dataclass
class Daemon:
    """A long-running process in a namespace: JSON records (``--json``) and log lines kept;
    log lines echoed with ``-v``."""

    name: str
    proc: asyncio.subprocess.Process
    verbose: bool
    records: list[Record] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    _cursor: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(
        cls, name: str, ns: str, argv: Sequence[str], env: dict[str, str], verbose: bool
    ) -> Daemon:
        proc = await exec_in(ns, argv, env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        daemon = cls(name, proc, verbose)
        assert proc.stdout is not None and proc.stderr is not None
        daemon._readers = [
            asyncio.ensure_future(daemon._read(proc.stdout)),
            asyncio.ensure_future(daemon._read(proc.stderr)),
        ]
        return daemon

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            line = raw.decode(errors="replace").rstrip("\n")
            record = _json_record(line)
            if record is not None:
                self.records.append(record)
            else:
                self.log.append(line)
                if self.verbose:
                    print(f"    {self.name} log | {for_terminal(line)}", flush=True)
            self._changed.set()
        self._changed.set()

    @property
    def ended(self) -> bool:
        return all(reader.done() for reader in self._readers)

    async def _wait(self, check: Callable[[], T | None], what: str, timeout: float) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            found = check()
            if found is not None:
                return found
            if self.ended:
                status = await self.proc.wait()
                raise StepFailed(f"the {self.name} exited (status {status}) before {what}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StepFailed(f"no {what} within {timeout:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_log(self, text: str, what: str, timeout: float) -> str:
        """The first log line containing ``text``."""
        return await self._wait(lambda: next((x for x in self.log if text in x), None), what, timeout)

    async def until(self, predicate: Callable[[Record], bool], what: str, timeout: float) -> list[Record]:
        """The records from the last match up to and including the next one that satisfies
        ``predicate``; a ``failed`` record on the way ends the step with its message."""

        def scan() -> list[Record] | None:
            for i in range(self._cursor, len(self.records)):
                record = self.records[i]
                if record.get("state") == "failed":
                    raise StepFailed(f"the {self.name} reports: {record.get('message')}")
                if predicate(record):
                    batch = self.records[self._cursor : i + 1]
                    self._cursor = i + 1
                    return batch
            return None

        return await self._wait(scan, what, timeout)

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (the client deletes its SAs), SIGKILL if it does not exit in time."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._readers), 5)
        assert self.proc.returncode is not None
        return self.proc.returncode


def event_is(event: str, state: str | None = None, name: str | None = None) -> Callable[[Record], bool]:
    def match(record: Record) -> bool:
        return (
            record.get("event") == event
            and (state is None or record.get("state") == state)
            and (name is None or record.get("name") == name)
        )

    return match


def log_message(line: str) -> str:
    """A log line without its timestamp, level and logger name."""
    return re.sub(r"^\S+ \S+ [A-Z]+ \S+: ", "", line)


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    avg_ms: float | None
    output: str

    def summary(self) -> str:
        rtt = f", rtt avg {self.avg_ms:.2f} ms" if self.avg_ms is not None else ""
        return f"{self.received}/{self.sent} replies{rtt}"


async def ping(ns: str, host: str, env: dict[str, str], count: int = 3) -> PingResult:
    argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", host]
    _, out, err = await run_in(ns, argv, env, 30)
    counts = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", out)
    sent, received = (int(counts[1]), int(counts[2])) if counts else (count, 0)
    return PingResult(sent, received, float(rtt[1]) if rtt else None, (out + err).strip())


__all__ = [
    "Daemon",
    "PingResult",
    "Record",
    "StepFailed",
    "Topology",
    "event_is",
    "exec_in",
    "log_message",
    "ping",
    "run_in",
    "tunvpn_argv",
]
