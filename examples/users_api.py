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

import attrs

from le_transport import Clock, Engine, RealClock, Response, RetryPolicy
from le_transport.chaos import FaultRule, Match, Schedule, Status
from le_transport.errors import ResponseDecodeError
from le_transport.providers import CsdsDomains, UserLogin
from le_transport.testing.simulator import DEFAULT_PASSWORD, DEFAULT_USER, Simulator

#: The Users API's version this client speaks.
USERS_API_VERSION = "4.0"


def _json_kind(value: object) -> str:
    """What a JSON value is, by the name JSON gives it (never the value: it may be personal)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


@attrs.frozen
class User:
    """One LiveEngage user, as much of it as this client needs."""

    id: str
    login_name: str
    nickname: str
    enabled: bool

    @classmethod
    def from_json(cls, data: object) -> User:
        """From the Users API's JSON (unknown fields are ignored, as LiveEngage asks).

        :class:`ValueError` if ``data`` is not a user: not a JSON object, no ``id`` (a string
        or an integer), or a known field of the wrong type (``loginName``, ``nickname``: a
        string or null; ``isEnabled``: a boolean). The message names the field and the JSON
        type found, never a value. :class:`UsersClient` raises it as the library's
        :class:`~le_transport.errors.ResponseDecodeError`."""
        if not isinstance(data, dict):
            raise ValueError(f"a user is a JSON object, got a JSON {_json_kind(data)}")
        if "id" not in data:
            raise ValueError('a user has an "id", and this one has none')
        user_id = data["id"]
        if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
            raise ValueError(f'"id" is a string or an integer, got a JSON {_json_kind(user_id)}')
        texts: dict[str, str] = {}
        for field in ("loginName", "nickname"):
            value = data.get(field)
            if value is not None and not isinstance(value, str):
                raise ValueError(f'"{field}" is a string, got a JSON {_json_kind(value)}')
            texts[field] = value or ""
        enabled = data.get("isEnabled", True)
        if not isinstance(enabled, bool):
            # bool("false") is True: a string here is a malformed answer, not a yes.
            raise ValueError(f'"isEnabled" is a boolean, got a JSON {_json_kind(enabled)}')
        return cls(
            id=str(user_id),
            login_name=texts["loginName"],
            nickname=texts["nickname"],
            enabled=enabled,
        )


def _malformed(resp: Response, what: str) -> ResponseDecodeError:
    """The library's error for an answer that is not what the endpoint promises, with the
    call's facts (service, method, redacted URL, attempts), as the engine's own
    ``Response.json`` raises it for a body of the wrong type."""
    return ResponseDecodeError(
        f"the Users API's answer is malformed: {what}; status {resp.status}",
        service=resp.service,
        method=resp.method,
        url=resp.url,
        attempts=resp.attempts,
    )


def users_from(resp: Response, data: object) -> list[User]:
    """Every user of a list answer (``data``: its JSON, read from ``resp``);
    :class:`ResponseDecodeError` naming the first item that is not a user."""
    if not isinstance(data, list):
        raise _malformed(resp, f"expected a JSON array, got a JSON {_json_kind(data)}")
    users = []
    for index, item in enumerate(data):
        try:
            users.append(User.from_json(item))
        except ValueError as exc:
            raise _malformed(resp, f"item {index}: {exc}") from None
    return users


def user_from(resp: Response, data: object) -> User:
    """The user of a one-user answer; :class:`ResponseDecodeError` if it is not one."""
    try:
        return User.from_json(data)
    except ValueError as exc:
        raise _malformed(resp, str(exc)) from None


def _is_user_id(value: object) -> bool:
    """ASCII digits only (``str.isdigit`` alone takes ``"²"`` and other Unicode digits)."""
    return isinstance(value, str) and value.isascii() and value.isdigit()


class UsersClient:
    """The Users API (service ``accountConfigReadOnly``) on an :class:`Engine`."""

    def __init__(self, engine: Engine, account: str) -> None:
        self._engine = engine
        self._base = f"/api/account/{account}/configuration/le-users/users"

    async def list(self) -> Sequence[User]:
        """Every user of the account (retried on 5xx on the guide's schedule).

        An answer that is not a list of users (an item that is no object, a user without an
        ``id``) is the library's :class:`~le_transport.errors.ResponseDecodeError`, as a body
        that is not JSON is: a caller catches one error type for "the answer was unreadable"."""
        resp = await self._engine.request(
            "GET",
            "accountConfigReadOnly",
            self._base,
            params={"v": USERS_API_VERSION},
        )
        return users_from(resp, resp.json(list))

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
        return user_from(resp, resp.json(dict))


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
