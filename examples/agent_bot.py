"""An agent bot on the UMS messaging socket: subscribes, answers messages, survives reconnects.

The socket is an :class:`~le_transport.sockets.ResilientSocket` from ``engine.websocket``: it
reconnects with backoff, re-authenticates on 4401, keeps itself alive with ``.GetClock``, and
runs ``on_connect`` after every connect, which is where the bot (re-)subscribes: LiveEngage
subscriptions live only as long as one connection. Run it: ``python -m examples.agent_bot``
(against the built-in simulator, which drops the socket halfway through).

What to copy from it, besides the subscriptions:

- ``on_frame`` never blocks the socket's reader: it only queues the consumer's message, and a
  task of its own answers.
- A reply whose connection drops while it is in flight fails with
  :class:`~le_transport.errors.SocketClosed` (LiveEngage may or may not have published it): the
  bot sends it again, on the connection the socket makes next, up to :data:`REPLY_ATTEMPTS`
  times, so a reply is published at least once (a consumer may see it twice; one never sent
  is worse). So does a :class:`~le_transport.errors.SocketRequestTimeout`, and a 429 after a
  pause of at least a second; any other error answer, or running out of attempts, is logged
  and the bot goes on with the next message. Only a socket closed for good stops it.
- The answering task is supervised (an :class:`asyncio.TaskGroup`): if it fails, ``main``
  fails with its error at once instead of waiting for replies that will never come.
- Every wait is bounded on the engine's clock (:func:`~le_transport.timeout_after`): a reply
  that never comes is a :class:`TimeoutError` naming what was awaited, never a hang.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from le_transport import Clock, Engine, RealClock, timeout_after
from le_transport.chaos import FaultPlan, FaultRule
from le_transport.errors import SocketClosed, SocketRequestError, SocketRequestTimeout
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
#: How many times the bot sends one reply before it gives up on it (logged) and goes on.
REPLY_ATTEMPTS = 3
#: The shortest pause after a 429 answer before the reply is sent again (LiveEngage's rule).
RATE_LIMIT_PAUSE = 1.0
#: Seconds of the clock ``main`` waits for each step (a subscription, a round of replies)
#: before it gives up with a :class:`TimeoutError`: a generous bound, never a schedule.
STEP_TIMEOUT = 120.0

_log = logging.getLogger("examples.agent_bot")


class AgentBot:
    """Answers every consumer message with an echo, on whatever connection is current.

    ``clock``: the engine's clock (the pause after a 429 runs on it). ``replies`` are the
    replies the server acknowledged, ``lost`` the ones given up on, ``resent`` how many sends
    were repeated after a lost connection, a timeout or a 429.
    """

    def __init__(self, me: str, clock: Clock) -> None:
        self.me = me
        self.clock = clock
        self.subscriptions = 0
        self.replies: list[str] = []
        self.lost: list[str] = []
        self.resent = 0
        self._inbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._answered = asyncio.Event()
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
        """Answer queued messages until cancelled.

        Raises :class:`~le_transport.errors.SocketClosed` only when the socket is closed for
        good (nothing can be answered any more); every other failure of one reply is handled
        here (see the module)."""
        while True:
            dialog, text = await self._inbox.get()
            reply = f"you said: {text}"
            if await self._publish(ws, dialog, reply):
                self.replies.append(reply)
            else:
                self.lost.append(reply)
            self._answered.set()

    async def _publish(self, ws: ResilientSocket, dialog: str, reply: str) -> bool:
        """Publish one reply, at least once; False if the bot gave up on it (logged)."""
        body = {
            "dialogId": dialog,
            "event": {"type": "ContentEvent", "contentType": "text/plain", "message": reply},
        }
        for attempt in range(1, REPLY_ATTEMPTS + 1):
            if attempt > 1:
                self.resent += 1
            try:
                await ws.request(".ams.ms.PublishEvent", body)
            except SocketClosed:
                if ws.closed:
                    raise  # closed for good: no reconnect will come
                # Lost with its connection: maybe published, maybe not. The socket reconnects
                # and re-subscribes by itself; the request sent again waits in its queue.
                _log.warning("a reply to %s was lost in flight (attempt %d)", dialog, attempt)
            except SocketRequestTimeout:
                _log.warning("a reply to %s was not answered (attempt %d)", dialog, attempt)
            except SocketRequestError as exc:
                if exc.code != 429:
                    _log.error("a reply to %s was refused with %d: dropped", dialog, exc.code)
                    return False
                _log.warning("a reply to %s was rate-limited (attempt %d)", dialog, attempt)
                await self.clock.sleep(RATE_LIMIT_PAUSE)
            else:
                return True
        _log.error("a reply to %s failed %d times: dropped", dialog, REPLY_ATTEMPTS)
        return False

    async def wait_for_answers(self, count: int) -> None:
        """Wait until ``count`` messages in all were answered or given up on."""
        while len(self.replies) + len(self.lost) < count:
            self._answered.clear()
            await self._answered.wait()


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


async def _within(clock: Clock, what: str, step: Any) -> None:
    """Await ``step`` for at most :data:`STEP_TIMEOUT` seconds of ``clock``."""
    try:
        async with timeout_after(clock, STEP_TIMEOUT):
            await step
    except TimeoutError:
        raise TimeoutError(f"agent bot: no {what} within {STEP_TIMEOUT:g} s") from None


async def _converse(sim: Simulator, bot: AgentBot, clock: Clock) -> None:
    """Three messages, a dropped socket, three more: each step bounded on ``clock``."""
    for round_ in (1, 2):
        await _within(clock, "subscription", bot.subscribed.wait())
        for i in range(3):
            await consumer_says(sim, f"hello {round_}.{i + 1}")
        await _within(clock, f"answers to round {round_}", bot.wait_for_answers(3 * round_))
        if round_ == 1:
            print(f"answered {len(bot.replies)}; the server drops the socket")
            bot.subscribed.clear()
            await sim.sockets.drop_all()
    print(f"answered {len(bot.replies)} after {bot.subscriptions} subscriptions")


async def main(
    clock: Clock | None = None,
    time_scale: float = 0.01,
    plan: FaultPlan | Sequence[FaultRule] | None = None,
) -> AgentBot:
    """Run the bot against the simulator: three messages, a dropped socket, three more.

    ``plan``: more faults for the simulator to inject (its ``Simulator(plan=...)``)."""
    clock = clock or RealClock()
    async with Simulator(clock=clock, plan=plan) as sim:
        account = sim.account.id
        domains = CsdsDomains(account, csds_host=sim.host, scheme="http")
        auth = UserLogin(account, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False)
        bot = AgentBot(me=f"{account}.brand", clock=clock)
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
            try:
                # If the answering task fails, the group cancels the conversation and raises
                # its error; when the conversation ends, the task is cancelled.
                async with asyncio.TaskGroup() as tasks:
                    answering = tasks.create_task(bot.run(ws), name="agent-bot")
                    try:
                        await _converse(sim, bot, clock)
                    finally:
                        answering.cancel()
            finally:
                await ws.close()
        print(f"the server received: {[m.text for m in sim.sockets.published]}")
    return bot


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="  %(name)s: %(message)s")
    asyncio.run(main())
