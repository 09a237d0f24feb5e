"""The I/O shell around the sans-I/O cores: sockets, clocks, signals (asyncio)."""
