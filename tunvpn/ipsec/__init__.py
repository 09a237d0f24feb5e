"""What the IKE core and the ESP core share (sans-I/O, imports nothing of tunvpn).

* :mod:`~tunvpn.ipsec.algorithms`: the IPsec DOI's numbers for ESP (transforms, integrity
  algorithms, encapsulation modes) that Quick Mode negotiates and ESP implements;
* :mod:`~tunvpn.ipsec.selectors`: traffic selectors, the addresses, protocol and port an SA
  carries;
* :mod:`~tunvpn.ipsec.udpencap`: the one classifier of what arrives on UDP port 4500
  (RFC 3948);
* :mod:`~tunvpn.ipsec.errors`: ``LocalProtocolError``, raised by both for our own side's
  mistakes (``tunvpn.ike.errors`` adds the peer's).

Both cores import this package; it imports neither of them, so ``tunvpn.esp`` does not
depend on ``tunvpn.ike``.
"""
