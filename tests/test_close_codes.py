"""Close-code classification: what each way a socket can end means, as a pure decision."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from le_transport import ConfigurationError
from le_transport.policies import (
    REAUTH_CLOSE_CODES,
    CloseAction,
    ClosePolicy,
    CloseVerdict,
    Disconnect,
    DisconnectKind,
)

POLICY = ClosePolicy()


def test_a_close_by_the_caller_stops() -> None:
    assert POLICY.classify(Disconnect.by_caller()).action is CloseAction.STOP


@pytest.mark.parametrize("code", [4401, 4407, 1011])
def test_4401_4407_and_1011_mean_reauthenticate_first(code: int) -> None:
    verdict = POLICY.classify(Disconnect.close_frame(code, lifetime=100.0))
    assert verdict.action is CloseAction.REAUTHENTICATE
    assert str(code) in verdict.reason


def test_http_401_on_the_upgrade_means_reauthenticate_first() -> None:
    verdict = POLICY.classify(Disconnect.handshake_rejected(401))
    assert verdict.action is CloseAction.REAUTHENTICATE


@pytest.mark.parametrize("code", [1000, 1001, 1012, 1013, 1014, 4000, 4999])
def test_other_close_codes_reconnect(code: int) -> None:
    assert POLICY.classify(Disconnect.close_frame(code, 100.0)).action is CloseAction.RECONNECT


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_upgrade_refused_with_429_or_5xx_reconnects(status: int) -> None:
    assert POLICY.classify(Disconnect.handshake_rejected(status)).action is CloseAction.RECONNECT


@pytest.mark.parametrize("status", [400, 403, 404, 451])
def test_upgrade_refused_with_another_4xx_fails_for_good(status: int) -> None:
    verdict = POLICY.classify(Disconnect.handshake_rejected(status))
    assert verdict.action is CloseAction.FAIL


def test_a_normal_server_close_stops_when_configured_so() -> None:
    policy = ClosePolicy(reconnect_on_server_close=False)
    assert policy.classify(Disconnect.close_frame(1000, 5.0)).action is CloseAction.STOP
    assert policy.classify(Disconnect.close_frame(1006, 5.0)).action is CloseAction.RECONNECT


def test_a_close_frame_with_1006_is_an_abnormal_drop() -> None:
    assert Disconnect.close_frame(1006).kind is DisconnectKind.ABNORMAL


def test_third_fast_1006_in_a_row_escalates_to_reauthentication() -> None:
    run = 0
    actions = []
    for _ in range(3):
        verdict = POLICY.classify(Disconnect.abnormal(lifetime=0.5), run)
        run = verdict.fast_drops
        actions.append(verdict.action)
    assert actions == [CloseAction.RECONNECT, CloseAction.RECONNECT, CloseAction.REAUTHENTICATE]
    assert run == 0


def test_a_slow_1006_or_another_close_ends_the_fast_drop_run() -> None:
    assert POLICY.classify(Disconnect.abnormal(lifetime=600.0), 2).fast_drops == 0
    assert POLICY.classify(Disconnect.close_frame(1001, 0.1), 2).fast_drops == 0
    assert POLICY.classify(Disconnect.dead_peer(0.1), 2).fast_drops == 0


def test_a_failed_connect_keeps_the_fast_drop_run() -> None:
    verdict = POLICY.classify(Disconnect.connect_failed("ClientConnectorError"), 2)
    assert verdict.action is CloseAction.RECONNECT
    assert verdict.fast_drops == 2


def test_a_dead_peer_reconnects() -> None:
    assert POLICY.classify(Disconnect.dead_peer(40.0)).action is CloseAction.RECONNECT


def test_a_resubscribe_answered_429_reconnects_after_a_second_without_escalating() -> None:
    failed = Disconnect.setup_failed("SocketRequestError", code=429, lifetime=0.1)
    verdict = POLICY.classify(failed, 2)
    assert verdict.action is CloseAction.RECONNECT
    # LiveEngage asks for a second at least after a 429; a re-login would only add load.
    assert verdict.min_pause == 1.0
    assert not verdict.escalates
    # Not a transport drop: the run of fast 1006s neither grows nor resets.
    assert verdict.fast_drops == 2
    assert "answered 429" in verdict.reason


@pytest.mark.parametrize(("code", "error"), [(500, "SocketRequestError"), (None, "KeyError")])
def test_another_on_connect_failure_reconnects_on_the_backoff_and_may_escalate(
    code: int | None, error: str
) -> None:
    verdict = POLICY.classify(Disconnect.setup_failed(error, code=code, lifetime=0.1), 1)
    assert verdict.action is CloseAction.RECONNECT
    assert verdict.min_pause == 0.0
    assert verdict.escalates
    assert verdict.fast_drops == 1


def test_an_upgrade_answered_429_reconnects_after_a_second_without_escalating() -> None:
    # Also InitConnection answered 429: the dialer reports it as the same refused upgrade.
    verdict = POLICY.classify(Disconnect.handshake_rejected(429), 2)
    assert verdict.action is CloseAction.RECONNECT
    # The rule of a resubscribe answered 429: a second at least, and never a re-login.
    assert verdict.min_pause == 1.0
    assert not verdict.escalates
    assert "429" in verdict.reason


@pytest.mark.parametrize("status", [408, 425, 500, 503])
def test_an_upgrade_refused_otherwise_reconnects_on_the_backoff_and_may_escalate(
    status: int,
) -> None:
    verdict = POLICY.classify(Disconnect.handshake_rejected(status))
    assert verdict.action is CloseAction.RECONNECT
    assert verdict.min_pause == 0.0
    assert verdict.escalates


@pytest.mark.parametrize(
    ("code", "why"),
    [
        (1009, "a message over max_msg_size"),
        (1007, "a text frame that is not UTF-8"),
        (1002, "a frame that breaks the WebSocket protocol"),
        (1011, "LookupError making the connection ready"),
    ],
)
def test_a_connection_the_client_failed_reconnects_and_is_no_fast_drop(code: int, why: str) -> None:
    failed = Disconnect.failed_by_client(code, why, lifetime=0.1)
    assert failed.kind is DisconnectKind.FAILED_BY_CLIENT
    assert failed.describe() == f"failed by the client with code {code} ({why})"
    run = 0
    for _ in range(POLICY.fast_drop_run + 2):
        verdict = POLICY.classify(failed, run)
        run = verdict.fast_drops
        # However many in a row, however fast: never taken for a revoked token (1011 means
        # re-authenticate only in a close frame from the server).
        assert verdict.action is CloseAction.RECONNECT
        assert run == 0
    # Neither does it grow a run of fast 1006s already started, nor end it.
    assert POLICY.classify(failed, 2).fast_drops == 2


def test_a_resubscribe_answered_401_means_reauthenticate_first() -> None:
    failed = Disconnect.setup_failed("SocketRequestError", code=401, lifetime=0.1)
    assert POLICY.classify(failed).action is CloseAction.REAUTHENTICATE


@pytest.mark.parametrize(
    "kwargs", [{"fast_drop_run": 0}, {"fast_drop_run": True}, {"fast_drop_within": -1.0}]
)
def test_invalid_policy_is_refused_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        ClosePolicy(**kwargs)  # type: ignore[arg-type]


@given(code=st.integers(1000, 4999), lifetime=st.floats(0, 1e6), run=st.integers(0, 10))
def test_reauth_codes_always_reauthenticate_and_others_never_do(
    code: int, lifetime: float, run: int
) -> None:
    """A close frame re-authenticates exactly when its code is one of 4401, 4407, 1011 (a 1006
    frame only through the fast-drop run)."""
    verdict = POLICY.classify(Disconnect.close_frame(code, lifetime), run)
    if code in REAUTH_CLOSE_CODES:
        assert verdict.action is CloseAction.REAUTHENTICATE
    elif code == 1006:
        assert verdict.action in (CloseAction.RECONNECT, CloseAction.REAUTHENTICATE)
    else:
        assert verdict.action is CloseAction.RECONNECT


@given(
    lifetimes=st.lists(st.floats(0, 100), min_size=1, max_size=30),
    within=st.floats(0.5, 50),
    run_length=st.integers(1, 5),
)
def test_fast_1006_run_escalates_exactly_every_nth_consecutive_fast_drop(
    lifetimes: list[float], within: float, run_length: int
) -> None:
    """Re-authentication happens exactly when ``fast_drop_run`` fast 1006 drops came in a row
    (a slow one resets the count)."""
    policy = ClosePolicy(fast_drop_within=within, fast_drop_run=run_length)
    run = 0
    streak = 0
    for lifetime in lifetimes:
        verdict = policy.classify(Disconnect.abnormal(lifetime=lifetime), run)
        run = verdict.fast_drops
        streak = streak + 1 if lifetime < within else 0
        if streak == run_length:
            assert verdict.action is CloseAction.REAUTHENTICATE
            streak = 0
        else:
            assert verdict.action is CloseAction.RECONNECT
        assert run == streak


# -- close codes a caller makes final (ClosePolicy.fail_codes) ---------------------------------


def test_by_default_no_close_code_is_final_and_1008_and_1003_reconnect() -> None:
    # LiveEngage documents no final code: every code but the re-authentication ones reconnects.
    assert POLICY.fail_codes == frozenset()
    for code in (1003, 1008):
        assert POLICY.classify(Disconnect.close_frame(code, 5.0)).action is CloseAction.RECONNECT


@pytest.mark.parametrize("code", [1003, 1008, 4403])
def test_a_close_code_in_fail_codes_fails_for_good_with_a_clear_reason(code: int) -> None:
    policy = ClosePolicy(fail_codes=[1003, 1008, 4403])
    assert policy.fail_codes == frozenset({1003, 1008, 4403})
    verdict = policy.classify(Disconnect.close_frame(code, 5.0), 2)
    assert verdict.action is CloseAction.FAIL
    assert f"code {code}" in verdict.reason
    assert "fail_codes" in verdict.reason
    # Other codes keep their meaning.
    assert policy.classify(Disconnect.close_frame(1012, 5.0)).action is CloseAction.RECONNECT
    assert policy.classify(Disconnect.close_frame(4401, 5.0)).action is CloseAction.REAUTHENTICATE


def test_fail_codes_match_only_a_servers_close_frame() -> None:
    policy = ClosePolicy(fail_codes={1008})
    # 1008 sent by the client itself (a flood before InitConnection's answer) is no server
    # verdict on the connection: it reconnects.
    flood = Disconnect.failed_by_client(1008, "too much sent before InitConnection's answer")
    assert policy.classify(flood).action is CloseAction.RECONNECT
    assert policy.classify(Disconnect.abnormal(lifetime=100.0)).action is CloseAction.RECONNECT


def test_fail_codes_take_precedence_over_reconnect_on_server_close() -> None:
    policy = ClosePolicy(fail_codes={1001})
    assert policy.classify(Disconnect.close_frame(1001, 5.0)).action is CloseAction.FAIL
    assert policy.classify(Disconnect.close_frame(1000, 5.0)).action is CloseAction.RECONNECT


@pytest.mark.parametrize(
    ("fail_codes", "match"),
    [
        ("1008", "collection of int codes"),
        (1008, "collection of int codes"),
        ([True], "int codes"),
        ([1008.0], "int codes"),
        ({4401, 1008}, r"share \[4401\]"),
        ({1006}, "1006"),
    ],
)
def test_bad_fail_codes_are_refused_at_construction(fail_codes: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ClosePolicy(fail_codes=fail_codes)


def test_a_code_may_move_from_reauth_codes_to_fail_codes() -> None:
    policy = ClosePolicy(reauth_codes={4401, 4407}, fail_codes={1011})
    assert policy.classify(Disconnect.close_frame(1011, 5.0)).action is CloseAction.FAIL


@given(code=st.integers(1000, 4999), lifetime=st.floats(0, 1e6), run=st.integers(0, 10))
def test_a_close_frame_fails_exactly_when_its_code_is_in_fail_codes(
    code: int, lifetime: float, run: int
) -> None:
    policy = ClosePolicy(fail_codes={1003, 1008, 4000})
    verdict = policy.classify(Disconnect.close_frame(code, lifetime), run)
    assert (verdict.action is CloseAction.FAIL) == (code in policy.fail_codes)


# -- a refused upgrade's Retry-After -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "pause"),
    [
        (429, 30.0, 30.0),
        (503, 30.0, 30.0),
        (502, 7.5, 7.5),
        (503, 0.5, 0.5),
        (503, 3600.0, 60.0),  # cut to the ceiling
        (429, 1e300, 60.0),
    ],
)
def test_a_refused_upgrades_retry_after_sets_the_least_pause_up_to_the_ceiling(
    status: int, retry_after: float, pause: float
) -> None:
    failed = Disconnect.handshake_rejected(status, retry_after)
    verdict = POLICY.classify(failed, 2)
    assert verdict.action is CloseAction.RECONNECT
    assert verdict.min_pause == pause
    # The re-login loop would dial at once, against the server's ask.
    assert not verdict.escalates
    assert f"Retry-After {retry_after:g} s" in verdict.reason
    assert ("(cut to 60 s)" in verdict.reason) is (retry_after > 60)
    assert f"(Retry-After: {retry_after:g} s)" in failed.describe()


@pytest.mark.parametrize(
    ("status", "retry_after", "policy", "pause", "escalates"),
    [
        (503, 0.0, POLICY, 0.0, True),  # Retry-After: 0, or a date already past
        (502, 0.0, POLICY, 0.0, True),
        (503, 30.0, ClosePolicy(retry_after_ceiling=0), 0.0, True),  # ignored by the caller
        (429, 0.2, POLICY, 1.0, False),  # never under LiveEngage's second after a 429
        (429, 1.0, POLICY, 1.0, False),
        (429, 30.0, ClosePolicy(retry_after_ceiling=0), 1.0, False),
    ],
)
def test_a_retry_after_that_does_not_lengthen_the_pause_changes_nothing(
    status: int, retry_after: float, policy: ClosePolicy, pause: float, escalates: bool
) -> None:
    # Before: any Retry-After stopped the escalation to a re-login and showed in the reason,
    # even one asking for nothing (0 s, a past date) or one the caller's ceiling of 0 ignores.
    verdict = policy.classify(Disconnect.handshake_rejected(status, retry_after))
    assert verdict == policy.classify(Disconnect.handshake_rejected(status))
    assert verdict.action is CloseAction.RECONNECT
    assert verdict.min_pause == pause
    assert verdict.escalates is escalates
    assert "Retry-After" not in verdict.reason


@pytest.mark.parametrize("jitter", [0.0, 0.2, 0.5])
@given(
    delay=st.floats(min_value=0.0, max_value=1e4),
    floor=st.floats(min_value=0.0, max_value=1e4),
    rand=st.one_of(st.floats(min_value=0.0, max_value=1.0, exclude_max=True), st.just(0.0)),
)
def test_a_verdicts_pause_is_the_backoffs_or_its_least_pause_spread_by_the_jitter(
    jitter: float, delay: float, floor: float, rand: float
) -> None:
    verdict = CloseVerdict(CloseAction.RECONNECT, "r", min_pause=floor)
    pause = verdict.pause(delay, jitter=jitter, rand=rand)
    # Never under what the server asked nor under the backoff's delay, and never more than
    # the jitter's share over the larger of the two.
    assert pause >= max(delay, floor)
    assert pause <= max(delay, floor * (1 + jitter))
    assert pause == max(delay, floor * (1 + jitter * rand))


def test_a_least_pause_is_spread_over_the_draws_not_waited_exactly() -> None:
    # Before: max(backoff, Retry-After), so every socket a server refused at once with the
    # same Retry-After came back at the same instant whatever the backoff's jitter.
    verdict = POLICY.classify(Disconnect.handshake_rejected(503, 30.0))
    draws = [i / 8 for i in range(8)]
    pauses = [verdict.pause(0.1, jitter=0.2, rand=r) for r in draws]
    assert len(set(pauses)) == 8
    assert min(pauses) == 30.0
    assert max(pauses) < 36.0
    # No jitter (the caller's choice): exactly the ask; no least pause: the backoff's delay.
    assert verdict.pause(0.1, jitter=0.0, rand=0.9) == 30.0
    assert POLICY.classify(Disconnect.handshake_rejected(503)).pause(
        0.1, jitter=0.2, rand=0.9
    ) == pytest.approx(0.1)


def test_the_retry_after_ceiling_is_a_policy_option() -> None:
    policy = ClosePolicy(retry_after_ceiling=10.0)
    assert policy.classify(Disconnect.handshake_rejected(503, 30.0)).min_pause == 10.0
    # The floor after a 429 stays whatever the ceiling.
    assert ClosePolicy(retry_after_ceiling=0.0).classify(
        Disconnect.handshake_rejected(429, 30.0)
    ).min_pause == pytest.approx(1.0)
    with pytest.raises(ConfigurationError):
        ClosePolicy(retry_after_ceiling=-1.0)


@pytest.mark.parametrize(
    ("status", "action"), [(403, CloseAction.FAIL), (401, CloseAction.REAUTHENTICATE)]
)
def test_retry_after_does_not_change_a_refusal_that_is_not_reconnected(
    status: int, action: CloseAction
) -> None:
    verdict = POLICY.classify(Disconnect.handshake_rejected(status, 30.0))
    assert verdict.action is action
    assert verdict.min_pause == 0.0


def test_without_retry_after_a_refused_upgrade_keeps_its_rule() -> None:
    assert POLICY.classify(Disconnect.handshake_rejected(503)).min_pause == 0.0
    assert POLICY.classify(Disconnect.handshake_rejected(503)).escalates
    assert POLICY.classify(Disconnect.handshake_rejected(429)).min_pause == 1.0
