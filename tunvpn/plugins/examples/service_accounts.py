"""Example for ``tunvpn_verify_credentials``: service accounts whose password hashes are in the
plugin's settings; every other user is left to the next login plugin (the users file)::

    [plugin.service-accounts]
    accounts = {backup = "<sha256 hex of the password>"}
    group = "machines"
"""

from __future__ import annotations

import hashlib
import hmac

from tunvpn.plugins import CredentialRequest, GatewayContext, Verdict, hookimpl

NAME = "service-accounts"


@hookimpl
def tunvpn_verify_credentials(request: CredentialRequest, context: GatewayContext) -> Verdict | None:
    settings = context.settings(NAME)
    expected = settings.get("accounts", {}).get(request.user)
    if expected is None:
        return None  # not one of ours: the next plugin decides
    if request.password is None:  # a CHAP answer: this plugin keeps no clear password
        return None
    digest = hashlib.sha256(request.password.encode()).hexdigest()
    if not hmac.compare_digest(digest, expected):
        return Verdict.reject("wrong password for this service account")
    return Verdict.accept(groups=[settings.get("group", "machines")])
