"""An engine's HTTP keepalive run whose request hangs ends with the request's own give-up.

The engine gives a run's request the keepalive's timeout as its deadline, so that the engine's
schedule ends it with what the service did; the run's own bound, the backstop for an action
that never stops, ended at the same instant and was taken first: a service that hangs was a
bare "TimeoutError: timed out after 10.0 s" at every run, where the request said the deadline
passed in its attempt, as the keepalive's handled WARNING. The backstop now waits a moment
longer than the request's deadline.
"""

from __future__ import annotations

import logging

import pytest

from le_transport.chaos import FaultRule, Hang, Match
from le_transport.policies import SERVER_CHAT_API_CHAT_INFO
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_keepalive_r27 import _chat_engine, _chat_info
from tests.test_providers import sim

__all__ = ["sim"]


async def test_a_hanging_chat_info_run_ends_with_its_requests_deadline_not_the_runs_timer(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="le_transport")
    sim.faults.add(FaultRule("hang", Hang(), match=Match(method="GET", path=_chat_info(sim))))
    async with _chat_engine(sim, clock) as engine:
        task = engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO,
            "agentVep",
            fields={"account": sim.account.id, "chat_id": "c1"},
        )
        await clock.sleep(75)
        assert (task.runs, task.failures) == (2, 2)
        assert task.running
        await task.close()
    failed = [r.getMessage() for r in caplog.records if r.name == "le_transport.sockets"]
    assert len(failed) == 2
    for message in failed:
        assert "keepalive retrieve chat information failed" in message
        assert "TimeoutError" not in message
        assert "DeadlineExceeded" in message
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
