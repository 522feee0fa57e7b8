"""Fault injection's waits and the overload guard's fleet probe locks: the cases their
earlier fixes left out."""

from __future__ import annotations

import logging
from typing import Any
from unittest import mock

import aiohttp
import pytest

from le_transport.chaos.injector import _sock_read_of
from le_transport.chaos.plan import RecordLog
from le_transport.errors import CircuitOpen
from le_transport.policies import BreakerState, Outcome
from le_transport.testing import VirtualClock
from tests.test_guard_hot_path import _Call
from tests.test_leftovers_r25 import _HOST, _PROBE_KEY, _guard_half_open

# -- a probe's lock whose final delete a FallbackStore answered locally ----------------------


async def test_a_probe_lock_whose_verdicts_delete_was_answered_locally_is_freed_later() -> None:
    """A probe fails (a 503) while the shared store refuses deletes: the breaker re-opens, and
    the lock's delete is answered by the FallbackStore's local stand-in, the shared store still
    holding the lock for its 30 s lease. Before, the lock was taken for freed: once the store
    was back and the new 10 s break over, this process's next probe was refused by its own old
    lock (CircuitOpen) until the lease ended. Now it stays this process's to free."""
    clock = VirtualClock(start=100.0)
    guard, primary = await _guard_half_open(clock)
    probe = _Call("svc", _HOST)
    assert await guard.admit(probe, 1) is None
    held = await primary.get(_PROBE_KEY)
    assert held is not None, "the probe holds the fleet's lock"
    primary.fail = True
    await guard.settle(probe, 1, Outcome.response(503))  # the verdict: open again
    assert guard.breaker_state("svc", _HOST) is BreakerState.OPEN
    still = await primary.get(_PROBE_KEY)
    assert still is not None
    assert still.value == held.value, "the shared store still holds it"
    primary.fail = False
    await clock.sleep(11.0)  # past the new break and the FallbackStore's retry_interval
    nxt = _Call("svc", _HOST)
    refused = await guard.admit(nxt, 1)
    assert not isinstance(refused, CircuitOpen), "this process's own old lock kept it waiting"
    assert refused is None
    await guard.settle(nxt, 1, Outcome.response(200))
    assert guard.breaker_state("svc", _HOST) is BreakerState.CLOSED
    await guard.drain()


# -- the call's sock_read, read from aiohttp's handler chain only --------------------------------


async def _send(request: Any) -> Any:
    """A stand-in for the handler that sends (never awaited here)."""
    raise AssertionError("not sent")


def _caller_handler(handler: Any) -> Any:
    """A caller's own handler around ``handler``, with a ``real_timeout`` of its own (not the
    call's: a deadline it keeps for something else), as a caller composing middlewares by hand
    may write one."""
    real_timeout = aiohttp.ClientTimeout(sock_read=0.05)

    async def next_step(request: Any) -> Any:
        assert real_timeout.sock_read
        return await handler(request)

    return next_step


def _caller_chain(handler: Any) -> Any:
    """A caller's chain naming its next handler ``next_h``, as aiohttp's own does."""

    async def wrapped(request: Any) -> Any:
        return await next_h(request)

    next_h = _caller_handler(handler)
    return wrapped


@pytest.mark.parametrize(
    "handler",
    [
        mock.AsyncMock(spec=_send),
        mock.MagicMock(spec=_send),
        _caller_handler(_send),
        _caller_chain(_send),
    ],
    ids=["async-mock", "magic-mock", "caller-real_timeout", "caller-next_h"],
)
def test_a_handler_aiohttp_did_not_make_gives_no_sock_read(handler: Any) -> None:
    # Before: a mock spec'd on a function raised TypeError out of the injector's Delay (its
    # __code__ a mock), and a caller's closure holding a ``real_timeout`` (or a ``next_h``
    # leading to one) was read as the call's timeout: its 0.05 s struck a Delay the call's
    # own timeout allowed.
    assert _sock_read_of(handler) is None


class _Seen(Exception):
    """Raised by :func:`_reading` with what it read, before anything is sent."""


async def _reading(request: Any, handler: Any) -> Any:
    raise _Seen(_sock_read_of(handler))


async def _passing(request: Any, handler: Any) -> Any:
    return await handler(request)


@pytest.mark.parametrize("before", [0, 2])
async def test_the_sock_read_is_read_through_aiohttps_own_chain(before: int) -> None:
    # A guard: aiohttp's chain, one middleware or more, is still read (the call's timeout=,
    # else the session's). Nothing is sent: the reading middleware raises first.
    middlewares = [*[_passing] * before, _reading, _passing]
    session_timeout = aiohttp.ClientTimeout(sock_read=7.0)
    async with aiohttp.ClientSession(middlewares=middlewares, timeout=session_timeout) as http:
        for timeout, wants in [
            (None, 7.0),
            (aiohttp.ClientTimeout(sock_read=3.0), 3.0),
            (aiohttp.ClientTimeout(total=9.0), None),
        ]:
            call = (
                http.get("http://127.0.0.1:9/")
                if timeout is None
                else http.get("http://127.0.0.1:9/", timeout=timeout)
            )
            with pytest.raises(_Seen) as seen:
                await call
            assert seen.value.args == (wants,)
    # Alone in the chain: handed aiohttp's sending handler itself.
    async with aiohttp.ClientSession(middlewares=[_reading], timeout=session_timeout) as http:
        with pytest.raises(_Seen) as seen:
            await http.get("http://127.0.0.1:9/")
        assert seen.value.args == (7.0,)


# -- a RecordLog's first drop is told, whichever edit dropped it --------------------------------


def test_an_edit_past_the_bound_tells_of_the_first_drop(caplog: pytest.LogCaptureFixture) -> None:
    # Before: appending and inserting told of the first drop (once, at INFO), but an edit
    # that left more than maxlen (log[:] = ..., log[3:] = ...) dropped records silently,
    # against the class's word that the first drop is logged.
    log: RecordLog[object] = RecordLog(3, name="frames")
    with caplog.at_level(logging.INFO, logger="le_transport.records"):
        log[:] = [1, 2, 3, 4, 5]
        told = [r for r in caplog.records if r.name == "le_transport.records"]
        log[3:] = [6]
        log.append(7)
    assert (list(log), log.dropped) == ([5, 6, 7], 4)
    # Told at the first drop, and only once.
    assert told
    told = [r for r in caplog.records if r.name == "le_transport.records"]
    assert [r.getMessage() for r in told] == [
        "frames: keeping the newest 3 records, dropping older ones"
    ]
