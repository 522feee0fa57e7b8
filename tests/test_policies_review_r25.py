"""Policies: the ``Date`` header a Retry-After HTTP-date is measured against has its two-digit
year read by RFC 9110's 50-year rule against the injected wall clock; a final 1xx handed back
(``raise_for_status=False``) is no success."""

from __future__ import annotations

import datetime
import math

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from le_transport import Engine, Response, RetryMiddleware
from le_transport.errors import (
    ClientStatusError,
    InterimStatusError,
    InvalidRetryAfter,
    ServerStatusError,
)
from le_transport.middleware.retry import parse_retry_after_date
from le_transport.sockets.dial import _retry_after_of
from le_transport.testing import VirtualClock
from tests.test_policies_r25 import _answering

_UTC = datetime.UTC


def _epoch(year: int, month: int, day: int, second: int = 0) -> float:
    return datetime.datetime(year, month, day, 0, 0, second, tzinfo=_UTC).timestamp()


# --- The Date header: a two-digit year dated against the wall clock, by the 50-year rule ---

#: The wall clock of these tests: 1 January 2070, past email.utils' fixed 1969 cutoff.
_WALL_2070 = _epoch(2070, 1, 1)


@pytest.mark.parametrize(
    ("date", "wall", "meant"),
    [
        # email.utils reads 70 as 1970 whatever the date; by the rule, against 2070, it is 2070.
        ("Wednesday, 01-Jan-70 00:00:00 GMT", _WALL_2070, _WALL_2070),
        ("Wed, 01 Jan 70 00:00:00 GMT", _WALL_2070, _WALL_2070),
        # And 50 (email.utils: 2050) against 1990 is 1950 (2050 is more than 50 years ahead).
        ("Sunday, 01-Jan-50 00:00:00 GMT", _epoch(1990, 1, 1), _epoch(1950, 1, 1)),
        # A year written in full is as written, whatever the wall clock.
        ("Wed, 01 Jan 1970 00:00:00 GMT", _WALL_2070, 0.0),
    ],
)
def test_a_date_headers_two_digit_year_is_read_against_the_wall_clock(
    date: str, wall: float, meant: float
) -> None:
    assert parse_retry_after_date(date, now_epoch=wall) == meant


def test_a_date_header_with_a_reference_no_calendar_holds_is_still_read() -> None:
    for wall in (math.nan, math.inf, 1e300):
        assert parse_retry_after_date("Wed, 01 Jan 70 00:00:00 GMT", now_epoch=wall) == 0.0
    with pytest.raises(InvalidRetryAfter, match="HTTP-date"):
        parse_retry_after_date("yesterday", now_epoch=_WALL_2070)


_RETRY_AFTER_7S = "Wed, 01 Jan 2070 00:00:07 GMT"


async def test_a_retry_after_date_is_measured_from_a_date_header_with_a_two_digit_year() -> None:
    # The answer's Date is RFC 850's (two-digit year), its Retry-After an IMF-fixdate 7 s later.
    # Read by email.utils' cutoff, the Date was 1970 and the wait a century (the ceiling).
    busy = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
        b"Date: Wednesday, 01-Jan-70 00:00:00 GMT\r\n"
        b"Retry-After: " + _RETRY_AFTER_7S.encode() + b"\r\n\r\n"
    )
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    clock = VirtualClock(epoch=_WALL_2070)
    async with (
        _answering(busy, ok) as (host, heads),
        Engine({"svc": host}, scheme="http", clock=clock) as engine,
    ):
        resp = await engine.request("GET", "svc", "/x")
        assert (resp.status, resp.body) == (200, b"ok")
        assert [a.outcome.status for a in resp.attempts] == [503, 200]
        assert resp.attempts[0].outcome.retry_after == 7.0
        assert clock.now() == 7.0
    assert len(heads) == 2


def test_a_refused_upgrades_retry_after_is_measured_from_a_two_digit_date_alike() -> None:
    headers = {"Date": "Wednesday, 01-Jan-70 00:00:00 GMT", "Retry-After": _RETRY_AFTER_7S}
    assert _retry_after_of(headers, lambda: _WALL_2070, shown="ws://svc/x") == 7.0
    # Without a Date, the wall clock itself is the reference.
    assert _retry_after_of({"Retry-After": _RETRY_AFTER_7S}, lambda: _WALL_2070, shown="") == 7.0


# --- A final 1xx handed back (a retry middleware without raise_for_status) is no success ---

_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"


def _response(status: int) -> Response:
    return Response(
        status=status,
        headers=CIMultiDictProxy(CIMultiDict()),
        body=b"",
        method="GET",
        url="http://svc/x",
        service="svc",
    )


@pytest.mark.parametrize("status", [100, 101, 103, 199])
def test_a_1xx_response_is_not_ok_and_raises_its_interim_status_error(status: int) -> None:
    resp = _response(status)
    assert not resp.ok
    with pytest.raises(InterimStatusError) as info:
        resp.raise_for_status()
    assert info.value.status == status
    assert isinstance(info.value, ServerStatusError)


@pytest.mark.parametrize("status", [200, 204, 302, 399])
def test_a_2xx_or_3xx_response_is_ok_and_raises_nothing(status: int) -> None:
    resp = _response(status)
    assert resp.ok
    resp.raise_for_status()


def test_a_4xx_or_5xx_response_is_still_not_ok_and_raises_as_before() -> None:
    assert not _response(404).ok
    with pytest.raises(ClientStatusError):
        _response(404).raise_for_status()
    assert not _response(503).ok
    with pytest.raises(ServerStatusError):
        _response(503).raise_for_status()


async def test_a_101_that_ran_out_its_retries_without_raise_for_status_is_no_success(
    clock: VirtualClock,
) -> None:
    # A caller's session with a retry middleware that hands every final answer back.
    mw = RetryMiddleware(clock=clock, raise_for_status=False)
    async with (
        _answering(_SWITCHING) as (host, heads),
        aiohttp.ClientSession(
            middlewares=[mw], timeout=aiohttp.ClientTimeout(total=None)
        ) as session,
        Engine({"svc": host}, scheme="http", clock=clock, session=session) as engine,
    ):
        resp = await engine.request("GET", "svc", "/x")
    assert len(heads) == 4
    assert clock.now() == 30.0
    assert resp.status == 101
    assert [a.outcome.status for a in resp.attempts] == [101] * 4
    assert not resp.ok
    with pytest.raises(InterimStatusError) as info:
        resp.raise_for_status()
    assert info.value.status == 101
    assert info.value.attempts == resp.attempts


async def test_a_101_from_a_session_without_the_stack_is_raised_as_a_4xx_or_5xx_is(
    clock: VirtualClock,
) -> None:
    # A caller's session without the engine's middlewares: no retry loop judged the answer,
    # so the engine does, as it does a 503 (unretried, said so, logged).
    async with (
        _answering(_SWITCHING) as (host, heads),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
        Engine({"svc": host}, scheme="http", clock=clock, session=session) as engine,
    ):
        with pytest.raises(InterimStatusError) as info:
            await engine.request("GET", "svc", "/x")
    assert len(heads) == 1
    assert info.value.status == 101
    assert "not retried" in str(info.value)
    assert [a.outcome.status for a in info.value.attempts] == [101]


async def test_an_unjudged_answers_retry_after_date_is_measured_from_its_date_header() -> None:
    # A caller's session without the stack: the engine keeps the answer's Retry-After as its
    # attempt's pause (the least the recovery loop waits). Measured, as the retry middleware
    # measures it, from the answer's Date, not from a wall clock years off the server's.
    busy = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
        b"Date: Wed, 01 Jan 2070 00:00:00 GMT\r\n"
        b"Retry-After: " + _RETRY_AFTER_7S.encode() + b"\r\n\r\n"
    )
    clock = VirtualClock(epoch=_epoch(2026, 11, 29))
    async with (
        _answering(busy) as (host, heads),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
        Engine({"svc": host}, scheme="http", clock=clock, session=session) as engine,
    ):
        with pytest.raises(ServerStatusError) as info:
            await engine.request("GET", "svc", "/x")
    assert len(heads) == 1
    (attempt,) = info.value.attempts
    assert attempt.outcome.retry_after == 7.0
    assert attempt.pause == 7.0
