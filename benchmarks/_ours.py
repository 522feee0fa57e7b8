"""Our resilient sockets for the WebSocket benchmarks, behind one small seam.

The socket layer (``Engine.websocket``) is looked up at run time so that the raw-aiohttp and
python-websockets sides run on any tree; :func:`available` says whether ours can be measured.
Our keepalive is LiveEngage's: a ``.GetClock`` request answered by the server (a protocol ping
does not keep a LiveEngage socket alive), sent only when nothing arrived for an interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from yarl import URL

from le_transport import Engine

__all__ = ["available", "open_fleet", "storm_fleet"]

Fleet = Callable[[int, Callable[[], Awaitable[Any]], Any], Awaitable[list[Any]]]

# Engines and tasks live until the child process exits: nothing here is ever torn down.
_KEEP: list[Any] = []


def available() -> bool:
    """Whether this tree has ``Engine.websocket``."""
    return callable(getattr(Engine, "websocket", None))


async def _engine(url: str, *, pacing: bool = True, hooks: Any = None) -> tuple[Engine, str]:
    u = URL(url)
    kwargs: dict[str, Any] = {}
    if not pacing:
        from le_transport.policies.pacing import TokenBucket
        from le_transport.sockets import ReconnectPacer

        # A bucket no fleet can empty: every reconnect goes as soon as its backoff says.
        unlimited = TokenBucket(rate=1e9, burst=1e9)
        kwargs["pacer"] = ReconnectPacer(_real_clock(), unlimited)
    if hooks is not None:
        kwargs["hooks"] = hooks
    engine = Engine({"bench": f"{u.host}:{u.port}"}, scheme="http", connection_limit=0, **kwargs)
    await engine.start()
    _KEEP.append(engine)
    return engine, u.path


def _real_clock() -> Any:
    from le_transport import RealClock

    return RealClock()


#: The engine each fleet URL's sockets share: one per child process, made with its warm-up
#: socket, so that no part of the fleet measured pays for an engine.
_FLEET_ENGINES: dict[str, tuple[Engine, str]] = {}


async def open_fleet(url: str, n: int, interval: float, fleet: Fleet) -> int:
    """Open ``n`` of our sockets with keepalive every ``interval`` seconds (on one engine per
    ``url``, however many times it is called)."""
    from le_transport.policies.keepalive import Keepalive
    from le_transport.sockets import SocketOptions

    if url not in _FLEET_ENGINES:
        _FLEET_ENGINES[url] = await _engine(url)
    engine, path = _FLEET_ENGINES[url]
    options = SocketOptions(
        keepalive=Keepalive(
            product="benchmark", action=".GetClock", interval=interval, timeout=interval
        )
    )

    async def connect_one() -> Any:
        ws = await engine.websocket("bench", path, options=options)
        await ws.wait_open()
        return ws

    async def consume(ws: Any) -> None:
        async for _ in ws:
            pass

    return len(await fleet(n, connect_one, consume))


async def storm_fleet(
    url: str,
    n: int,
    *,
    pacing: bool,
    gate: asyncio.Semaphore,
    on_attempt: Callable[[], None],
) -> None:
    """Open ``n`` of our sockets with default options; they reconnect on their own.
    ``on_attempt`` is called as each connect attempt starts (the socket's ``connecting``)."""
    from le_transport import EventHooks

    def state(event: Any) -> None:
        if event.name == "connecting":
            on_attempt()

    engine, path = await _engine(url, pacing=pacing, hooks=EventHooks(on_state=[state]))

    async def one() -> None:
        async with gate:
            ws = await engine.websocket("bench", path)
            await ws.wait_open()
        async for _ in ws:
            pass

    _KEEP.extend(asyncio.create_task(one()) for _ in range(n))
