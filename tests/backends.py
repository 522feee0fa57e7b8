"""A loopback service for overload tests (breaker, budget): a settable status and a hit count."""

from __future__ import annotations

import asyncio

from aiohttp import web


class Backend:
    """A loopback service whose status the test sets; it counts what reaches it.

    Set ``gate`` to an unset event to hold requests in the handler; ``arrived`` is set once a
    request has reached it.
    """

    def __init__(self, status: int = 503) -> None:
        self.status = status
        self.hits = 0
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        return web.Response(status=self.status, text="{}")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app
