"""The engine, the overload guard, the retry middleware, socket options and event hooks refuse
arguments of the wrong kind when they are built, naming the field, rather than failing deep
inside the first call or socket."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import logging
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from le_transport import ConfigurationError, Engine, EventHooks, OverloadGuard, RetryMiddleware
from le_transport.events import StateEvent, emit
from le_transport.sockets import ResilientSocket, SocketOptions

ENGINE_BAD: dict[str, dict[str, Any]] = {
    "domains": {"domains": 5},
    "retry": {"retry": 5},
    "clock": {"clock": 5},
    "hooks": {"hooks": 5},
    "rng": {"rng": 5},
    "session": {"session": "session"},
    "recovery": {"recovery": 5},
    "pacer": {"pacer": 5},
    "overload": {"overload": 5},
    "wire_middlewares": {"wire_middlewares": [5]},
    "outer_middlewares": {"outer_middlewares": "abc"},
    "connection_limit": {"connection_limit": -1},
}


@pytest.mark.parametrize("field", sorted(ENGINE_BAD))
def test_an_engine_argument_of_the_wrong_kind_is_refused_naming_it(field: str) -> None:
    kwargs = dict(ENGINE_BAD[field])
    domains = kwargs.pop("domains", {"svc": "127.0.0.1:9"})
    with pytest.raises(ConfigurationError, match=f"Engine.{field} must be"):
        Engine(domains, **kwargs)


GUARD_BAD: dict[str, Any] = {
    "budget": 5,
    "breaker": "x",
    "store": 5,
    "clock": 5,
    "hooks": 5,
    "rng": 5,
    "account": "",
    "flush_interval": float("nan"),
    "sync_interval": -1,
}


@pytest.mark.parametrize("field", sorted(GUARD_BAD))
def test_an_overload_guard_argument_of_the_wrong_kind_is_refused_naming_it(field: str) -> None:
    with pytest.raises(ConfigurationError, match=f"OverloadGuard.{field} must be"):
        OverloadGuard(**{field: GUARD_BAD[field]})


MIDDLEWARE_BAD: dict[str, Any] = {
    "policy": 5,
    "clock": 5,
    "hooks": 5,
    "rng": 5,
    "raise_for_status": "no",
    "buffer_body": 1,
    "max_body_bytes": 0,
    "gate": 5,
    "shutdown": 5,
}


@pytest.mark.parametrize("field", sorted(MIDDLEWARE_BAD))
def test_a_retry_middleware_argument_of_the_wrong_kind_is_refused_naming_it(field: str) -> None:
    with pytest.raises(ConfigurationError, match=f"RetryMiddleware.{field} must be"):
        RetryMiddleware(**{field: MIDDLEWARE_BAD[field]})


@pytest.mark.parametrize("field", ["backoff", "close_policy"])
def test_socket_options_refuse_a_policy_of_the_wrong_kind(field: str) -> None:
    bad: dict[str, Any] = {field: 5}
    with pytest.raises(ConfigurationError, match=f"SocketOptions.{field} must be"):
        SocketOptions(**bad)


@pytest.mark.parametrize("hooks", [[5], "on_retry", [print, None], 5, None])
def test_event_hooks_refuse_what_cannot_be_called(hooks: Any) -> None:
    # 5 and None are no sequence at all: they raised a bare TypeError from iterating them.
    with pytest.raises(ConfigurationError, match="a sequence of callables"):
        EventHooks(on_retry=hooks)


def test_event_hooks_take_one_callable_as_a_tuple_of_one() -> None:
    # EventHooks(on_state=handler), as the README's wording invites.
    seen: list[object] = []
    hooks = EventHooks(on_state=seen.append)
    assert hooks.on_state == (seen.append,)


async def _async_hook(event: object) -> None:
    """An async hook: its coroutine would never run."""


class _AsyncCallable:
    async def __call__(self, event: object) -> None:
        """An object with an async __call__."""


@pytest.mark.parametrize(
    "hook",
    [_async_hook, [_async_hook], functools.partial(_async_hook), _AsyncCallable()],
    ids=["async def", "in a list", "partial", "async __call__"],
)
def test_event_hooks_refuse_an_async_hook_whose_coroutine_would_never_run(hook: Any) -> None:
    """EventHooks(on_retry=async_fn) was accepted, and the hook never ran: emit() called it,
    dropped the coroutine, and only a 'never awaited' RuntimeWarning (hidden by default)
    said so. The same for a socket's on_state."""
    with pytest.raises(ConfigurationError, match=r"called synchronously.* is async"):
        EventHooks(on_retry=hook)
    socket = _socket()
    with pytest.raises(ConfigurationError, match="on_state hooks are called synchronously"):
        socket.add_on_state(hook)


def test_a_hook_that_returns_an_awaitable_is_logged_and_its_coroutine_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lambda around an async function passes the check (only a call shows what it
    returns): its coroutine is closed, not left to a 'never awaited' warning, and logged."""
    caplog.set_level(logging.WARNING, logger="le_transport.events")
    made: list[Coroutine[Any, Any, None]] = []

    def hook(event: object) -> Coroutine[Any, Any, None]:
        made.append(_async_hook(event))
        return made[-1]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "never awaited" RuntimeWarning would fail here
        emit([hook], "event")
        gc.collect()
    assert inspect.getcoroutinestate(made[0]) == inspect.CORO_CLOSED
    assert [
        "returned an awaitable, which nothing awaits" in r.getMessage() for r in caplog.records
    ] == [True]


def test_a_hook_that_raises_is_logged_with_its_text_and_traceback_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook's error was logged with logging.exception: its text, which may quote what the
    hook was handling (a token), reached the log whole through the traceback."""
    caplog.set_level(logging.ERROR, logger="le_transport.events")
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib3QifQ.c2lnbmF0dXJlLXNlY3JldA"

    def hook(event: object) -> None:
        raise RuntimeError(f"could not post {event}: access_token={token}")

    emit([hook], "event")
    (record,) = caplog.records
    shown = caplog.text + logging.Formatter().format(record)
    assert "could not post event" in shown
    assert "Traceback" in shown
    assert "RuntimeError" in shown
    assert token not in shown


def _socket() -> ResilientSocket:
    class _Dialer:
        name = "test"

        async def connect(self) -> object:
            raise AssertionError("not dialled")

    return ResilientSocket(_Dialer())  # type: ignore[arg-type]


async def test_a_plain_hook_that_starts_a_task_is_taken_and_not_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What the refusal's own message advises: a fire-and-forget decorator (a plain
    functools.wraps wrapper of an async function, which it schedules) was refused as async,
    and a lambda returning the Task it started was warned about at every event."""
    caplog.set_level(logging.WARNING, logger="le_transport.events")
    ran: list[object] = []

    def fire_and_forget(
        fn: Callable[[object], Coroutine[Any, Any, None]],
    ) -> Callable[[object], None]:
        @functools.wraps(fn)
        def start(event: object) -> None:
            asyncio.get_running_loop().create_task(fn(event))

        return start

    @fire_and_forget
    async def ship(event: object) -> None:
        ran.append(event)

    async def ship_too(event: object) -> None:
        ran.append(event)

    hooks = EventHooks(
        on_state=[ship, lambda event: asyncio.get_running_loop().create_task(ship_too(event))]
    )
    event = StateEvent("logged_in", "user_login[123]")
    emit(hooks.on_state, event)
    await asyncio.sleep(0)
    assert ran == [event, event]
    assert not caplog.records
