"""Status snapshots of a running gateway or client: what ``tunvpn status`` shows of each child SA
(its suite, selectors, counters and drops), shared by both daemons."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tunvpn.dataplane.counters import CounterRegistry, CounterSnapshot
from tunvpn.ike import events as ev
from tunvpn.ike.constants import DHGroup
from tunvpn.shell.udp import esp_suite_name

if TYPE_CHECKING:
    from tunvpn.dataplane.tunnel import Tunnel
    from tunvpn.ike.engine import IkeEngine
    from tunvpn.shell.udp import UdpDriver


class Daemon(Protocol):
    """What a gateway or client daemon holds that counts things."""

    engine: IkeEngine
    driver: UdpDriver | None
    tunnel: Tunnel | None


def counter_registry(daemon: Daemon) -> CounterRegistry:
    """The counter sources of a daemon (:mod:`tunvpn.dataplane.counters`): the data thread's counts and
    SAs (copied on the data thread), the IKE engine's drops by reason (group ``ike``), its
    half-open phase 1 SAs now (group ``ike state``), the answers it did not send to unverified
    senders (group ``ike withheld``: notify budget, size) and the IKE driver's (group ``ike
    driver``). The sources look the parts up on every read, so a data
    path or driver started later, or gone, is seen as it is."""
    registry = CounterRegistry()

    def dataplane() -> CounterSnapshot:
        tunnel = daemon.tunnel
        return tunnel.dataplane.counter_snapshot() if tunnel is not None else CounterSnapshot()

    def driver() -> CounterSnapshot:
        udp = daemon.driver
        return CounterSnapshot.of("ike driver", udp.counts()) if udp is not None else CounterSnapshot()

    registry.register("dataplane", dataplane)
    registry.register("ike", lambda: CounterSnapshot.of("ike", daemon.engine.drops))
    registry.register("ike withheld", lambda: CounterSnapshot.of("ike withheld", daemon.engine.withheld))
    registry.register(
        "ike state", lambda: CounterSnapshot.of("ike state", {"half-open": daemon.engine.half_open_count()})
    )
    registry.register("ike driver", driver)
    return registry


def busy_poll_status(snapshot: CounterSnapshot) -> dict[str, int] | None:
    """What the data thread's busy polling did (docs/datapath.md "Busy polling"): ``limit_us``,
    ``polls``, ``answered``, ``missed``, ``interrupted``, ``skipped``, ``over_budget``,
    ``polled_ns``, ``answer_us``; None when it is off (or there is no data path)."""
    group = snapshot.group("busy poll")
    if not group:
        return None
    return {name.replace(" ", "_"): value for name, value in group.items()}


def sa_counters(snapshot: CounterSnapshot) -> dict[int, tuple[int, int]]:
    """SPI -> (bytes, packets) of every installed SA, from a counter snapshot (the data thread
    copied them: :meth:`tunvpn.dataplane.thread.DataPlane.counter_snapshot`)."""
    return {spi: (sa.bytes, sa.packets) for spi, sa in snapshot.sas.items()}


def sa_drops(snapshot: CounterSnapshot) -> dict[int, dict[str, int]]:
    """Inbound SPI -> packets dropped after decryption, by reason (``policy``: an inner packet
    outside the SA's selectors, e.g. a standard client reaching beyond its policies)."""
    return {spi: dict(sa.drops) for spi, sa in snapshot.sas.items() if sa.drops}


def child_status(
    child: ev.ChildSAEstablished,
    counters: dict[int, tuple[int, int]],
    age: float,
    drops: dict[int, dict[str, int]] | None = None,
) -> dict[str, object]:
    """One child SA as ``tunvpn status`` shows it (``sas`` of a tunnel; schema in :mod:`.server`)."""
    bytes_in, packets_in = counters.get(child.spi_in, (0, 0))
    bytes_out, packets_out = counters.get(child.spi_out, (0, 0))
    return {
        "name": child.policy_name,
        "local_ts": str(child.local_ts),
        "remote_ts": str(child.remote_ts),
        "esp": esp_suite_name(child.transform, child.key_length, child.integrity),
        "pfs": DHGroup(child.pfs_group).name if child.pfs_group else None,
        "esn": child.esn,
        "spi_in": f"0x{child.spi_in:08x}",
        "spi_out": f"0x{child.spi_out:08x}",
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "packets_in": packets_in,
        "packets_out": packets_out,
        "drops_in": (drops or {}).get(child.spi_in, {}),
        "lifetime": child.lifetime_seconds,
        "expires_in": max(0.0, child.lifetime_seconds - age) if child.lifetime_seconds else None,
    }
