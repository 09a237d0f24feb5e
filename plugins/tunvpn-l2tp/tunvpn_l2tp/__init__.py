"""L2TP (RFC 2661) with userspace PPP for tunvpn.

Sans-I/O cores: :mod:`.message` (L2TP codec), :mod:`.control` (one control connection),
:mod:`.dispatch` (the gateway's many tunnels), :mod:`.pppframe` (PPP codec), :mod:`.ppp` (the
PPP link). asyncio shells: :mod:`.lns` (gateway), :mod:`.lac` (client). Hooks: :mod:`.plugin`.
"""
