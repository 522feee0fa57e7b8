"""The examples run against the simulator, as a user would run them."""

from __future__ import annotations

from examples import agent_bot, users_api
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
