# my_otp/plugin.py  -- a password from the users file, then a code
import hmac

from tunvpn.plugins import CredentialRequest, GatewayContext, SettingError, Verdict, hookimpl


@hookimpl
def tunvpn_check_settings(settings: dict, side: str) -> None:
    # [plugin.my-otp] codes = {carol = "314159"}: checked when the gateway starts or reloads
    if side != "gateway":
        return
    codes = settings.get("codes", {})
    if not isinstance(codes, dict):
        raise SettingError("codes", 'expected a table of user = "digits"')
    for user, code in codes.items():
        if not (isinstance(code, str) and code.isdigit()):  # a secret: not shown in the message
            raise SettingError(f"codes.{user}", "expected a string of digits")


@hookimpl
def tunvpn_declare_groups() -> list[str]:
    return ["eng"]  # the group accepted users get: a [[policy]] may name it


@hookimpl
def tunvpn_verify_credentials(request: CredentialRequest, context: GatewayContext) -> Verdict | None:
    codes = context.settings("my-otp").get("codes", {})
    if request.user not in codes:
        return None  # not ours: the next plugin decides
    if request.round == 1:
        if context.users is None or not context.users.check(request.user, request.password):
            return Verdict.reject("wrong password")
        request.state["password ok"] = True
        return Verdict.challenge("Enter the code shown on your token", fields=("answer",))
    if request.state.get("password ok") and hmac.compare_digest(request.answer or "", codes[request.user]):
        return Verdict.accept(groups=["eng"])
    return Verdict.reject("wrong code")
