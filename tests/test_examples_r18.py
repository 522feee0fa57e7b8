"""The examples' clients read a malformed answer as the library's ResponseDecodeError.

A Users API answer whose items are not users (an object without ``"id"``, a string, a null,
a field of the wrong type) escaped ``examples/users_api.py`` and the sdk_suite's ``users_sdk``
as a bare KeyError, TypeError or AttributeError (or, for ``"isEnabled": "false"``, as an
enabled user): a caller catching the library's errors for "the answer was unreadable" never
saw them. Now each is a :class:`ResponseDecodeError` carrying the call's facts, as the
engine's own ``Response.json`` raises it for a body of the wrong type.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from examples.users_api import User, UsersClient
from le_transport import Engine
from le_transport.chaos import FaultRule, Match, Status
from le_transport.errors import ResponseDecodeError
from le_transport.providers import CsdsDomains, UserLogin
from le_transport.testing.simulator import DEFAULT_PASSWORD, DEFAULT_USER, Simulator

USERS = "*/le-users/users"
ONE_USER = "*/le-users/users/7"
SDK = Path(__file__).resolve().parent.parent / "examples" / "sdk_suite" / "src" / "users_sdk"


@contextlib.asynccontextmanager
async def _answering(path: str, body: str) -> AsyncIterator[tuple[Engine, str]]:
    """An engine logged in to a simulator that answers GET ``path`` with ``body`` (200, JSON);
    yields the engine and the account."""
    async with Simulator() as sim:
        sim.faults.add(
            FaultRule(
                "answer",
                Status(200, body=body, headers={"Content-Type": "application/json"}),
                match=Match("GET", path),
            )
        )
        domains = CsdsDomains(sim.account.id, csds_host=sim.host, scheme="http")
        auth = UserLogin(sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains)
        async with Engine(domains, scheme="http", auth=auth) as engine:
            yield engine, sim.account.id


def _users_sdk() -> Any:
    """The sdk_suite's package, loaded from its src/ (it is not installed here)."""
    spec = importlib.util.spec_from_file_location("users_sdk_r18", SDK / "__init__.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _says_the_call(exc: ResponseDecodeError, path_end: str) -> None:
    assert exc.service == "accountConfigReadOnly"
    assert exc.method == "GET"
    assert exc.url is not None
    assert path_end in exc.url
    assert len(exc.attempts) == 1


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('[{"loginName": "a"}]', 'item 0: a user has an "id"'),
        ('["7"]', "item 0: a user is a JSON object, got a JSON string"),
        ("[null]", "item 0: a user is a JSON object, got a JSON null"),
        ('[{"id": 1}, [1]]', "item 1: a user is a JSON object, got a JSON array"),
        ('[{"id": true}]', '"id" is a string or an integer, got a JSON boolean'),
        ('[{"id": {"n": 1}}]', '"id" is a string or an integer, got a JSON object'),
        ('[{"id": 1, "loginName": 5}]', '"loginName" is a string, got a JSON number'),
        # bool("false") is True: this read as an enabled user.
        ('[{"id": 1, "isEnabled": "false"}]', '"isEnabled" is a boolean, got a JSON string'),
    ],
)
async def test_users_api_list_reads_a_malformed_item_as_a_decode_error(
    body: str, says: str
) -> None:
    async with _answering(USERS, body) as (engine, account):
        with pytest.raises(ResponseDecodeError) as raised:
            await UsersClient(engine, account).list()
    assert says in str(raised.value)
    _says_the_call(raised.value, "/le-users/users")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{"loginName": "a"}', 'a user has an "id"'),
        ('{"id": null}', '"id" is a string or an integer, got a JSON null'),
        ('{"id": 7, "nickname": ["x"]}', '"nickname" is a string, got a JSON array'),
    ],
)
async def test_users_api_get_reads_a_malformed_user_as_a_decode_error(body: str, says: str) -> None:
    async with _answering(ONE_USER, body) as (engine, account):
        with pytest.raises(ResponseDecodeError) as raised:
            await UsersClient(engine, account).get("7")
    assert says in str(raised.value)
    _says_the_call(raised.value, "/le-users/users/7")


async def test_a_malformed_answer_is_named_by_its_shape_never_by_its_values() -> None:
    # Users are personal data: the message says what the item is, not what it holds.
    body = '[{"loginName": "jane.doe@example.com"}, "s3cr3t-token"]'
    async with _answering(USERS, body) as (engine, account):
        with pytest.raises(ResponseDecodeError) as raised:
            await UsersClient(engine, account).list()
    assert "jane.doe" not in str(raised.value)
    assert "s3cr3t" not in str(raised.value)


async def test_well_formed_users_still_read_with_their_defaults() -> None:
    body = '[{"id": 7, "loginName": "a", "extra": [1]}, {"id": "8", "nickname": null}]'
    async with _answering(USERS, body) as (engine, account):
        users = await UsersClient(engine, account).list()
    assert list(users) == [
        User(id="7", login_name="a", nickname="", enabled=True),
        User(id="8", login_name="", nickname="", enabled=True),
    ]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('["7"]', "item 0 is a JSON string, not a user object"),
        ("[null]", "item 0 is a JSON null, not a user object"),
        ('[{"loginName": "a"}, {"id": 2}]', "item 1 is a user with no string loginName"),
        ('[{"loginName": null}]', "item 0 is a user with no string loginName"),
    ],
)
async def test_users_sdk_reads_a_malformed_item_as_a_decode_error(body: str, says: str) -> None:
    # Before: AttributeError ('str' object has no attribute 'get'), or "None" as a login name.
    async with _answering(USERS, body) as (engine, account):
        with pytest.raises(ResponseDecodeError) as raised:
            await _users_sdk().UsersSdk(engine, account).login_names()
    assert says in str(raised.value)
    _says_the_call(raised.value, "/le-users/users")


async def test_users_sdk_still_lists_well_formed_login_names() -> None:
    async with _answering(USERS, '[{"loginName": "b"}, {"loginName": "a", "id": 1}]') as (
        engine,
        account,
    ):
        assert await _users_sdk().UsersSdk(engine, account).login_names() == ["a", "b"]
