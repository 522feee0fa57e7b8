"""What the error attributes say they hold, and what they do hold: ``RecoveryFailed.last`` for
a call its deadline stopped while a round's re-logins failed. Virtual time."""

from __future__ import annotations

import copy
import pickle

import attr
import pytest
from yarl import URL

from le_transport import BackoffPolicy, RetryPolicy
from le_transport.errors import (
    ConnectionFailed,
    RecoveryFailed,
    RetriesExhausted,
    ServerStatusError,
)
from le_transport.events import StateEvent
from le_transport.providers import Credentials, StaticDomains
from le_transport.recovery import Recovery
from le_transport.testing import VirtualClock

# -- RecoveryFailed.last ------------------------------------------------------------------------


class _LoginDown:
    """An auth provider whose every re-login fails as the Login Service being down."""

    def __init__(self) -> None:
        self.relogins = 0

    async def credentials(self, method: str, url: URL) -> Credentials:
        return Credentials()

    async def invalidate(self, rejected: Credentials) -> None:
        return None

    async def relogin(self) -> Credentials:
        self.relogins += 1
        raise ConnectionFailed(f"login service down ({self.relogins})")

    async def close(self) -> None:
        return None


def _recovery(clock: VirtualClock, auth: _LoginDown, **policy: object) -> Recovery:
    return Recovery(
        domains=StaticDomains({}),
        auth=auth,
        clock=clock,
        policy=BackoffPolicy(first=20, factor=2, cap=1000, jitter=0, floor=15, **policy),  # type: ignore[arg-type]
        request_policy=RetryPolicy(),
    )


def _own_failure() -> RetriesExhausted:
    return RetriesExhausted("the call's own", last=ServerStatusError("503", status=503))


async def test_recovery_failed_last_is_what_its_docstring_says_for_each_way_it_ends() -> None:
    clock = VirtualClock()
    own = _own_failure()

    async def call() -> None:
        raise own

    # The loop gives up (its attempts spent): the last re-login's failure.
    auth = _LoginDown()
    with pytest.raises(RecoveryFailed) as gave_up:
        await _recovery(clock, auth, max_attempts=2).run(call)
    assert isinstance(gave_up.value.last, ConnectionFailed)
    assert auth.relogins == 2
    # The call's deadline stops it while the round goes on: the call's own failure, though
    # two re-logins failed before it stopped waiting (20 s, then 40 s; the next 80 s is past).
    auth = _LoginDown()
    start = clock.now()
    with pytest.raises(RecoveryFailed) as stopped:
        await _recovery(clock, auth).run(call, until=start + 100.0)
    assert stopped.value.last is own
    assert auth.relogins == 2
    # The docstring says both: it said "the last re-login's failure" whenever one failed.
    doc = " ".join((RecoveryFailed.__doc__ or "").split())
    assert "deadline" in doc
    assert "whatever the round's re-logins failed with" in doc


# -- StateEvent details: __init__ called again ------------------------------------------------


def test_state_event_details_refuse_being_filled_again_through_init() -> None:
    """``details.__init__(...)`` is dict's own fill: called again on an event's details, it
    wrote into them past every refused method (the next hook saw the change)."""
    event = StateEvent("relogin_scheduled", "svc", {"attempt": 1})
    empty = StateEvent("open", "socket")
    with pytest.raises(TypeError, match="read-only"):
        event.details.__init__({"attempt": 99})  # type: ignore[misc]
    with pytest.raises(TypeError, match="read-only"):
        empty.details.__init__(attempt=99)  # type: ignore[misc]
    assert event.details == {"attempt": 1}
    assert empty.details == {}
    # Still made, copied and pickled as before, and read-only after each.
    for again in (
        copy.copy(event.details),
        copy.deepcopy(event.details),
        pickle.loads(pickle.dumps(event.details)),
        pickle.loads(pickle.dumps(event)).details,
    ):
        assert again == {"attempt": 1}
        with pytest.raises(TypeError, match="read-only"):
            again.__init__({"attempt": 2})  # type: ignore[misc]
        with pytest.raises(TypeError, match="read-only"):
            again["attempt"] = 2  # type: ignore[index]
    assert attr.asdict(event, retain_collection_types=True)["details"] == {"attempt": 1}
