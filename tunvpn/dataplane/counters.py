"""What a gateway or client process counts, in one place: the counter registry.

Three kinds of owner count things, each on its own thread:

* the data thread (:mod:`tunvpn.dataplane.thread`): packets and batches each way, ESP drops
  by reason (``BAD_ICV``, ``REPLAY``, ``UNKNOWN_SPI``, ...), and bytes, packets and drops of
  every SA;
* the IKE driver (:mod:`tunvpn.shell.udp`): datagrams it dropped or could not send;
* the IKE engine (:mod:`tunvpn.ike.engine`, ``IkeEngine.drops``): messages it refused.

Nobody reads another thread's live counters (one exception: ``DataPlane.activity``, a single
int the data thread replaces, that tells whether anything moved at all). An owner offers a
*source*: a function that returns a :class:`CounterSnapshot`, an immutable copy taken by the
owner's own thread (the data thread copies its counts when asked, see
``DataPlane.counter_snapshot``). A daemon
registers its sources with one :class:`CounterRegistry`; ``tunvpn status`` reads
:meth:`CounterRegistry.snapshot` on the event loop (and a metrics exporter would do the same).

Group names: ``"dataplane"`` (the data thread's own counts), ``"esp drops"`` (drops of the
ESP core by reason, lower case), ``"dataplane sad"`` (``sas``: how many SAs are installed),
``"ike"`` (the engine's drops by reason), ``"ike state"`` (``half-open``: phase 1 SAs in
progress now), ``"ike driver"`` (the driver's). Per-SA counts are in
:attr:`CounterSnapshot.sas`, by SPI.

This module imports nothing: it lives in ``dataplane/``, whose counts are the most and the
busiest, and the daemons' registry (:func:`tunvpn.control.status.counter_registry`) wraps the
plain ``Counter`` objects of the IKE side, which may not import it (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["CounterRegistry", "CounterSnapshot", "SaCounts"]

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True)
class SaCounts:
    """The traffic of one SA as the data thread counted it."""

    bytes: int
    """Bytes of inner packets (decrypted, or to be encrypted)."""
    packets: int
    """Packets (inbound: authenticated; outbound: the sequence number reached)."""
    drops: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    """Inbound only: packets of this SA dropped after decryption, by reason (non-zero only)."""


@dataclass(frozen=True)
class CounterSnapshot:
    """Everything counted at one moment, copied by the owners: safe to hand between threads."""

    groups: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Group name -> counter name -> count."""
    sas: Mapping[int, SaCounts] = field(default_factory=dict)
    """SPI (inbound and outbound) -> :class:`SaCounts` of every installed SA."""

    @classmethod
    def of(cls, group: str, counts: Mapping[str, int]) -> CounterSnapshot:
        """A snapshot of one group; ``counts`` is copied (call it on the owner's thread)."""
        return cls(groups={group: dict(counts)})

    def group(self, name: str) -> Mapping[str, int]:
        """The counts of a group (empty if no source offered it)."""
        return self.groups.get(name, _EMPTY)

    def get(self, group: str, name: str) -> int:
        """One count (0 if it was never counted)."""
        return self.groups.get(group, _EMPTY).get(name, 0)

    def merged(self, other: CounterSnapshot) -> CounterSnapshot:
        """Both snapshots in one (a group or an SPI of ``other`` replaces the same one of ``self``)."""
        return CounterSnapshot({**self.groups, **other.groups}, {**self.sas, **other.sas})


Source = Callable[[], CounterSnapshot]
"""Returns a snapshot taken safely for the thread that owns the counts."""


class CounterRegistry:
    """The sources of counts of one process, read on its event loop thread.

    Sources are registered by name: registering a name again replaces the source (a data
    path restarted on reload), :meth:`unregister` drops it.

    Inside a running event loop, one snapshot serves every read of the same loop callback
    (the gateway's interim accounting reads once per session: one copy by the data thread
    per round, not one per session); the next callback takes a new one.
    """

    def __init__(self) -> None:
        self._sources: dict[str, Source] = {}
        self._current: CounterSnapshot | None = None

    def register(self, name: str, source: Source) -> None:
        self._sources[name] = source
        self._current = None

    def unregister(self, name: str) -> None:
        self._sources.pop(name, None)
        self._current = None

    def snapshot(self) -> CounterSnapshot:
        """Every source's snapshot merged, in the order they were registered."""
        if self._current is not None:
            return self._current
        out = CounterSnapshot()
        for source in list(self._sources.values()):
            out = out.merged(source())
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tests, tools): every read is fresh
            return out
        self._current = out
        loop.call_soon(self._forget)
        return out

    def _forget(self) -> None:
        self._current = None
