"""An agent bot on the UMS messaging socket: subscribes, answers messages, survives reconnects.

The socket is an :class:`~le_transport.sockets.ResilientSocket` from ``engine.websocket``: it
reconnects with backoff, re-authenticates on 4401, keeps itself alive with ``.GetClock``, and
runs ``on_connect`` after every connect, which is where the bot (re-)subscribes: LiveEngage
subscriptions live only as long as one connection. Run it: ``python -m examples.agent_bot``
(against the built-in simulator, which drops the socket halfway through).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from le_transport import Clock, Engine, RealClock
from le_transport.policies import BackoffPolicy
from le_transport.providers import CsdsDomains, UserLogin
from le_transport.sockets import (
    UMS_BRAND_SOCKET_QUERY,
    ResilientSocket,
    SocketOptions,
    ums_brand_path,
)
from le_transport.testing.simulator import DEFAULT_PASSWORD, DEFAULT_USER, Simulator

MESSAGE_NOTIFICATION = ".ams.ms.MessagingEventNotification"


class AgentBot:
    """Answers every consumer message with an echo, on whatever connection is current."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.subscriptions = 0
        self.replies: list[str] = []
        self._inbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.subscribed = asyncio.Event()

    async def on_connect(self, ws: ResilientSocket) -> None:
        """After every (re)connect: subscribe again."""
        await ws.request(".ams.aam.SubscribeExConversations", {"convState": ["OPEN"]})
        await ws.request(".ams.routing.SubscribeRoutingTasks", {})
        self.subscriptions += 1
        self.subscribed.set()

    def on_frame(self, frame: Any) -> None:
        """Unsolicited frames: queue consumer messages (never block the socket's reader)."""
        if not isinstance(frame, dict) or frame.get("type") != MESSAGE_NOTIFICATION:
            return
        body = frame.get("body") or {}
        for change in body.get("changes", []):
            if change.get("originatorId") == self.me:
                continue  # our own message, echoed by the server
            text = (change.get("event") or {}).get("message")
            if isinstance(text, str):
                self._inbox.put_nowait((str(body.get("dialogId")), text))

    async def run(self, ws: ResilientSocket) -> None:
        """Answer queued messages until cancelled."""
        while True:
            dialog, text = await self._inbox.get()
            reply = f"you said: {text}"
            await ws.request(
                ".ams.ms.PublishEvent",
                {
                    "dialogId": dialog,
                    "event": {
                        "type": "ContentEvent",
                        "contentType": "text/plain",
                        "message": reply,
                    },
                },
            )
            self.replies.append(reply)


async def consumer_says(sim: Simulator, text: str) -> None:
    """The simulator pushes a consumer's message to the agent sockets."""
    await sim.sockets.notify(
        MESSAGE_NOTIFICATION,
        {
            "dialogId": "dialog-1",
            "changes": [
                {"originatorId": "consumer-1", "event": {"type": "ContentEvent", "message": text}}
            ],
        },
    )


async def main(clock: Clock | None = None, time_scale: float = 0.01) -> AgentBot:
    """Run the bot against the simulator: three messages, a dropped socket, three more."""
    clock = clock or RealClock()
    async with Simulator(clock=clock) as sim:
        account = sim.account.id
        domains = CsdsDomains(account, csds_host=sim.host, scheme="http")
        auth = UserLogin(account, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False)
        bot = AgentBot(me=f"{account}.brand")
        # No keepalive given: a socket on the UMS agent path sends the guide's .GetClock after
        # 30 s of silence by default (SocketOptions.keepalive, KEEPALIVE_BY_PATH).
        options = SocketOptions(backoff=BackoffPolicy.reconnect().scaled(time_scale))
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            ws = await engine.websocket(
                "facadeMsg",
                ums_brand_path(account),
                params=UMS_BRAND_SOCKET_QUERY,
                options=options,
                on_connect=[bot.on_connect],
                on_frame=bot.on_frame,
            )
            answering = asyncio.get_running_loop().create_task(bot.run(ws))
            try:
                for round_ in (1, 2):
                    await bot.subscribed.wait()
                    for i in range(3):
                        await consumer_says(sim, f"hello {round_}.{i + 1}")
                    while len(bot.replies) < 3 * round_:
                        await clock.sleep(0.01)
                    if round_ == 1:
                        print(f"answered {len(bot.replies)}; the server drops the socket")
                        bot.subscribed.clear()
                        await sim.sockets.drop_all()
                print(f"answered {len(bot.replies)} after {bot.subscriptions} subscriptions")
            finally:
                answering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await answering
                await ws.close()
        print(f"the server received: {[m.text for m in sim.sockets.published]}")
    return bot


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="  %(name)s: %(message)s")
    asyncio.run(main())
