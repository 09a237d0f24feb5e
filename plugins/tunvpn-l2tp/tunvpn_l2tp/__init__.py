"""L2TP (RFC 2661) for tunvpn: so far the sans-I/O control-connection core (tunvpn_l2tp.control)."""
