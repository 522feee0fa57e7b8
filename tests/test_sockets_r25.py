"""Sockets, recovery and CSDS: one probe of a connection at a time, the outer pause under a
call's own ceiling, an invalidate that a refresh in flight does not undo.

- ``ResilientSocket``'s keepalive (the scheduler's path) started the next probe while the one
  it cancelled (or whose timeout cut it) was still tidying up: two probes of one connection at
  once, as ``watch_socket`` did before it waited for the last one.

The real simulator on loopback, virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from le_transport.policies import Keepalive
from le_transport.sockets import SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]


# -- 1. ResilientSocket: a cancelled probe still tidying up ------------------------------------


class _TidyingSocket:
    """An open WebSocket whose keepalive writes go out (the peer answers) but never return
    until cut, and then take ``tidy`` seconds of clock time to tidy up, which no further
    cancellation cuts short. Counts the probes writing at once."""

    def __init__(self, ws: Any, clock: VirtualClock, action: str, tidy: float) -> None:
        self.wrapped = ws
        self._clock = clock
        self._action = action
        self._tidy = tidy
        self.in_flight = 0
        self.most = 0
        self.started = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    async def send_str(self, data: str, compress: int | None = None) -> None:
        await self.wrapped.send_str(data, compress)
        if self._action not in data:
            return
        self.started += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.Event().wait()
        finally:
            end = self._clock.now() + self._tidy
            while self._clock.now() < end:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._clock.sleep(end - self._clock.now())
            self.in_flight -= 1


class _Wrapper:
    """A wire middleware that wraps each socket as a :class:`_TidyingSocket`."""

    active = True

    def __init__(self, clock: VirtualClock, action: str, tidy: float) -> None:
        self._clock = clock
        self._action = action
        self._tidy = tidy
        self.sockets: list[_TidyingSocket] = []

    async def __call__(self, request: Any, handler: Any) -> Any:
        return await handler(request)

    async def wrap_socket(self, ws: Any, path: str, *, service: str | None = None) -> Any:
        wrapped = _TidyingSocket(ws, self._clock, self._action, self._tidy)
        self.sockets.append(wrapped)
        return wrapped


@pytest.mark.usefixtures("no_open_connections")
@pytest.mark.parametrize(("timeout", "tidy"), [(10.0, 2.0), (5.0, 8.0)])
async def test_a_socket_starts_no_probe_while_the_last_one_tidies_up(
    sim: Simulator, clock: VirtualClock, states: StateLog, timeout: float, tidy: float
) -> None:
    """A probe cut by the next one (or by its own timeout) that takes a while to end: the next
    probe of that connection goes out once it has, one probe at a time, and the peer, which
    answers each, is never found dead."""
    policy = Keepalive(product="test", action=".GetClock", interval=10.0, timeout=timeout)
    wrapper = _Wrapper(clock, policy.action, tidy)
    async with agent_engine(sim, clock, states, wire_middlewares=[wrapper]) as engine:
        ws = await brand_socket(engine, sim, options=SocketOptions(keepalive=policy))
        await ws.wait_open()
        await clock.sleep(300.0)
        (wire,) = wrapper.sockets
        assert wire.started > 10  # probes went out all along
        assert wire.most == 1, f"{wire.most} probes of one connection at once"
        assert "lost" not in states.names()
        await ws.close()
