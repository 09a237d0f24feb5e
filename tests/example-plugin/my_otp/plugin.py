# my_otp/plugin.py  -- a password from the users file, then a code
import hmac

from tunvpn.plugins import CredentialRequest, GatewayContext, Verdict, hookimpl


@hookimpl
def tunvpn_verify_credentials(request: CredentialRequest, context: GatewayContext) -> Verdict | None:
    codes = context.settings("my-otp").get("codes", {})  # [plugin.my-otp] codes = {carol = "314159"}
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
