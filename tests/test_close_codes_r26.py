"""ClosePolicy's verdict on a dead peer says why the peer was taken for dead."""

from __future__ import annotations

from le_transport.policies.close_codes import CloseAction, ClosePolicy, Disconnect


def test_a_connection_not_ready_in_time_is_reconnected_for_that_reason() -> None:
    # The socket's reconnect line said "keepalive unanswered" for a connection that never sent
    # a keepalive: it was ended by ready_timeout, which its lost line said.
    verdict = ClosePolicy().classify(Disconnect.dead_peer(error="not ready within ready_timeout"))
    assert verdict.action is CloseAction.RECONNECT
    assert verdict.reason == "not ready within ready_timeout"


def test_an_unanswered_keepalive_is_still_said_as_such() -> None:
    verdict = ClosePolicy().classify(Disconnect.dead_peer(lifetime=12.0))
    assert verdict.action is CloseAction.RECONNECT
    assert verdict.reason == "keepalive unanswered"
