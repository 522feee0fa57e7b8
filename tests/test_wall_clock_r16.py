"""A VirtualClock's date: the simulator, the engine and its providers agree on it.

Before, the simulator dated its JWTs (``iat``, ``exp``) and checked OAuth1 timestamps by
``epoch + clock.now()`` on the test's VirtualClock, while the token providers and the OAuth1
signer read real time (``time.time``) unless told ``wall_clock=sim.tokens.epoch_now``: every
token raised a false ``clock_skew`` WARNING, and once virtual time ran more than a day
(``MAX_CLOCK_SKEW``) ahead, ``iat`` was ignored and ``exp`` read against real time, so tokens the
simulator had expired were sent (a 401 and a replay each); a signed call hours of virtual time
in was refused. Now a ``VirtualClock`` has a ``wall()``, the simulator's default epoch is its
clock's, the engine's default ``wall_clock`` is its clock's ``wall``, and providers without a
``wall_clock`` of their own read the engine's once attached.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import math
import time
from typing import Any

import aiohttp
import pytest
from yarl import URL

from le_transport import (
    ConsumerJwt,
    Engine,
    EventHooks,
    RealClock,
    RetryMiddleware,
    SentinelClientCredentials,
    StaticDomains,
    UserLogin,
)
from le_transport.chaos import Status
from le_transport.errors import ConfigurationError
from le_transport.providers import OAuth1Auth
from le_transport.providers._http import ProviderHttp
from le_transport.providers.jwt import jwt_times
from le_transport.testing import Simulator, VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_APP_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    SimulatorConfig,
)

HOURS = 36
#: A call every 10 virtual minutes.
STEP = 600.0
CALLS = HOURS * 3600 // int(STEP)


def users_path(account: str) -> str:
    return f"/api/account/{account}/configuration/le-users/users"


def oauth1_auth(**kwargs: Any) -> OAuth1Auth:
    key = DEFAULT_APP_KEY
    return OAuth1Auth(key.key, key.secret, key.access_token, key.access_token_secret, **kwargs)


# -- the README's setup, 36 virtual hours -------------------------------------------------------


async def test_sentinel_on_a_virtual_clock_sees_no_skew_and_sends_no_expired_token() -> None:
    # The repro: before, 25 clock_skew events and 10 requests refused (401) and replayed.
    clock, events = VirtualClock(), []
    async with Simulator(clock=clock) as sim:
        account = sim.account.id
        domains = StaticDomains(sim.domains)
        auth = SentinelClientCredentials(
            account, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, domains=domains
        )
        hooks = EventHooks(on_state=lambda ev: events.append(ev.name))
        async with Engine(domains, auth=auth, scheme="http", clock=clock, hooks=hooks) as e:
            for _ in range(CALLS):
                await e.request_json("GET", "accountConfigReadOnly", users_path(account))
                await clock.sleep(STEP)
        calls = [r for r in sim.requests if r.path.endswith("/users")]
    assert events.count("clock_skew") == 0
    assert len(calls) == CALLS  # none refused and replayed
    # A token an hour, fetched a margin before its exp: no more.
    assert auth.fetches <= HOURS + 1


async def test_consumer_jwt_on_a_virtual_clock_hands_out_only_live_tokens() -> None:
    clock, events = VirtualClock(), []
    async with Simulator(clock=clock) as sim:
        account = sim.account.id
        domains = StaticDomains(sim.domains)
        auth = ConsumerJwt(account, domains=domains)
        hooks = EventHooks(on_state=lambda ev: events.append(ev.name))
        async with Engine(domains, auth=auth, scheme="http", clock=clock, hooks=hooks):
            dead = 0
            for _ in range(CALLS):
                creds = await auth.credentials()
                value = creds.headers["Authorization"].partition(" ")[2]
                # What the consumer socket's upgrade checks: live at the simulator.
                if sim.tokens.valid_jwt(value, account, "consumer") is None:
                    dead += 1
                await clock.sleep(STEP)
    assert dead == 0
    assert events.count("clock_skew") == 0
    assert auth.fetches <= HOURS + 1


async def test_the_simulator_dates_its_tokens_by_the_clock_s_wall() -> None:
    # An epoch of its own on the clock (2001): the simulator's JWTs are dated on it, and the
    # provider reads them against it, with no skew at all.
    clock, events = VirtualClock(epoch=1_000_000_000.0), []
    async with Simulator(clock=clock) as sim:
        assert sim.wall_clock() == clock.wall() == 1_000_000_000.0
        domains = StaticDomains(sim.domains)
        auth = SentinelClientCredentials(
            sim.account.id, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, domains=domains
        )
        hooks = EventHooks(on_state=lambda ev: events.append(ev.name))
        async with Engine(domains, auth=auth, scheme="http", clock=clock, hooks=hooks) as e:
            await clock.sleep(5 * 86400.0)
            await e.request_json("GET", "accountConfigReadOnly", users_path(sim.account.id))
            assert auth.token is not None
            exp, iat = jwt_times(auth.token.value)
            assert iat is not None
            assert exp is not None
            assert abs(iat - (1_000_000_000.0 + 5 * 86400.0)) <= 1
            assert sim.wall_clock() == clock.wall()
    assert events.count("clock_skew") == 0


async def test_an_oauth1_call_many_virtual_hours_in_is_accepted() -> None:
    # The simulator checks oauth_timestamp against its date (within 5 min here): before, the
    # signer stamped real time, 30 virtual hours behind, and the call was refused (401 twice).
    clock = VirtualClock()
    config = SimulatorConfig(oauth1_timestamp_window=300.0)
    async with Simulator(config, clock=clock) as sim:
        account = sim.account.id
        auth = oauth1_auth()
        async with Engine(sim.domains, auth=auth, scheme="http", clock=clock) as e:
            await e.request_json("GET", "accountConfigReadOnly", users_path(account))
            await clock.sleep(30 * 3600.0)
            await e.request_json("GET", "accountConfigReadOnly", users_path(account))
        calls = [r for r in sim.requests if r.path.endswith("/users")]
    assert len(calls) == 2  # each accepted at once: no 401, no replay


# -- resolution: the engine's wall clock ---------------------------------------------------------


def test_the_engine_s_wall_clock_is_its_clock_s() -> None:
    clock = VirtualClock(epoch=1_500_000_000.0)
    engine = Engine({"svc": "h"}, clock=clock)
    assert engine.wall_clock == clock.wall
    clock.advance(10.0)
    assert engine.wall_clock() == 1_500_000_010.0
    # The retry middleware (a Retry-After HTTP-date without a Date header) has it too.
    assert engine._retry_mw.wall_clock == clock.wall


def test_a_clock_with_a_wall_of_its_own_lends_it_to_the_engine() -> None:
    class Fixed(RealClock):
        __slots__ = ()

        @staticmethod
        def wall() -> float:
            return 42.0

    assert Engine({"svc": "h"}, clock=Fixed()).wall_clock() == 42.0


def test_the_real_clock_default_is_time_time_as_before() -> None:
    assert Engine({"svc": "h"}).wall_clock is time.time
    assert Engine({"svc": "h"}, clock=RealClock()).wall_clock is time.time
    assert RealClock.wall is time.time
    made = ProviderHttp(
        session=lambda: aiohttp.ClientSession(),
        retry_middleware=RetryMiddleware(),
        clock=RealClock(),
    )
    assert made.wall_clock is time.time


async def test_a_simulator_on_the_real_clock_keeps_the_real_date() -> None:
    sim = Simulator()
    assert abs(sim.wall_clock() - time.time()) < 5.0


async def test_an_unattached_oauth1_auth_stamps_real_time() -> None:
    auth = oauth1_auth()
    header = auth.signer.header("GET", _url())
    stamp = int(_param(header, "oauth_timestamp"))
    assert abs(stamp - time.time()) < 5.0


# -- an explicit wall clock still wins ------------------------------------------------------------


def test_an_explicit_engine_wall_clock_wins() -> None:
    def mine() -> float:
        return 7.0

    assert Engine({"svc": "h"}, clock=VirtualClock(), wall_clock=mine).wall_clock is mine


async def test_an_explicit_provider_wall_clock_wins_over_the_engine_s() -> None:
    clock = VirtualClock(epoch=1_000_000_000.0)
    read: list[float] = []

    def mine() -> float:
        read.append(clock.wall() + 3.0)
        return read[-1]

    async with Simulator(clock=clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = ConsumerJwt(sim.account.id, domains=domains, wall_clock=mine)
        async with Engine(domains, auth=auth, scheme="http", clock=clock):
            await auth.credentials()
    assert read  # the token's dates were read against it, not the engine's


async def test_an_explicit_oauth1_wall_clock_wins_over_the_engine_s() -> None:
    clock = VirtualClock(epoch=1_000_000_000.0)
    auth = oauth1_auth(wall_clock=lambda: 2_000_000_000.0)
    async with Simulator(clock=clock) as sim, Engine(sim.domains, auth=auth, clock=clock):
        header = auth.signer.header("GET", _url())
    assert _param(header, "oauth_timestamp") == "2000000000"


async def test_an_attached_oauth1_auth_stamps_the_engine_s_date() -> None:
    clock = VirtualClock(epoch=1_000_000_000.0)
    auth = oauth1_auth()
    async with Simulator(clock=clock) as sim, Engine(sim.domains, auth=auth, clock=clock):
        await clock.sleep(100.0)
        header = auth.signer.header("GET", _url())
    assert _param(header, "oauth_timestamp") == "1000000100"


@pytest.mark.parametrize("bad", [42, "time.time"])
def test_a_wall_clock_that_is_not_callable_is_still_refused(bad: object) -> None:
    domains = StaticDomains({"sentinel": "h", "idp": "h"})
    with pytest.raises(ConfigurationError, match="wall_clock"):
        SentinelClientCredentials("123", "id", "secret", domains=domains, wall_clock=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="wall_clock"):
        ConsumerJwt("123", domains=domains, wall_clock=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="wall_clock"):
        oauth1_auth(wall_clock=bad)
    with pytest.raises(ConfigurationError, match="wall_clock"):
        Engine({"svc": "h"}, wall_clock=bad)  # type: ignore[arg-type]


# -- VirtualClock.wall and its epoch -----------------------------------------------------------


def test_virtual_wall_moves_with_virtual_time_only() -> None:
    before = time.time()
    clock = VirtualClock(start=100.0)
    after = time.time()
    # Default epoch: the real time when made, less start.
    assert before - 100.0 <= clock.epoch <= after - 100.0
    assert clock.wall() == clock.epoch + 100.0
    clock.advance(3600.0)
    assert clock.wall() == clock.epoch + 3700.0
    assert VirtualClock(epoch=5).wall() == 5.0


@pytest.mark.parametrize("bad", [True, "1", math.nan, math.inf, 10**400, []])
def test_a_virtual_clock_epoch_must_be_a_finite_number(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"VirtualClock\.epoch"):
        VirtualClock(epoch=bad)  # type: ignore[arg-type]


def test_a_virtual_clock_whose_date_overflows_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="VirtualClock"):
        VirtualClock(start=1e308, epoch=1e308)


def test_a_simulator_whose_clock_s_wall_is_no_time_is_refused() -> None:
    class Broken(VirtualClock):
        def wall(self) -> float:
            return math.nan

    with pytest.raises(ConfigurationError, match="wall"):
        Simulator(clock=Broken())


def test_an_explicit_simulator_epoch_still_wins() -> None:
    clock = VirtualClock(epoch=1_000_000_000.0)
    sim = Simulator(clock=clock, epoch=1_700_000_000.0)
    assert sim.wall_clock() == 1_700_000_000.0


# -- helpers ----------------------------------------------------------------------------------


def _url() -> URL:
    return URL("http://127.0.0.1/api/account/1/x")


def _param(header: str, name: str) -> str:
    for part in header.removeprefix("OAuth ").split(", "):
        key, _, value = part.partition("=")
        if key == name:
            return value.strip('"')
    raise AssertionError(f"{name} not in the header")


async def test_a_provider_moved_to_an_engine_on_another_date_forgets_its_skew() -> None:
    # A skew is between two wall clocks: learned on one engine's, it says nothing of another's.
    domains = StaticDomains({"sentinel": "h"})
    auth = SentinelClientCredentials("123", "id", "secret", domains=domains)
    first = Engine(domains, auth=auth, clock=VirtualClock(epoch=1_000_000_000.0))
    async with first:
        auth._skew = 120.0
    async with Engine(domains, auth=auth, clock=first.clock):
        assert auth._skew == 120.0  # the same wall clock: kept
    async with Engine(domains, auth=auth, clock=VirtualClock(epoch=1_700_000_000.0)):
        assert auth._skew == 0.0


# -- review of 3d53e8b ------------------------------------------------------------------------


class _DatedClock:
    """A caller's own Clock whose ``wall`` means something else (a datetime for its own
    logs), as it may: taken for Unix seconds, it failed the simulator with a bare TypeError
    and every token call with a ProviderError."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def wall(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)


async def test_a_wall_a_clock_does_not_vouch_for_is_not_read() -> None:
    async with Simulator(clock=_DatedClock()) as sim:
        assert abs(sim.wall_clock() - time.time()) < 60
        domains = StaticDomains(sim.domains)
        auth = SentinelClientCredentials(
            sim.account.id, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, domains=domains
        )
        async with Engine(domains, auth=auth, scheme="http", clock=_DatedClock()) as engine:
            assert engine.wall_clock is time.time
            assert await engine.request_json(
                "GET", "accountConfigReadOnly", users_path(sim.account.id)
            )


async def test_a_wall_clock_that_gives_no_unix_seconds_is_said_as_such() -> None:
    async with Simulator() as sim:
        domains = StaticDomains(sim.domains)
        auth = SentinelClientCredentials(
            sim.account.id,
            DEFAULT_CLIENT_ID,
            DEFAULT_CLIENT_SECRET,
            domains=domains,
            wall_clock=lambda: float("nan"),
        )
        async with Engine(domains, auth=auth, scheme="http") as engine:
            with pytest.raises(ConfigurationError, match="wall clock returned nan"):
                await engine.request("GET", "accountConfigReadOnly", users_path(sim.account.id))


async def test_the_simulators_date_header_is_its_own_date() -> None:
    clock = VirtualClock()
    async with Simulator(clock=clock) as sim:
        clock.advance(7200.0)
        url = f"http://{sim.domains['accountConfigReadOnly']}{users_path(sim.account.id)}"
        async with aiohttp.ClientSession() as http, http.get(url) as answer:
            date = email.utils.parsedate_to_datetime(answer.headers["Date"]).timestamp()
        assert abs(date - sim.wall_clock()) <= 2


async def test_a_retry_after_date_from_the_simulator_is_read_on_its_date() -> None:
    clock = VirtualClock()
    async with Simulator(clock=clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = UserLogin(
            sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False
        )
        async with Engine(domains, auth=auth, scheme="http", clock=clock) as engine:
            await engine.login()
            await clock.sleep(7200.0)
            when = email.utils.formatdate(sim.wall_clock() + 20, usegmt=True)
            sim.faults.script("GET", "*/le-users/users", [Status(503, retry_after=when)])
            start = clock.now()
            await engine.request_json("GET", "accountConfigReadOnly", users_path(sim.account.id))
            assert 15 <= clock.now() - start <= 25  # was the 60 s ceiling (a real-time Date)


def test_a_provider_http_made_by_hand_takes_its_clocks_date() -> None:
    clock = VirtualClock(epoch=1_000_000_000.0)
    http = ProviderHttp(
        session=lambda: aiohttp.ClientSession(),
        retry_middleware=RetryMiddleware(clock=clock),
        clock=clock,
    )
    assert http.wall_clock() == clock.wall()
    with pytest.raises(ConfigurationError, match="wall_clock"):
        ProviderHttp(
            session=lambda: aiohttp.ClientSession(),
            retry_middleware=RetryMiddleware(clock=clock),
            clock=clock,
            wall_clock=5,  # type: ignore[arg-type]
        )
