"""The ESP data path core (RFC 4303), sans-I/O.

The I/O layer reads inner packets from TUN and ESP datagrams from UDP, and calls:

- ``SadTable.encrypt_batch(packets)`` → ``[(OutboundSA, [esp, ...]), ...]``: send each list
  to ``sa.peer`` (inside UDP when ``sa.udp_encap``), e.g. one GSO ``sendmsg`` per peer;
- ``split_datagrams(datagrams)`` on port 4500, then ``SadTable.decrypt_batch(esp, now)`` →
  inner packets to write to TUN; IKE messages go to the IKE engine;
- ``SadTable.get_timer()`` / ``handle_timer(now)`` / ``next_event()`` for lifetimes, and
  ``install`` / ``replace`` / ``remove`` from the control plane.

Nothing here reads a clock, opens a socket or starts a thread.
"""

from .constants import (
    DEFAULT_REPLAY_WINDOW,
    SEQ32_MAX,
    SEQ64_MAX,
    Direction,
    DropReason,
    LifetimeTrigger,
    NextHeader,
)
from .events import SaHardExpired, SaLifetimeEvent, SaSoftExpired
from .ratelimit import DropLog, TokenBucket
from .replay import IntReplayWindow, ReplayWindow
from .sa import (
    InboundSA,
    Lifetime,
    NegotiatedChild,
    OutboundSA,
    decrypt_batch,
    encrypt_batch,
    sa_pair_from_child,
    suite_from_child,
)
from .table import SadTable
from .transforms import AeadEngine, CbcEngine, EspSuite, esp_trailer, strip_trailer
from .udpencap import (
    NAT_KEEPALIVE,
    NON_ESP_MARKER,
    DatagramKind,
    classify_datagram,
    nat_keepalive,
    split_datagrams,
    strip_non_esp_marker,
    with_non_esp_marker,
)

__all__ = [
    "DEFAULT_REPLAY_WINDOW",
    "SEQ32_MAX",
    "SEQ64_MAX",
    "DatagramKind",
    "Direction",
    "DropReason",
    "LifetimeTrigger",
    "NextHeader",
    "SaHardExpired",
    "SaLifetimeEvent",
    "SaSoftExpired",
    "DropLog",
    "TokenBucket",
    "IntReplayWindow",
    "ReplayWindow",
    "InboundSA",
    "Lifetime",
    "NegotiatedChild",
    "OutboundSA",
    "decrypt_batch",
    "encrypt_batch",
    "sa_pair_from_child",
    "suite_from_child",
    "SadTable",
    "AeadEngine",
    "CbcEngine",
    "EspSuite",
    "esp_trailer",
    "strip_trailer",
    "NAT_KEEPALIVE",
    "NON_ESP_MARKER",
    "classify_datagram",
    "nat_keepalive",
    "split_datagrams",
    "strip_non_esp_marker",
    "with_non_esp_marker",
]
