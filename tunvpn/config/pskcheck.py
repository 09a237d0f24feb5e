"""A warning for weak pre-shared keys.

With a PSK, Main Mode lets an active attacker who plays the responder (or a group member who
poses as the gateway) test guesses offline against one captured exchange; Aggressive Mode
lets anyone who names the group do it (Felsch et al., "The Dangers of Key Reuse", USENIX
Security 2018). Only long random secrets hold: the gateway and the client warn at start for a
secret of fewer than :data:`MIN_LENGTH` characters or an estimated strength under
:data:`MIN_BITS` bits. The warning names the entry (its identity), never the secret.
"""

from __future__ import annotations

import logging
import math
import string

from tunvpn.ike.config import PskTable

log = logging.getLogger(__name__)

MIN_LENGTH = 20
MIN_BITS = 80
ADVICE = "use a random secret of 20 characters or more, e.g. `openssl rand -base64 32`"


def estimated_bits(secret: bytes) -> float:
    """A generous upper estimate of a secret's strength: its length (counting a character at
    most twice, so repeats add little) times log2 of the alphabet its character classes span.
    Text other than printable ASCII (e.g. ``0x`` hex secrets decoded to raw octets) counts
    8 bits per distinct octet."""
    if not secret:
        return 0.0
    counted = min(len(secret), 2 * len(set(secret)))
    try:
        text = secret.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if not text or not text.isprintable():
        return 8.0 * counted
    classes = (string.ascii_lowercase, string.ascii_uppercase, string.digits)
    pool = sum(len(c) for c in classes if any(ch in c for ch in text))
    if any(not ch.isalnum() for ch in text):
        pool += 33  # printable ASCII punctuation and space
    return counted * math.log2(pool)


def weakness(secret: bytes) -> str | None:
    """Why ``secret`` is weak ("12 characters, about 56 bits"), or None."""
    bits = estimated_bits(secret)
    if len(secret) >= MIN_LENGTH and bits >= MIN_BITS:
        return None
    return f"{len(secret)} characters, about {bits:.0f} bits"


def warn_weak_psks(psks: PskTable, role: str) -> list[str]:
    """Log one warning per weak entry of ``psks`` (``role``: "gateway" or "client"); returns
    the identities warned about."""
    weak = []
    for identity, secret in psks.entries():
        why = weakness(secret)
        if why is None:
            continue
        name = "the pre-shared key" if identity == "*" else f"the pre-shared key for {identity}"
        log.warning(
            "%s: %s is weak (%s): an active attacker can test guesses offline against a Main Mode "
            "exchange (anyone who names the group, against Aggressive Mode); %s",
            role,
            name,
            why,
            ADVICE,
        )
        weak.append(identity)
    return weak


__all__ = ["MIN_BITS", "MIN_LENGTH", "estimated_bits", "warn_weak_psks", "weakness"]
