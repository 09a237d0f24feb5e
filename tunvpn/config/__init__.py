"""What tunvpn reads from files: :mod:`.gateway` (``gateway.toml``), :mod:`.profile` (a client
profile), :mod:`.credentials` (PSK and users files), :mod:`.secretfile` (the one opener of
private files), :mod:`.passwords` (scrypt hashes), :mod:`.pskcheck` (the weak-PSK warning)."""
