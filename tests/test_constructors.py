"""The engine, the overload guard, the retry middleware, socket options and event hooks refuse
arguments of the wrong kind when they are built, naming the field, rather than failing deep
inside the first call or socket."""

from __future__ import annotations

from typing import Any

import pytest

from le_transport import ConfigurationError, Engine, EventHooks, OverloadGuard, RetryMiddleware
from le_transport.sockets import SocketOptions

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
