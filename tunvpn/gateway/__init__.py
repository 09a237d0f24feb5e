"""The gateway daemon: :mod:`.daemon` (``tunvpn gateway``), :mod:`.logins` (login throttle and
the login rules), :mod:`.audit` (the audit log)."""
