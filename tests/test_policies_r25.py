"""Policies: an HTTP-date's two-digit year read by RFC 9110's 50-year rule; a final 1xx answer
is the server's protocol error, not a success."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from le_transport import Engine
from le_transport.errors import (
    InterimStatusError,
    Repeat,
    RetriesExhausted,
    ServerStatusError,
    status_error,
)
from le_transport.policies import Classifier, Outcome, Verdict, parse_retry_after
from le_transport.policies.breaker import CircuitBreaker
from le_transport.testing import VirtualClock

_UTC = datetime.UTC
_YEAR = 365.2425 * 86400


def _epoch(year: int, month: int, day: int) -> float:
    return datetime.datetime(year, month, day, tzinfo=_UTC).timestamp()


# --- Retry-After: a two-digit year is dated by the reference time, never by a fixed cutoff ---


@pytest.mark.parametrize(
    ("value", "now", "meant"),
    [
        # Python's email.utils reads 69-99 as 19xx and 00-68 as 20xx whatever the date; RFC
        # 9110 5.6.7: a year more than 50 years ahead of now is the most recent past one.
        ("Monday, 01-Jan-70 00:00:00 GMT", (2026, 11, 29), (2070, 1, 1)),
        ("Sunday, 01-Jan-50 00:00:00 GMT", (1990, 1, 1), (1950, 1, 1)),
        ("Monday, 01-Jan-05 00:00:00 GMT", (2080, 1, 1), (2105, 1, 1)),
        # The obsolete RFC 822 form with a two-digit year is dated alike.
        ("Tue, 01 Jan 70 00:00:00 GMT", (2026, 11, 29), (2070, 1, 1)),
        # Fifty years ahead exactly is not "more than" 50: kept.
        ("Sunday, 29-Nov-76 00:00:00 GMT", (2026, 11, 29), (2076, 11, 29)),
    ],
)
def test_two_digit_year_is_read_by_the_50_year_rule_against_now(
    value: str, now: tuple[int, int, int], meant: tuple[int, int, int]
) -> None:
    now_epoch = _epoch(*now)
    assert parse_retry_after(value, now_epoch=now_epoch) == max(0.0, _epoch(*meant) - now_epoch)


def test_two_digit_year_more_than_50_years_ahead_is_the_most_recent_past_one() -> None:
    now_epoch = _epoch(2026, 11, 29)
    # 2077 is more than 50 years ahead: 1977, long past, so no wait at all.
    assert parse_retry_after("Saturday, 01-Jan-77 00:00:00 GMT", now_epoch=now_epoch) == 0.0
    # A day past the 50 years: past too.
    assert parse_retry_after("Monday, 30-Nov-76 00:00:00 GMT", now_epoch=now_epoch) == 0.0


def test_four_digit_years_are_read_as_written() -> None:
    now_epoch = _epoch(1990, 1, 1)
    # More than 50 years ahead, but written in full: meant as written.
    assert parse_retry_after("Sat, 01 Jan 2050 00:00:00 GMT", now_epoch=now_epoch) == (
        _epoch(2050, 1, 1) - now_epoch
    )
    assert parse_retry_after("Saturday, 01-Jan-2050 00:00:00 GMT", now_epoch=now_epoch) == (
        _epoch(2050, 1, 1) - now_epoch
    )


@given(
    st.integers(0, 99),
    st.floats(_epoch(1901, 1, 1), _epoch(9800, 1, 1)),
)
def test_a_two_digit_year_is_never_more_than_50_years_ahead(yy: int, now_epoch: float) -> None:
    """Invariant: whatever the reference time, a two-digit year's date is at most 50 years
    (and a day or so of calendar slack) ahead of it."""
    value = f"Monday, 01-Jan-{yy:02d} 00:00:00 GMT"
    assert parse_retry_after(value, now_epoch=now_epoch) <= 50 * _YEAR + 2 * 86400


@pytest.mark.parametrize("now_epoch", [1e300, -1e300])
def test_two_digit_year_with_a_reference_beyond_any_calendar_is_still_read(
    now_epoch: float,
) -> None:
    # A reference time no datetime holds: the date is read as email.utils reads it, and the
    # answer is still a number of seconds (0, or a very long wait the ceiling cuts).
    assert parse_retry_after("Monday, 01-Jan-70 00:00:00 GMT", now_epoch=now_epoch) >= 0.0


# --- A final 1xx: aiohttp hands back a 101 as the answer; it is no success ---

_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


@contextlib.asynccontextmanager
async def _answering(*answers: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A raw loopback server answering its requests with ``answers`` in turn (the last one
    for ever after); a connection it answered 101 on is left open and never read again, as a
    server that switched protocols would. Yields ``host:port`` and the request heads."""
    heads: list[bytes] = []
    held: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                answer = answers[min(len(heads), len(answers)) - 1]
                writer.write(answer)
                await writer.drain()
                if answer.startswith(b"HTTP/1.1 101"):
                    held.append(writer)
                    return
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", heads
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def _acquired(engine: Engine) -> int:
    connector = engine.session.connector
    assert isinstance(connector, aiohttp.TCPConnector)
    return len(connector._acquired)


@pytest.mark.parametrize("status", [100, 101, 102, 103, 199])
def test_a_final_1xx_is_retried_as_the_servers_fault_never_a_success(status: int) -> None:
    classifier = Classifier()
    outcome = Outcome.response(status)
    assert classifier.classify(outcome) is Verdict.RETRY
    # As a 5xx: the server may have acted on it, so a POST is not repeated.
    assert classifier.retryable_for(outcome, idempotent=True)
    assert not classifier.retryable_for(outcome, idempotent=False)
    assert CircuitBreaker.counts_as_failure(outcome)


def test_a_final_1xx_can_still_be_made_final_or_a_success_by_the_caller() -> None:
    assert Classifier(final_statuses={101}).classify(Outcome.response(101)) is Verdict.FAIL
    assert Classifier(retry_statuses={101}).classify(Outcome.response(101)) is Verdict.RETRY


def test_a_final_1xx_raises_a_typed_server_status_error() -> None:
    err = status_error(101, "Switching Protocols", "", tries=1)
    assert type(err) is InterimStatusError
    assert isinstance(err, ServerStatusError)
    assert err.status == 101
    assert "101 Switching Protocols" in str(err)
    assert "interim" in str(err)


async def test_a_101_to_a_call_that_asked_no_upgrade_is_retried_on_a_fresh_connection(
    clock: VirtualClock,
) -> None:
    async with (
        _answering(_SWITCHING, _OK) as (host, heads),
        Engine({"svc": host}, scheme="http", clock=clock) as engine,
    ):
        resp = await engine.request("GET", "svc", "/x")
        assert (resp.status, resp.body) == (200, b"ok")
        assert [a.outcome.status for a in resp.attempts] == [101, 200]
        assert [a.pause for a in resp.attempts] == [5.0, None]
        assert _acquired(engine) == 0
    assert len(heads) == 2


async def test_a_101_every_time_runs_the_schedule_out_with_a_typed_error(
    clock: VirtualClock,
) -> None:
    async with (
        _answering(_SWITCHING) as (host, heads),
        Engine({"svc": host}, scheme="http", clock=clock) as engine,
    ):
        with pytest.raises(RetriesExhausted) as info:
            await engine.request("GET", "svc", "/x")
        assert _acquired(engine) == 0
    assert len(heads) == 4
    assert clock.now() == 30.0
    assert isinstance(info.value.last, InterimStatusError)
    assert info.value.last.status == 101


async def test_a_101_to_a_post_is_not_repeated_and_says_it_may_be_if_idempotent(
    clock: VirtualClock,
) -> None:
    async with (
        _answering(_SWITCHING) as (host, heads),
        Engine({"svc": host}, scheme="http", clock=clock) as engine,
    ):
        with pytest.raises(InterimStatusError) as info:
            await engine.request("POST", "svc", "/x", json={"a": 1})
        assert _acquired(engine) == 0
    assert len(heads) == 1
    assert info.value.repeat is Repeat.RETRYABLE_IF_IDEMPOTENT
    assert clock.now() == 0.0
