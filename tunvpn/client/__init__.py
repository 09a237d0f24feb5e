"""The client daemon: :mod:`.daemon` (``tunvpn connect``) and :mod:`.hostconfig` (the routes
and DNS settings it changes on the host, undone on exit and after a crash)."""
