"""Example for ``tunvpn_check_settings``, ``tunvpn_declare_groups`` and ``tunvpn_authorize``:
the users listed may log in only during office hours, and get the group ``daytime``::

    [plugin.office-hours]
    users = ["alice", "bob"]
    hours = "08-18"          # local time, whole hours
"""

from __future__ import annotations

from typing import Any

from tunvpn.plugins import Authorization, GatewayContext, SettingError, hookimpl

NAME = "office-hours"


def parse_hours(text: object) -> tuple[int, int]:
    """``"08-18"`` -> (8, 18); ValueError otherwise."""
    start, sep, end = str(text).partition("-")
    if not (sep and start.isdigit() and end.isdigit() and 0 <= int(start) < int(end) <= 24):
        raise ValueError(text)
    return int(start), int(end)


@hookimpl
def tunvpn_check_settings(settings: dict[str, Any], side: str) -> None:
    if side != "gateway":
        return  # no client settings
    try:
        parse_hours(settings.get("hours", "08-18"))
    except ValueError:
        raise SettingError(
            "hours", "expected START-END in whole hours, e.g. 08-18", value=settings["hours"]
        ) from None
    users = settings.get("users", [])
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise SettingError("users", "expected a list of user names")


@hookimpl
def tunvpn_declare_groups() -> list[str]:
    return ["daytime"]  # so a [[policy]] may say groups = ["daytime"]


@hookimpl
def tunvpn_authorize(user: str, context: GatewayContext) -> Authorization | None:
    settings = context.settings(NAME)
    if user not in settings.get("users", []):
        return None  # nothing to add, nothing to refuse
    start, end = parse_hours(settings.get("hours", "08-18"))
    if not start <= context.now().hour < end:
        return Authorization(deny=f"logins only between {start:02d}:00 and {end:02d}:00")
    return Authorization(groups=("daytime",))
