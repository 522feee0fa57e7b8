"""Plans refused when they are made: a rule that would be accepted and do less than it says.

``after_messages`` counts a socket's messages before a session fault strikes (unit
``ws_session``). On unit ``ws_message`` the fault strikes on the matched message itself, and the
count was accepted and silently ignored: ``WsDrop(after_messages=3)`` on ``ws_message`` dropped
the connection at the first matched message. It is refused, naming what to use instead.
"""

from __future__ import annotations

import pytest

from le_transport.chaos import (
    FaultInjector,
    FaultPlan,
    FaultRule,
    FaultRun,
    Match,
    WsClose,
    WsDrop,
    WsSilence,
)
from le_transport.chaos.plan import fault_to_dict
from le_transport.errors import ConfigurationError
from le_transport.testing.simulator import Simulator

COUNTED = [WsClose(4401, after_messages=3), WsDrop(after_messages=1), WsSilence(after_messages=2)]


@pytest.mark.parametrize("fault", COUNTED, ids=lambda f: f.kind)
def test_after_messages_on_a_ws_message_rule_is_refused_naming_ws_session(
    fault: WsClose | WsDrop | WsSilence,
) -> None:
    said = (
        rf"rule 'm': {type(fault).__name__}\(after_messages={fault.after_messages}\) is not "
        r"counted on unit 'ws_message'.*put the rule on unit 'ws_session'"
    )
    with pytest.raises(ConfigurationError, match=said):
        FaultRule("m", fault, unit="ws_message", match=Match(path=".GetClock"))
    # In a sequence too, wherever it stands.
    with pytest.raises(ConfigurationError, match=said):
        FaultRule("m", sequence=[None, WsDrop(), fault], unit="ws_message")
    # And from a plan's JSON form, which is how a plan file reaches the simulator's CLI.
    as_json = {"rules": [{"id": "m", "unit": "ws_message", "fault": fault_to_dict(fault)}]}
    with pytest.raises(ConfigurationError, match=said):
        FaultPlan.from_dict(as_json)


@pytest.mark.parametrize("fault", COUNTED, ids=lambda f: f.kind)
def test_the_same_fault_is_taken_on_ws_session_and_without_the_count_on_ws_message(
    fault: WsClose | WsDrop | WsSilence,
) -> None:
    session = FaultRule("s", fault, unit="ws_session")
    assert session.fault == fault
    uncounted = type(fault)()
    message = FaultRule("m", uncounted, unit="ws_message", match=Match(path=".GetClock"))
    run = FaultRun(FaultPlan(rules=[session, message]))
    decided = run.decide("ws_message", method="WS", path=".GetClock")
    assert decided is not None
    assert decided.fault == uncounted


def test_the_refusal_reaches_every_consumer_of_a_plan_before_anything_runs() -> None:
    # A rule is checked when it is made, so neither consumer can be handed one: the plan's
    # own constructor refuses it first.
    with pytest.raises(ConfigurationError, match="unit 'ws_session'"):
        FaultInjector([FaultRule("m", WsDrop(after_messages=2), unit="ws_message")])
    with pytest.raises(ConfigurationError, match="unit 'ws_session'"):
        Simulator(plan=[FaultRule("m", WsSilence(after_messages=1), unit="ws_message")])
