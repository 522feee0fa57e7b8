"""users_sdk: a tiny SDK over le_transport, to show another package testing itself with the
le_transport pytest plugin (see ``tests/``)."""

from __future__ import annotations

from le_transport import Engine
from le_transport.errors import ResponseDecodeError

__all__ = ["UsersSdk"]


def _json_kind(value: object) -> str:
    """What a JSON value is, by JSON's name for it (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else "array"


class UsersSdk:
    """Lists an account's agents' login names through the Users API."""

    def __init__(self, engine: Engine, account: str) -> None:
        self._engine = engine
        self._path = f"/api/account/{account}/configuration/le-users/users"

    async def login_names(self) -> list[str]:
        """Every user's login name.

        An answer that is not a list of users, each an object with a string ``loginName``,
        is the library's :class:`~le_transport.errors.ResponseDecodeError` (with the call's
        service, method, redacted URL and attempts), as a body that is not JSON is; the
        message names the item and what it was, never a value."""
        resp = await self._engine.request(
            "GET", "accountConfigReadOnly", self._path, params={"v": "4.0"}
        )
        names: list[str] = []
        for index, user in enumerate(resp.json(list)):
            name = user.get("loginName") if isinstance(user, dict) else None
            if not isinstance(name, str):
                what = (
                    "a user with no string loginName"
                    if isinstance(user, dict)
                    else f"a JSON {_json_kind(user)}, not a user object"
                )
                raise ResponseDecodeError(
                    f"the Users API's answer is malformed: item {index} is {what}; "
                    f"status {resp.status}",
                    service=resp.service,
                    method=resp.method,
                    url=resp.url,
                    attempts=resp.attempts,
                )
            names.append(name)
        return sorted(names)
