"""A gateway namespace with several client namespaces on one bridged segment, optionally each
behind its own NAT router (a helper for the tests, not a test).

``GatewayLan`` builds::

    client ns c1 (10.77.0.2) --veth--+
    client ns c2 (10.77.0.3) --veth--+-- bridge in ns g (10.77.0.1/24)  [the gateway]

and, with :meth:`GatewayLan.add_natted_client`, a client in its own private network behind a
router namespace that masquerades (nftables) onto the bridged segment::

    client ns n1 (192.168.1.10) --veth-- router ns r1 (192.168.1.1 | 10.77.0.12) --veth--+-- bridge

Two natted clients can have the same private address: each sits in its own namespace behind its
own router, as two home users behind two home NATs. Everything is cleaned up by the Topology.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

from tests.helpers.netns import Topology, run_in


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class GatewayLan(Topology):
    """Namespace ``g`` (the gateway) owning a bridge with address ``gateway_addr``; clients are
    added with :meth:`add_client` or :meth:`add_natted_client`."""

    BRIDGE = "tvbr0"

    def __init__(self, gateway_addr: str = "10.77.0.1/24") -> None:
        super().__init__()
        try:
            self.g = self.add_ns("g")
            _ip("-n", self.g, "link", "add", self.BRIDGE, "type", "bridge")
            _ip("-n", self.g, "addr", "add", gateway_addr, "dev", self.BRIDGE)
            _ip("-n", self.g, "link", "set", self.BRIDGE, "up")
        except BaseException:
            self.close()
            raise
        self.gateway_interface = ipaddress.ip_interface(gateway_addr)
        self.addr_g = str(self.gateway_interface.ip)
        self._ports = 0

    def _bridge_port(self, ns: str, addr: str) -> str:
        """A veth from the bridge in ``g`` into ``ns``, with ``addr`` (CIDR) on the ``ns`` end;
        return that end's interface name."""
        self._ports += 1
        if_g, if_ns = f"{self.tag}p{self._ports}", ns + "v"
        _ip("link", "add", if_g, "type", "veth", "peer", "name", if_ns)
        _ip("link", "set", if_g, "netns", self.g)
        _ip("link", "set", if_ns, "netns", ns)
        _ip("-n", self.g, "link", "set", if_g, "master", self.BRIDGE)
        _ip("-n", self.g, "link", "set", if_g, "up")
        _ip("-n", ns, "addr", "add", addr, "dev", if_ns)
        _ip("-n", ns, "link", "set", if_ns, "up")
        return if_ns

    def add_client(self, role: str, addr: str) -> str:
        """A client namespace directly on the gateway's segment; ``addr`` in CIDR form."""
        ns = self.add_ns(role)
        self._bridge_port(ns, addr)
        return ns

    def add_natted_client(
        self,
        role: str,
        public_addr: str,
        private_addr: str = "192.168.1.10/24",
        router_private: str = "192.168.1.1",
    ) -> tuple[str, str]:
        """A client namespace ``role`` in a private network behind router namespace ``r<role>``
        that masquerades it to ``public_addr`` (CIDR, on the gateway's segment). Returns
        ``(client_ns, router_ns)``. Needs ``nft`` (nftables)."""
        if shutil.which("nft") is None:
            raise RuntimeError("nft (nftables) is needed for a NAT router namespace")
        router = self.add_ns("r" + role)
        client = self.add_ns(role)
        public_if = self._bridge_port(router, public_addr)
        prefix = ipaddress.ip_interface(private_addr).network.prefixlen
        self.link(
            router, f"{router_private}/{prefix}", client, private_addr, names=(router + "i", client + "v")
        )
        run_in(client, ["ip", "route", "add", "default", "via", router_private])
        run_in(router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        # One rule per command: a nested here-document inside `ip netns exec` fails (README, NAT).
        run_in(router, ["nft", "add", "table", "ip", "nat"])
        run_in(
            router,
            ["nft", "add", "chain", "ip", "nat", "post", "{ type nat hook postrouting priority 100 ; }"],
        )
        run_in(router, ["nft", "add", "rule", "ip", "nat", "post", "oifname", public_if, "masquerade"])
        return client, router
