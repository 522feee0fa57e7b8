"""The examples run against the simulator, as a user would run them."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from examples import agent_bot, users_api
from le_transport import Engine
from le_transport.chaos import FaultRule, Match, Schedule, WsDrop
from le_transport.testing import VirtualClock


async def test_users_api_example_lists_users_through_two_503s(clock: VirtualClock) -> None:
    users = await users_api.main(clock=clock, time_scale=1.0)
    assert [u.login_name for u in users] == ["agent1"]
    assert clock.now() >= 15.0  # the guide's 5 and 10 s pauses, on the virtual clock


async def test_agent_bot_answers_every_message_and_resubscribes_after_a_drop(
    clock: VirtualClock,
) -> None:
    bot = await agent_bot.main(clock=clock, time_scale=1.0)
    assert bot.replies == [f"you said: hello {r}.{i}" for r in (1, 2) for i in (1, 2, 3)]
    assert bot.subscriptions == 2


#: The reviewer's fault: the server drops the socket instead of answering the second reply.
DROP_ON_REPLY = FaultRule(
    "drop-on-reply",
    WsDrop(after_messages=0),
    unit="ws_message",
    match=Match(path=".ams.ms.PublishEvent"),
    schedule=Schedule(skip_first=1, fail_next=1),
)


async def test_agent_bot_resends_a_reply_lost_with_its_connection_instead_of_hanging(
    clock: VirtualClock,
) -> None:
    # The answering task died of the SocketClosed and main polled for replies for ever.
    async with asyncio.timeout(120):  # a guard only: the run takes well under a second
        bot = await agent_bot.main(clock=clock, time_scale=1.0, plan=[DROP_ON_REPLY])
    assert bot.replies == [f"you said: hello {r}.{i}" for r in (1, 2) for i in (1, 2, 3)]
    assert bot.lost == []
    assert bot.resent == 1
    assert bot.subscriptions == 3  # after the drop in flight, and after the server's drop


async def test_agent_bot_fails_at_once_when_its_answering_task_fails(
    clock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: agent_bot.AgentBot, ws: object, dialog: str, reply: str) -> bool:
        raise RuntimeError("a bug in the bot")

    monkeypatch.setattr(agent_bot.AgentBot, "_publish", broken)
    async with asyncio.timeout(120):
        with pytest.raises(ExceptionGroup) as failed:
            await agent_bot.main(clock=clock, time_scale=1.0)
    assert failed.group_contains(RuntimeError, match="a bug in the bot")
    assert clock.now() < agent_bot.STEP_TIMEOUT  # the task's failure, not the step's timeout


async def test_users_api_example_refuses_a_user_id_that_is_not_digits() -> None:
    # "../../x" went into the path and reached another endpoint, with the bearer.
    sent: list[str] = []

    class Recording:
        async def request(self, method: str, service: str, path: str, **kw: object) -> None:
            sent.append(path)

    client = users_api.UsersClient(cast(Engine, Recording()), "123")
    for user_id in ("../../x", "12/../34", "", " 1", "1e3", "²", 999, None):
        # An int or None raised a TypeError of the message's own making.
        with pytest.raises(ValueError, match="a user id is decimal digits"):
            await client.get(user_id)  # type: ignore[arg-type]
    assert sent == []
