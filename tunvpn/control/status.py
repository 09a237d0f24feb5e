"""Status snapshots of a running gateway or client: what ``tunvpn status`` shows of each child SA
(its suite, selectors, counters and drops), shared by both daemons."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunvpn.ike import events as ev
from tunvpn.ike.constants import DHGroup
from tunvpn.shell.udp import esp_suite_name

if TYPE_CHECKING:
    from tunvpn.dataplane.tunnel import Tunnel


def sa_counters(tunnel: Tunnel | None) -> dict[int, tuple[int, int]]:
    """SPI -> (bytes, packets) of every installed SA (read from the data thread's table;
    plain int reads, so a slightly stale value at worst)."""
    if tunnel is None:
        return {}
    out: dict[int, tuple[int, int]] = {}
    try:
        sad = tunnel.dataplane.sad
        for inbound in sad.inbound_sas():
            out[inbound.spi] = (inbound.bytes, inbound.packets)
        for outbound in sad.outbound_sas():
            out[outbound.spi] = (outbound.bytes, outbound.seq)
    except (AttributeError, RuntimeError):  # the table changed while we read it
        pass
    return out


def sa_drops(tunnel: Tunnel | None) -> dict[int, dict[str, int]]:
    """Inbound SPI -> packets dropped after decryption, by reason (``policy``: an inner packet
    outside the SA's selectors, e.g. a standard client reaching beyond its policies)."""
    if tunnel is None:
        return {}
    out: dict[int, dict[str, int]] = {}
    try:
        for sa in tunnel.dataplane.sad.inbound_sas():
            drops = {reason.name.lower(): n for reason, n in sa.drop_counts().items() if n}
            if drops:
                out[sa.spi] = drops
    except (AttributeError, RuntimeError):  # the table changed while we read it
        pass
    return out


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
