"""Built-in plugin ``users-file``: XAUTH user names and passwords from the gateway's
``users_file`` (mode 600): ``user:password`` lines, or ``user:$scrypt$...`` hashes printed by
``tunvpn passwd`` (docs/configuration.md). Registered through the ``tunvpn`` entry point group
like any external plugin; the gateway enables it when ``users_file`` is set.

It answers only for users the file knows and returns ``None`` for others, so a plugin after
it (RADIUS, say) can decide on them; a wrong password for a known user is a rejection.
"""

from __future__ import annotations

import logging

from tunvpn.plugins import CredentialRequest, GatewayContext, Verdict, hookimpl

log = logging.getLogger(__name__)


@hookimpl
def tunvpn_verify_credentials(request: CredentialRequest, context: GatewayContext) -> Verdict | None:
    users = context.users
    if users is None or request.user not in users:
        return None
    if request.chap is not None:  # e.g. PPP CHAP inside L2TP: the file holds the cleartext secret
        if request.user in users.hashed_users():
            log.warning("user %r: a CHAP login, but the users file holds only a hash (use PAP)", request.user)
            return Verdict.reject("this gateway cannot check a CHAP answer for this user")
        identifier, challenge, response = request.chap
        if users.check_chap(request.user, identifier, challenge, response):
            return Verdict.accept()
        return Verdict.reject()
    if request.password is None:
        return Verdict.reject("this gateway expects a password")
    if users.check(request.user, request.password):  # scrypt for hashes; hmac.compare_digest
        return Verdict.accept()
    return Verdict.reject()
