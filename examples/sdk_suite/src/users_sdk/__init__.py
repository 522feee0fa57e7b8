"""users_sdk: a tiny SDK over le_transport, to show another package testing itself with the
le_transport pytest plugin (see ``tests/``)."""

from __future__ import annotations

from le_transport import Engine

__all__ = ["UsersSdk"]


class UsersSdk:
    """Lists an account's agents' login names through the Users API."""

    def __init__(self, engine: Engine, account: str) -> None:
        self._engine = engine
        self._path = f"/api/account/{account}/configuration/le-users/users"

    async def login_names(self) -> list[str]:
        """Every user's login name."""
        users = await self._engine.request_json(
            "GET", "accountConfigReadOnly", self._path, params={"v": "4.0"}, expect=list
        )
        return sorted(str(u.get("loginName")) for u in users)
