"""swanctl.conf texts for the interop set-ups (one setting per line: pitfall 4)."""

from __future__ import annotations

S2S_PSK = "tv-s2s-psk-not-secret-0123"
VPNC_GROUP = "tvgroup"
VPNC_GROUP_PSK = "tv-group-psk"
VPNC_USER = "tvuser"
VPNC_PASSWORD = "tv-user-pass"
VPNC_POOL = "10.79.0.10-10.79.0.20"


def s2s_main_mode_psk(
    *,
    local: str,
    remote: str,
    local_ts: str,
    remote_ts: str,
    name: str = "s2s",
    proposals: str = "aes128-sha256-modp2048",
    esp_proposals: str = "aes128gcm16",
    encap: bool = True,
    psk: str = S2S_PSK,
) -> str:
    """IKEv1 Main Mode with a PSK between two fixed addresses; IDs are the addresses.

    ``encap = yes`` fakes NAT-D so both ends float to UDP/4500 and ESP goes in UDP.
    """
    return f"""\
connections {{
  {name} {{
    version = 1
    local_addrs = {local}
    remote_addrs = {remote}
    encap = {"yes" if encap else "no"}
    proposals = {proposals}
    local {{
      auth = psk
      id = {local}
    }}
    remote {{
      auth = psk
      id = {remote}
    }}
    children {{
      {name} {{
        mode = tunnel
        local_ts = {local_ts}
        remote_ts = {remote_ts}
        esp_proposals = {esp_proposals}
      }}
    }}
  }}
}}
secrets {{
  ike-{name} {{
    id-1 = {local}
    id-2 = {remote}
    secret = "{psk}"
  }}
}}
"""


def vpnc_gateway(
    *,
    local: str,
    pool: str = VPNC_POOL,
    local_ts: str = "0.0.0.0/0",
    name: str = "vpnc",
    group: str = VPNC_GROUP,
    group_psk: str = VPNC_GROUP_PSK,
    user: str = VPNC_USER,
    password: str = VPNC_PASSWORD,
) -> str:
    """A Cisco-style IKEv1 gateway for vpnc: Aggressive Mode group PSK (ID_KEY_ID), then XAUTH
    (xauth-generic) and Mode Config from a pool; needs charon's aggressive-PSK switch.

    vpnc offers only MODP1024 with AES/3DES + SHA1/MD5 (pitfall 9), so those are listed.
    """
    return f"""\
connections {{
  {name} {{
    version = 1
    aggressive = yes
    local_addrs = {local}
    pools = {name}pool
    encap = yes
    proposals = aes256-sha1-modp1024, aes128-sha1-modp1024, 3des-sha1-modp1024
    local {{
      auth = psk
      id = {local}
    }}
    remote {{
      auth = psk
      id = keyid:{group}
    }}
    remote-xauth {{
      auth = xauth-generic
    }}
    children {{
      {name} {{
        mode = tunnel
        local_ts = {local_ts}
        esp_proposals = aes256-sha1, aes128-sha1, 3des-sha1
      }}
    }}
  }}
}}
pools {{
  {name}pool {{
    addrs = {pool}
  }}
}}
secrets {{
  ike-{name} {{
    id = keyid:{group}
    secret = "{group_psk}"
  }}
  xauth-{user} {{
    id = {user}
    secret = "{password}"
  }}
}}
"""


# Our client against charon in Main Mode (test_client_vs_strongswan.py, test_esp_vs_strongswan.py).
UNDERLAY_A = "10.77.0.1/24"
UNDERLAY_B = "10.77.0.2/24"
POOL_FIRST = "10.79.0.10"
SPLIT = "10.78.0.0/24"
INNER_A = "10.78.0.1/32"
IKE_PSK = "tv-main-mode-psk-0123"


def main_mode_gateway(local: str, remote: str) -> str:
    return f"""\
connections {{
  mm {{
    version = 1
    local_addrs = {local}
    remote_addrs = {remote}
    pools = mmpool
    proposals = aes256-sha256-modp2048
    local {{
      auth = psk
      id = {local}
    }}
    remote {{
      auth = psk
      id = {remote}
    }}
    children {{
      mm {{
        mode = tunnel
        local_ts = {SPLIT}
        esp_proposals = aes256gcm16-ecp256
      }}
    }}
  }}
}}
pools {{
  mmpool {{
    addrs = {VPNC_POOL}
  }}
}}
secrets {{
  ike-mm {{
    id-1 = {local}
    id-2 = {remote}
    secret = "{IKE_PSK}"
  }}
}}
"""
