"""Example for ``tunvpn_client_answer`` (client side): answer the gateway's passcode question
from a private file, e.g. written by a hardware token's tool; the profile says::

    plugins = ["passcode-file"]
    [plugin.passcode-file]
    passcode_file = "~/.config/tunvpn/passcode"
"""

from __future__ import annotations

from tunvpn.plugins import ClientQuestion, SecretFileError, hookimpl, read_private_file

NAME = "passcode-file"


@hookimpl
def tunvpn_client_answer(question: ClientQuestion) -> str | None:
    if question.field != "passcode":
        return None  # the user (or another plugin) answers the rest
    path = question.settings(NAME).get("passcode_file")
    if path is None:
        return None
    try:
        return read_private_file(path, "passcode file").strip()
    except SecretFileError:
        return None  # not readable or not private: ask the user instead
