"""The local control socket of a running gateway or client: :mod:`.server` (the socket, its
requests, ``tunvpn status`` and ``tunvpn reload``)."""
