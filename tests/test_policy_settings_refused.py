"""Settings that contradict a policy's own rules, refused at construction.

- VirtualClock: ``autojump`` a bool, ``idle_rounds`` an int >= 1, ``autojump_threshold`` a
  finite number >= 0 (``inf`` hung every sleep; ``"no"`` turned autojump on).
- SharedSession: ``clock`` a Clock instance (``time.monotonic`` failed at the first wait),
  ``poll`` no longer than ``max_poll``; ``forget`` a compare-and-delete of the entry it read.
- RetryPolicy.pauses an ordered sequence (a set was taken in hash order, a dict by its keys).
- ClosePolicy: no 429 in ``reauth_statuses``, no 1006 in ``reauth_codes``; codes in range.
- Classifier: no status both retried and final (a set left at its default gives way);
  statuses in range.
"""

from __future__ import annotations

import copy
import itertools
import json
import pickle
import time
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from le_transport.errors import ConfigurationError
from le_transport.policies import (
    CircuitBreaker,
    Classifier,
    CloseAction,
    ClosePolicy,
    Disconnect,
    Outcome,
    RetryPolicy,
    Verdict,
)
from le_transport.policies.retry import MAX_PAUSES
from le_transport.state import MemoryStore, SharedSession, state_key
from le_transport.state.store import Entry
from le_transport.testing import VirtualClock

# -- VirtualClock ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"autojump": "no"}, r"VirtualClock\.autojump must be bool, got str"),
        ({"autojump": 1}, r"VirtualClock\.autojump must be bool, got int"),
        ({"autojump": None}, r"VirtualClock\.autojump must be bool"),
        ({"idle_rounds": 0}, r"VirtualClock\.idle_rounds must be an int >= 1, got 0"),
        ({"idle_rounds": -5}, r"VirtualClock\.idle_rounds must be an int >= 1, got -5"),
        ({"idle_rounds": 2.5}, r"VirtualClock\.idle_rounds must be an int >= 1, got 2\.5"),
        ({"idle_rounds": "3"}, r"VirtualClock\.idle_rounds must be an int >= 1, got str"),
        ({"idle_rounds": True}, r"VirtualClock\.idle_rounds must be an int >= 1, got bool"),
        ({"autojump_threshold": float("inf")}, r"autojump_threshold must be a finite .* got inf"),
        ({"autojump_threshold": float("nan")}, r"autojump_threshold must be a finite .* got nan"),
        ({"autojump_threshold": -1.0}, r"autojump_threshold must be a finite .* >= 0, got -1"),
        ({"autojump_threshold": 10**400}, r"autojump_threshold must be a finite"),
        ({"autojump_threshold": "0.1"}, r"autojump_threshold must be a finite .* got str"),
        ({"autojump_threshold": True}, r"autojump_threshold must be a finite .* got bool"),
    ],
)
def test_a_virtual_clock_refuses_bad_settings_naming_the_field(
    kwargs: dict[str, Any], match: str
) -> None:
    """Refused at construction: before, ``autojump_threshold=inf`` made ``clock.sleep(1)``
    hang for ever, ``autojump="no"`` jumped anyway, and ``idle_rounds="3"`` raised TypeError."""
    with pytest.raises(ConfigurationError, match=match):
        VirtualClock(**kwargs)


async def test_a_virtual_clock_still_takes_good_settings() -> None:
    for clock in (
        VirtualClock(idle_rounds=1),
        VirtualClock(idle_rounds=5, autojump_threshold=0),
        VirtualClock(autojump_threshold=0.001),
    ):
        await clock.sleep(5)
        assert clock.now() == 5.0
    manual = VirtualClock(autojump=False)
    manual.advance(2)
    assert manual.now() == 2.0


# -- SharedSession -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clock", "match"),
    [
        (time.monotonic, r"SharedSession\.clock must be Clock or None, got builtin_function"),
        (VirtualClock, r"SharedSession\.clock must be a Clock, got the class VirtualClock"),
        ("clock", r"SharedSession\.clock must be Clock or None, got str"),
    ],
    ids=["time.monotonic", "the class", "str"],
)
def test_a_shared_session_refuses_what_is_no_clock(clock: object, match: str) -> None:
    """``clock=time.monotonic`` was taken, and the first wait for another process's token
    failed with AttributeError (no ``sleep``); MemoryStore refuses it alike."""
    with pytest.raises(ConfigurationError, match=match):
        SharedSession(MemoryStore(), account="1", user="bot", clock=clock)  # type: ignore[arg-type]


def test_a_shared_session_refuses_a_poll_longer_than_max_poll() -> None:
    """poll=10, max_poll=0.5 was taken, and a waiter's first wait was 10 s."""
    with pytest.raises(
        ConfigurationError, match=r"SharedSession\.poll \(10\) .* max_poll \(0\.5\)"
    ):
        SharedSession(MemoryStore(), account="1", user="bot", poll=10, max_poll=0.5)
    SharedSession(MemoryStore(), account="1", user="bot", poll=0.5, max_poll=0.5)
    SharedSession(MemoryStore(), account="1", user="bot", clock=VirtualClock())
    # Only a max_poll given is held to it: asking for slower polling alone raises the ceiling.
    slower = SharedSession(MemoryStore(), account="1", user="bot", poll=1.0)
    assert (slower._poll, slower._max_poll) == (1.0, 1.0)
    default = SharedSession(MemoryStore(), account="1", user="bot")
    assert (default._poll, default._max_poll) == (0.05, 0.5)


def _payload(version: str) -> str:
    return json.dumps({"value": "token-" + version, "version": version, "life": 600.0})


class _RacingStore(MemoryStore):
    """A store where another process stores a new session right after the next read."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.race_with: str | None = None

    async def get(self, key: str) -> Entry | None:
        entry = await super().get(key)
        if self.race_with is not None:
            await super().set(key, self.race_with, ttl=600.0)
            self.race_with = None
        return entry


async def test_forget_keeps_a_session_stored_between_its_read_and_its_delete() -> None:
    """forget() read the stale token, then deleted the key unconditionally: a new session
    another process stored in between was dropped, and the fleet logged in again."""
    store = _RacingStore(VirtualClock())
    key = state_key("1", "session", "bot")
    shared = SharedSession(store, account="1", user="bot")
    await store.set(key, _payload("old"), ttl=600.0)
    store.race_with = _payload("new")
    await shared.forget("old")
    cur = await shared.current()
    assert cur is not None
    assert cur.version == "new"
    # Without a race, the rejected version is still dropped.
    await shared.forget("new")
    assert await shared.current() is None


# -- RetryPolicy.pauses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pauses",
    [{5, 10, 15, 40}, frozenset({5.0}), {5: "x", 10: "y"}, {5: 1}.keys(), 5, "5", b"5"],
    ids=["set", "frozenset", "dict", "dict keys", "number", "str", "bytes"],
)
def test_retry_pauses_must_be_in_order(pauses: Any) -> None:
    """{5, 10, 15, 40} became (40.0, 10.0, 5.0, 15.0): the first retry waited 40 s."""
    with pytest.raises(ConfigurationError, match=r"RetryPolicy\.pauses must be seconds in order"):
        RetryPolicy(pauses=pauses)


def test_retry_pauses_still_take_lists_tuples_and_other_ordered_iterables() -> None:
    assert RetryPolicy(pauses=[15, 5, 10]).pauses == (15.0, 5.0, 10.0)
    assert RetryPolicy(pauses=(0.05, 0.1)).pauses == (0.05, 0.1)
    assert RetryPolicy(pauses=range(3)).pauses == (0.0, 1.0, 2.0)
    assert RetryPolicy(pauses=()).pauses == ()
    # An iterable with an order keeps it: read from the environment, a generator, a view.
    assert RetryPolicy(pauses=map(float, ["5", "10", "15"])).pauses == (5.0, 10.0, 15.0)
    assert RetryPolicy(pauses=(p * 2 for p in (1, 2))).pauses == (2.0, 4.0)
    assert RetryPolicy(pauses={"a": 3, "b": 1}.values()).pauses == (3.0, 1.0)


# -- ClosePolicy -------------------------------------------------------------------------------


@pytest.mark.parametrize("statuses", [{401, 429}, {429}])
def test_a_rate_limit_cannot_be_made_a_reauthentication(statuses: set[int]) -> None:
    """reauth_statuses={401, 429} made a 429 upgrade REAUTHENTICATE, against the fixed rule
    that a rate limit never escalates to a re-login."""
    with pytest.raises(ConfigurationError, match=r"ClosePolicy\.reauth_statuses cannot hold 429"):
        ClosePolicy(reauth_statuses=statuses)


def test_1006_cannot_be_a_reauth_code() -> None:
    """A 1006 always arrives as an abnormal drop, never as a close frame: in reauth_codes it
    could never match (fail_codes refuses it for the same reason)."""
    with pytest.raises(ConfigurationError, match=r"ClosePolicy\.reauth_codes cannot hold 1006"):
        ClosePolicy(reauth_codes={4401, 1006})


@pytest.mark.parametrize(
    ("field", "codes", "match"),
    [
        ("reauth_codes", {4401, 5000}, r"WebSocket close codes from 1000 to 4999, got \[5000\]"),
        ("reauth_codes", {999}, r"reauth_codes must hold WebSocket close codes"),
        ("fail_codes", {-1, 99999}, r"fail_codes must hold .* got \[-1, 99999\]"),
        ("reauth_statuses", {401, 4401}, r"HTTP statuses from 100 to 999, got \[4401\]"),
        ("reauth_statuses", {99}, r"reauth_statuses must hold HTTP statuses"),
    ],
)
def test_close_policy_codes_must_be_in_range(field: str, codes: set[int], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ClosePolicy(**{field: codes})  # type: ignore[arg-type]


def test_close_policy_defaults_and_edges_are_still_valid() -> None:
    policy = ClosePolicy()
    assert policy.classify(Disconnect.handshake_rejected(429)).action is CloseAction.RECONNECT
    ClosePolicy(reauth_codes={1000, 4999}, reauth_statuses={400, 499}, fail_codes={1008})


# -- Classifier --------------------------------------------------------------------------------


def test_a_status_cannot_be_both_retried_and_final() -> None:
    """Classifier(retry_statuses={503}, final_statuses={503}) was taken and final silently
    won: the 503 meant to be retried never was."""
    with pytest.raises(ConfigurationError, match=r"share \[409, 503\]"):
        Classifier(retry_statuses={503, 409, 429}, final_statuses={503, 409})
    # A set left at its default gives way to the one given: the default retried 429 made
    # final, the default final 451 retried.
    classifier = Classifier(final_statuses={429})
    assert classifier.classify(Outcome.response(429)) is Verdict.FAIL
    classifier = Classifier(retry_statuses={451})
    assert classifier.classify(Outcome.response(451)) is Verdict.RETRY
    classifier = Classifier(retry_statuses=(), final_statuses={429, 451})
    assert classifier.classify(Outcome.response(429)) is Verdict.FAIL
    # Given explicitly, even as the defaults are, two sets that share a status are refused.
    with pytest.raises(ConfigurationError, match=r"share \[429\]"):
        Classifier(retry_statuses={429}, final_statuses={429})
    with pytest.raises(ConfigurationError, match=r"share \[451\]"):
        Classifier(retry_statuses={451}, final_statuses={451})


def test_a_set_left_out_gives_way_without_being_rewritten() -> None:
    """The fields keep what was given: evolving one set later finds the other as it was (a
    default rewritten to make way stayed rewritten, and 429 went on failing)."""
    made_final = Classifier(final_statuses={429})
    assert made_final.retry_statuses == frozenset({429})
    back = attrs.evolve(made_final, final_statuses={451})
    assert back.classify(Outcome.response(429)) is Verdict.RETRY
    assert back == Classifier()
    with pytest.raises(ConfigurationError, match=r"share \[429\]"):
        attrs.evolve(made_final, retry_statuses={429})
    made_retried = Classifier(retry_statuses={451})
    assert (
        attrs.evolve(made_retried, retry_statuses={429}).classify(Outcome.response(451))
        is Verdict.FAIL
    )


@pytest.mark.parametrize(
    ("field", "statuses", "bad"),
    [
        ("final_statuses", {503, 4510, -1}, r"\[-1, 4510\]"),
        ("retry_statuses", {1000}, r"\[1000\]"),
        ("retry_statuses", {99}, r"\[99\]"),
        ("final_statuses", {10**30}, r"\[1000000000000000000000000000000\]"),
    ],
)
def test_classifier_statuses_must_be_http_statuses(
    field: str, statuses: set[int], bad: str
) -> None:
    """4510 (a typo) or -1 were taken and could never match a status."""
    with pytest.raises(
        ConfigurationError, match=rf"Classifier\.{field} must hold HTTP statuses .* got {bad}"
    ):
        Classifier(**{field: statuses})


def test_classifier_defaults_and_edges_are_still_valid() -> None:
    assert Classifier().classify(Outcome.response(429)) is Verdict.RETRY
    Classifier(retry_statuses={100, 409}, final_statuses={501, 599})
    # Three digits: aiohttp delivers a 999, which a client treats as a 5xx (RFC 9110 15).
    assert Classifier(final_statuses={999}).classify(Outcome.response(999)) is Verdict.FAIL
    assert Classifier(retry_statuses={429, 999}).classify(Outcome.response(999)) is Verdict.RETRY


@pytest.mark.parametrize(
    "copy_of",
    [lambda c: pickle.loads(pickle.dumps(c)), copy.deepcopy, copy.copy],
    ids=["pickle", "deepcopy", "copy"],
)
@pytest.mark.parametrize(
    "classifier",
    [Classifier(), Classifier(final_statuses={429}), Classifier(retry_statuses={451})],
    ids=repr,
)
def test_a_set_left_out_stays_left_out_through_copies(
    classifier: Classifier, copy_of: Callable[[Classifier], Classifier]
) -> None:
    """Pickled or deep-copied, a default became a set given: evolving the other set then
    refused an overlap that the original took."""
    copied = copy_of(classifier)
    assert copied == classifier
    assert hash(copied) == hash(classifier)
    assert repr(copied) == repr(classifier)
    for status in (429, 451, 503):
        outcome = Outcome.response(status)
        assert copied.classify(outcome) is classifier.classify(outcome)
    if classifier.final_statuses == frozenset({451}):
        assert (
            attrs.evolve(copied, final_statuses={429}).classify(Outcome.response(429))
            is Verdict.FAIL
        )


@pytest.mark.parametrize(
    "classifier",
    [
        Classifier(),
        Classifier(final_statuses={429}),
        Classifier(retry_statuses={451}),
        Classifier(retry_statuses={409}, final_statuses={501}),
    ],
    ids=repr,
)
def test_a_classifiers_repr_is_what_was_given_and_evaluates_to_it(classifier: Classifier) -> None:
    """A default shown beside the set it gave way to read as an overlap, refused when
    evaluated: Classifier(retry_statuses=frozenset({429}), final_statuses=frozenset({429}))."""
    assert eval(repr(classifier), {"Classifier": Classifier}) == classifier


@pytest.mark.parametrize("status", [600, 799, 999])
def test_a_status_above_599_is_a_5xx(status: int) -> None:
    """RFC 9110 15: a client treats a status it does not know as the x00 of its class, and
    one above 599 as a 5xx; the classifier failed it, the breaker did not count it."""
    assert Classifier().classify(Outcome.response(status)) is Verdict.RETRY
    assert CircuitBreaker.counts_as_failure(Outcome.response(status))


def test_endless_pauses_are_refused_not_read_for_ever() -> None:
    with pytest.raises(ConfigurationError, match=r"at most 10,000 pauses"):
        RetryPolicy(pauses=itertools.repeat(5.0))
    assert len(RetryPolicy(pauses=itertools.repeat(5.0, MAX_PAUSES)).pauses) == MAX_PAUSES
