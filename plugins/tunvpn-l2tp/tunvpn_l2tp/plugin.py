"""The tunvpn ``l2tp`` plugin: not wired in yet.

What is coming here: hooks that announce L2TP/IPsec in phase 1a, negotiate the transport SA
for UDP 1701, and run tunvpn_l2tp.control plus a userspace PPP (LCP, PAP/CHAP, IPCP) to carry
IP between the TUN device and the L2TP session. There are deliberately no hook functions yet,
and no entry point in pyproject.toml.
"""
