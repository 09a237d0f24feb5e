"""The error of options that do not make sense, from a file or from the command line."""

from __future__ import annotations


class ConfigError(ValueError):
    """The gateway or client options do not make sense (the message says what to change)."""
