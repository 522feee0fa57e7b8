"""Settings that were taken and could only misbehave, now refused (or bounded) where they are given.

- ``SimFaults.script(..., [])``: a rule that never answered anything.
- ``VirtualClock(start=...)``: a bool, a str, None, NaN, inf or an int past float's range.
- ``SharedSession``: a ``safety_margin`` longer than ``unknown_life``.
- ``ClosePolicy``: 1000 in ``fail_codes``; a status that is no client error in
  ``reauth_statuses``.
- ``FleetPacer``: an absurd wait read from the fleet's store is cut to ``MAX_SHARED_WAIT``.
- ``RedisStore``: a short password blanked every match of it in an error's text; a value a
  connection refuses (not a TypeError) escaped its constructor raw, quoting the value.
"""

from __future__ import annotations

import logging
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from le_transport.errors import ConfigurationError, StateStoreError
from le_transport.policies import ClosePolicy, TokenBucket
from le_transport.policies.close_codes import CloseAction, Disconnect
from le_transport.state import FleetPacer, MemoryStore, RedisStore, SharedSession
from le_transport.testing.clock import VirtualClock
from le_transport.testing.simulator.server import SimFaults

from .known_secrets import PASSWORD
from .redis_server import RedisServer, require_redis_server
from .test_state_store import _OddPaceStore

# -- SimFaults.script ---------------------------------------------------------------------------


@pytest.mark.parametrize("outcomes", [[], (), iter([])], ids=["list", "tuple", "iterator"])
def test_an_empty_script_is_refused_and_adds_no_rule(outcomes: Any) -> None:
    """An empty script added a rule that matched every request and passed it: a test that
    built its failures from an empty list saw none, silently."""
    faults = SimFaults()
    with pytest.raises(ConfigurationError, match=r"SimFaults\.script outcomes .* empty"):
        faults.script("GET", "/api/*/users", outcomes)
    assert faults.plan.rules == ()
    # A script with outcomes is still taken, and numbered from 1.
    assert faults.script("GET", "/api/*/users", [503]).id == "script-1"


# -- VirtualClock(start=...) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "start",
    [True, False, "5", None, float("nan"), float("inf"), float("-inf"), 10**400],
    ids=["True", "False", "str", "None", "nan", "inf", "-inf", "huge-int"],
)
def test_a_virtual_clock_start_that_is_no_finite_number_is_refused(start: Any) -> None:
    """True was time 1.0 and "5" time 5.0; None and 10**400 raised a raw TypeError and
    OverflowError, NaN and inf a bare ValueError: each is refused as the other settings are."""
    with pytest.raises(ConfigurationError, match=r"VirtualClock\.start must be a finite number"):
        VirtualClock(start=start)


@pytest.mark.parametrize("start", [0, 0.0, 100.0, -5, 1e300])
def test_a_virtual_clock_starts_at_any_finite_number(start: float) -> None:
    assert VirtualClock(start=start).now() == start


# -- SharedSession ------------------------------------------------------------------------------


def test_a_shared_session_margin_longer_than_an_unknown_life_is_refused() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"SharedSession\.safety_margin \(400\) must not be longer than unknown_life \(300\)",
    ):
        SharedSession(MemoryStore(), account="1", user="u", safety_margin=400, unknown_life=300)
    # Up to it, and the defaults, are still taken.
    SharedSession(MemoryStore(), account="1", user="u", safety_margin=300, unknown_life=300)
    SharedSession(MemoryStore(), account="1", user="u")


# -- ClosePolicy --------------------------------------------------------------------------------


def test_a_normal_close_cannot_be_made_a_failure() -> None:
    """fail_codes={1000} stopped every socket a server closed normally (LiveEngage closes idle
    ones so) with SocketRejected; staying closed after it is reconnect_on_server_close=False."""
    with pytest.raises(ConfigurationError, match=r"ClosePolicy\.fail_codes cannot hold 1000"):
        ClosePolicy(fail_codes={1000, 1008})
    stays_closed = ClosePolicy(reconnect_on_server_close=False)
    assert stays_closed.classify(Disconnect.close_frame(1000, 5.0)).action is CloseAction.STOP


@pytest.mark.parametrize("statuses", [{200}, {401, 204}, {101}, {302}, {503}, {100, 999}], ids=repr)
def test_a_reauth_status_must_be_a_client_error(statuses: set[int]) -> None:
    """reauth_statuses={200} threw the credentials away after an upgrade answered 200; a 503
    logged in again into an outage. Only a 4xx can be a refused credential."""
    with pytest.raises(ConfigurationError, match=r"ClosePolicy\.reauth_statuses must hold only"):
        ClosePolicy(reauth_statuses=statuses)


def test_the_close_policy_defaults_and_client_errors_are_still_taken() -> None:
    policy = ClosePolicy()
    assert policy.reauth_statuses == {401}
    assert policy.fail_codes == frozenset()
    assert ClosePolicy(reauth_statuses={400, 401, 403, 499}).reauth_statuses == {400, 401, 403, 499}
    assert ClosePolicy(fail_codes={1001, 1008}).fail_codes == {1001, 1008}


# -- FleetPacer ---------------------------------------------------------------------------------


async def test_an_absurd_fleet_wait_is_cut_and_warned_about(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A finite wait of 1e12 s from the store (tokens written far below 0 by another process)
    was slept: the reconnect hung for ~30,000 years of clock time."""
    caplog.set_level(logging.DEBUG, logger="le_transport.state")
    bucket = TokenBucket(rate=10.0, burst=2.0)
    pacer = FleetPacer(_OddPaceStore(clock, 1e12), account="1", bucket=bucket, clock=clock)
    assert FleetPacer.MAX_SHARED_WAIT <= 3600.0, "documented as minutes, never hours"
    waited = [await pacer.acquire() for _ in range(2)]
    assert waited == [FleetPacer.MAX_SHARED_WAIT] * 2
    assert clock.now() == 2 * FleetPacer.MAX_SHARED_WAIT
    said = [r for r in caplog.records if "past the most a turn may wait" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING, logging.DEBUG]


async def test_a_long_but_sane_fleet_wait_is_taken_as_it_is(clock: VirtualClock) -> None:
    wait = FleetPacer.MAX_SHARED_WAIT - 1.0
    pacer = FleetPacer(_OddPaceStore(clock, wait), account="1", clock=clock)
    assert await pacer.acquire() == wait


# -- RedisStore: a short password -----------------------------------------------------------------

#: Generous: what is tested is what the store says, not how fast.
OP = 5.0


def _refused_port() -> int:
    """A loopback port nothing listens on (bound, then freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ping_error(store: RedisStore) -> str:
    try:
        with pytest.raises(StateStoreError) as info:
            await store.ping()
        return str(info.value)
    finally:
        await store.close()


async def test_a_short_password_blanks_nothing_else_in_an_error() -> None:
    """password="a" turned "Connect call failed" into "Connect c***ll f***iled": every "a"
    of the message was taken for the password."""
    url = f"redis://127.0.0.1:{_refused_port()}/0"
    plain = await _ping_error(RedisStore(url, op_timeout=OP))
    for password in ("a", "1", "ed"):
        shown = await _ping_error(RedisStore(url, password=password, op_timeout=OP))
        assert shown == plain
    assert "***" not in plain


@pytest.mark.parametrize("password", ["a", "a,b"])
async def test_a_short_password_is_still_hidden_where_it_stands_as_a_credential(
    password: str,
) -> None:
    """Hidden in a URL's userinfo and as a credential field's whole value (a ',' in it
    included), and nowhere else: the "a" of "a client at" stays."""
    store = RedisStore(f"redis://:{password}@127.0.0.1:1/0", op_timeout=OP)
    try:
        text = store._scrub(
            f"a client at redis://:{password}@127.0.0.1:1/0 sent password={password}, "
            f"'pw': '{password}'"
        )
    finally:
        await store.close()
    assert text == ("a client at redis://***@127.0.0.1:1/0 sent password=***, 'pw': '***'")


async def test_a_wrong_short_password_leaves_the_servers_answer_readable() -> None:
    """Redis' "invalid username-password pair or user is disabled" read "invalid
    username-p***ssword p***ir or user is dis***bled" for the password "a"."""
    binary = require_redis_server()
    with tempfile.TemporaryDirectory(prefix="le_redis_") as tmp:
        server = RedisServer(binary, Path(tmp), password=PASSWORD)
        server.start()
        try:
            shown = await _ping_error(RedisStore(server.url, password="a", op_timeout=OP))
        finally:
            server.stop()
    assert "***" not in shown
    assert "AuthenticationError" in shown or "ResponseError" in shown, shown


# -- RedisStore: a value a connection refuses -----------------------------------------------------


class _PickyConnection(aioredis.Connection):
    """A connection class that refuses its options with a ValueError quoting the password, as
    a caller's (or a future redis-py's) may."""

    def __init__(self, **kwargs: Any) -> None:
        raise ValueError(f"bad option beside password {kwargs.get('password')!r}")


@pytest.mark.parametrize(
    ("url", "options", "name"),
    [
        ("redis://127.0.0.1:1/0", {"connection_class": _PickyConnection}, "'connection_class'"),
        ("redis://127.0.0.1:1/0", {"protocol": "x", "max_connections": 5}, "'protocol'"),
        ("rediss://127.0.0.1:1/0", {"ssl_cert_reqs": PASSWORD}, "'ssl_cert_reqs'"),
    ],
    ids=["ValueError", "protocol", "ssl_cert_reqs"],
)
async def test_a_value_a_connection_refuses_is_a_configuration_error_without_it(
    url: str, options: dict[str, Any], name: str
) -> None:
    """A ValueError (or redis-py's ConnectionError, RedisError) from the connection's
    constructor escaped RedisStore() raw, its text quoting the value: a misplaced password."""
    with pytest.raises(ConfigurationError) as info:
        RedisStore(url, password=PASSWORD, client_options=options)
    message = str(info.value)
    assert message.startswith("RedisStore.client_options: redis-py's ")
    assert f"refused the value of {name}" in message
    assert PASSWORD not in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
