"""Plugins of an extra protocol "code" for tests: the gateway's (accepts 314159 and puts the
user in group eng) and a client's soft token that answers it from its settings."""

from __future__ import annotations

from tunvpn.plugins import CredentialRequest, Verdict, hookimpl


class CodeProtocol:
    """An extra protocol "code" (announced in phase 1a, run after Mode Config)."""

    __name__ = "code"

    def __init__(self) -> None:
        self.requests: list[CredentialRequest] = []

    @hookimpl
    def tunvpn_verify_credentials(self, request: CredentialRequest) -> Verdict | None:
        self.requests.append(request)
        if request.protocol != "code":
            return None  # the login is the users file's
        return (
            Verdict.accept(groups=["eng"]) if request.passcode == "314159" else Verdict.reject("wrong code")
        )


class SoftToken:
    """A client plugin: answers the "code" protocol from its settings, as a soft token would."""

    __name__ = "soft-token"

    def __init__(self) -> None:
        self.questions: list = []

    @hookimpl
    def tunvpn_client_answer(self, question: object) -> str | None:
        self.questions.append(question)
        if question.protocol == "code" and question.field == "passcode":  # type: ignore[attr-defined]
            return str(question.settings("soft-token")["code"])  # type: ignore[attr-defined]
        return None
