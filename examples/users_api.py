"""A custom LiveEngage REST endpoint wrapped in a small typed client: the Users API.

Your SDK owns the endpoint's shape (paths, versions, what the JSON means); le_transport owns the
rest: the host from the Domain API, the login and its bearer, the guide's retry schedule, typed
errors. Run it: ``python -m examples.users_api`` (against the built-in simulator, which fails
the first two requests with 503 to show the retries).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import attrs

from le_transport import Clock, Engine, RealClock, RetryPolicy
from le_transport.chaos import FaultRule, Match, Schedule, Status
from le_transport.providers import CsdsDomains, UserLogin
from le_transport.testing.simulator import DEFAULT_PASSWORD, DEFAULT_USER, Simulator

#: The Users API's version this client speaks.
USERS_API_VERSION = "4.0"


@attrs.frozen
class User:
    """One LiveEngage user, as much of it as this client needs."""

    id: str
    login_name: str
    nickname: str
    enabled: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> User:
        """From the Users API's JSON (unknown fields are ignored, as LiveEngage asks)."""
        return cls(
            id=str(data["id"]),
            login_name=str(data.get("loginName", "")),
            nickname=str(data.get("nickname", "")),
            enabled=bool(data.get("isEnabled", True)),
        )


def _is_user_id(value: object) -> bool:
    """ASCII digits only (``str.isdigit`` alone takes ``"²"`` and other Unicode digits)."""
    return isinstance(value, str) and value.isascii() and value.isdigit()


class UsersClient:
    """The Users API (service ``accountConfigReadOnly``) on an :class:`Engine`."""

    def __init__(self, engine: Engine, account: str) -> None:
        self._engine = engine
        self._base = f"/api/account/{account}/configuration/le-users/users"

    async def list(self) -> Sequence[User]:
        """Every user of the account (retried on 5xx on the guide's schedule)."""
        data = await self._engine.request_json(
            "GET",
            "accountConfigReadOnly",
            self._base,
            params={"v": USERS_API_VERSION},
            expect=list,
        )
        return [User.from_json(item) for item in data]

    async def get(self, user_id: str) -> User | None:
        """One user, or None if there is no such user (a 404 is an answer, not a fault: the
        call accepts it, so it is neither raised nor logged as a failure).

        ``user_id`` goes into the request's path, so it must be what LiveEngage's user ids
        are: decimal digits. Anything else is a :class:`ValueError` before anything is sent:
        ``"../../x"`` would otherwise reach another endpoint of the account, with the bearer.
        """
        if not _is_user_id(user_id):
            # A str is shown (cut short); anything else by its type only (an int id sliced
            # here raised a TypeError instead of this ValueError).
            got = repr(user_id[:40]) if isinstance(user_id, str) else type(user_id).__name__
            raise ValueError(f"a user id is decimal digits (a str), got {got}")
        resp = await self._engine.request(
            "GET",
            "accountConfigReadOnly",
            f"{self._base}/{user_id}",
            params={"v": USERS_API_VERSION},
            accept={404},
        )
        if resp.status == 404:
            return None
        return User.from_json(resp.json(dict))


async def main(clock: Clock | None = None, time_scale: float = 0.01) -> list[User]:
    """List the simulator's users through two injected 503s; look up a missing one."""
    clock = clock or RealClock()
    async with Simulator(clock=clock) as sim:
        sim.faults.add(
            FaultRule(
                "two-503s",
                Status(503),
                match=Match("GET", "*/le-users/users"),
                schedule=Schedule(fail_next=2),
            )
        )
        domains = CsdsDomains(sim.account.id, csds_host=sim.host, scheme="http")
        auth = UserLogin(sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains)
        retry = RetryPolicy().scaled(time_scale)
        async with Engine(domains, scheme="http", clock=clock, auth=auth, retry=retry) as engine:
            users = UsersClient(engine, sim.account.id)
            found = list(await users.list())
            print(f"{len(found)} user(s): {[u.login_name for u in found]}")
            print(f"user 999: {await users.get('999')}")
        listed = sim.count("GET", "*/le-users/users")
        print(f"the simulator answered {listed} list requests for the one call")
    return found


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="  %(name)s: %(message)s")
    asyncio.run(main())
