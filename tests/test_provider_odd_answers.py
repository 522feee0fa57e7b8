"""Credential services answering neither a refusal nor a success, and the fixes around them.

A provider knew two kinds of failed answer: a refusal (a 4xx: bad credentials, final) and an
outage (a 5xx, a reset, a timeout: waited out). A 3xx (provider calls never follow redirects)
or a 200 whose body is not the expected JSON (a proxy's HTML maintenance page) was taken for
bad credentials. Now it is an :class:`UnexpectedAnswer`: an ``AuthenticationError`` (code
catching that still catches it) whose verdict is ``RETRYABLE``.

- A re-login meeting a maintenance page is waited out by ``recover=True`` as a 503 is, and
  ``relogin()`` keeps the session it was to replace unless the login is refused.
- A token fetched early (inside the margin) meeting such an answer, or an auth-code callable
  failing on the network, keeps the still-valid token and puts the fetch off (no request per
  call); only once the token has expired is it the call's error.
- A keepalive refresh that failed transiently is tried again before the session's TTL runs
  out (it used to wait a whole interval from when the failed refresh gave up), and its
  give-up is a WARNING saying the session is kept.
- The recovery loop's "left running" note goes on a copy: the error it is raised for may be
  one object shared by many callers (a single-flight login's failure).
- A closed ``CsdsDomains`` starts no fetch; a JWT ``exp`` in milliseconds is not read as an
  expiry 50,000 years away.

Real simulator on loopback, virtual time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from le_transport import Engine, RetryPolicy
from le_transport._redact import Secret
from le_transport.chaos import MalformedBody, Status
from le_transport.errors import (
    AuthenticationError,
    BlockedError,
    ConnectionFailed,
    EngineClosed,
    LoginRejected,
    Repeat,
    RetriesExhausted,
    UnexpectedAnswer,
)
from le_transport.events import GiveUpEvent, StateEvent
from le_transport.middleware.context import CallContext, record_call
from le_transport.policies.backoff import BackoffPolicy
from le_transport.providers import ConsumerJwt, StaticDomains, UserLogin
from le_transport.providers._flight import SingleFlight
from le_transport.providers.login import (
    _KEEPALIVE_FALLBACK,
    MIN_SESSION_REFRESH_INTERVAL,
    LoginSession,
)
from le_transport.recovery import (
    Recovery,
    _own_copy,
    is_recoverable,
    is_setup_error,
    repeat_of,
)
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import PASSWORD
from tests.test_oauth2 import _early_fetch_done, _inside_the_margin, sentinel
from tests.test_providers import (
    ACCOUNT,
    USER,
    csds_for,
    jwt_with,
    learn_session_secrets,
    make_sim,
    sim,
    sim_engine,
)

__all__ = ["sim"]

LOGIN = f"/api/account/{ACCOUNT}/login"
REFRESH = f"/api/account/{ACCOUNT}/refresh"
USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"
TOKEN = f"/sentinel/api/account/{ACCOUNT}/app/token"
AUTHENTICATE = f"/api/account/{ACCOUNT}/authenticate"
CSDS = f"/api/account/{ACCOUNT}/service/baseURI.json"
SERVICE = "accountConfigReadOnly"
#: A body that is not the JSON expected: its words must never show in an error.
HTML = "<html><body>down for upkeep</body></html>"
#: An outer loop without jitter: 20, 40, 80 ... s.
RELOGIN = BackoffPolicy(first=20, factor=2, cap=1000, jitter=0, floor=15, max_attempts=6)

ODD_ANSWERS: list[Status | MalformedBody] = [
    Status(302, headers={"Location": "http://maintenance.invalid/"}),
    Status(200, body=HTML),
    MalformedBody(200, HTML),
    Status(200, body='{"status": "maintenance"}'),
]
ODD_IDS = ["302", "html-200", "malformed-200", "json-without-token"]


def _user_login(sim: Simulator, **options: Any) -> UserLogin:
    return UserLogin(ACCOUNT, USER, PASSWORD, domains=csds_for(sim), **options)


# -- the verdict ------------------------------------------------------------------------------


def test_an_unexpected_answer_is_an_authentication_error_the_recovery_loop_waits_out() -> None:
    err = UnexpectedAnswer("the Login Service answered 302", status=302, service="agentVep")
    assert isinstance(err, AuthenticationError)
    assert (err.status, err.service) == (302, "agentVep")
    assert repeat_of(err) is Repeat.RETRYABLE
    assert is_recoverable(err)
    assert not is_setup_error(err)
    # A refusal stays final.
    assert repeat_of(LoginRejected("refused", status=401)) is Repeat.FINAL
    assert repeat_of(AuthenticationError("401 again")) is Repeat.FINAL


# -- 1. a re-login meeting a maintenance page ---------------------------------------------------


@pytest.mark.parametrize("answer", [*ODD_ANSWERS, Status(503)], ids=[*ODD_IDS, "503"])
async def test_a_relogin_meeting_a_maintenance_page_is_waited_out_like_an_outage(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], answer: Any
) -> None:
    """The data API's outage spends the call's schedule; the recovery round's re-logins meet
    a maintenance page four times (a 503 on the Login Service for comparison, waited out
    already), then the Login Service is back: the call succeeds. It used to end at the first
    re-login with AuthenticationError, the working session dropped."""
    events: list[StateEvent] = []
    auth = _user_login(sim, keepalive=False)
    async with sim_engine(
        sim, clock, domains=auth._domains, auth=auth, events=events, recovery=RELOGIN
    ) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.faults.script("GET", USERS, [503] * 4)
        # Four re-logins fail: a 503 on each of their schedule's four attempts.
        sim.faults.script("POST", LOGIN, [answer] * (16 if answer == Status(503) else 4))
        resp = await engine.request("GET", SERVICE, USERS, recover=True)
        learn_session_secrets(auth, secret_values)
        assert resp.status == 200
        failed = [e for e in events if e.name == "relogin_failed"]
        expected = "RetriesExhausted" if answer == Status(503) else "UnexpectedAnswer"
        assert [e.details["error"] for e in failed] == [expected] * 4
        assert not [e for e in events if e.name == "gave_up"]
        assert auth.logins == 2


async def test_a_relogin_keeps_the_session_unless_the_login_is_refused(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """``relogin()`` drops the session it was to replace only when the login is refused: a
    maintenance page or an outage says nothing of it, and calls go on with it."""
    auth = _user_login(sim, keepalive=False, retry=RetryPolicy(pauses=()))
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        kept = auth.session
        assert kept is not None
        for answer in ODD_ANSWERS:
            sim.faults.script("POST", LOGIN, [answer])
            with pytest.raises(UnexpectedAnswer) as info:
                await auth.relogin()
            assert isinstance(info.value, AuthenticationError)
            assert (info.value.status, info.value.service) == (answer.code, "agentVep")
            assert "upkeep" not in str(info.value)
            learn_session_secrets(auth, secret_values)
            assert auth.session is kept
            # And it still serves calls.
            assert (await engine.request("GET", SERVICE, USERS)).status == 200
        sim.faults.script("POST", LOGIN, [Status(503)])
        with pytest.raises(RetriesExhausted):
            await auth.relogin()
        assert auth.session is kept
        assert (await engine.request("GET", SERVICE, USERS)).status == 200
        # A refusal drops it.
        sim.faults.script("POST", LOGIN, [Status(401)])
        with pytest.raises(LoginRejected):
            await auth.relogin()
        assert auth.session is None
        await engine.login()
        learn_session_secrets(auth, secret_values)
        sim.faults.script("POST", LOGIN, [Status(451)])
        with pytest.raises(BlockedError):
            await auth.relogin()
        assert auth.session is None


async def test_a_token_providers_relogin_keeps_the_token_unless_the_fetch_is_refused(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = sentinel(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        kept = auth.token
        sim.faults.script("POST", TOKEN, [Status(302)])
        with pytest.raises(UnexpectedAnswer):
            await auth.relogin()
        assert auth.token is kept
        sim.faults.script("POST", TOKEN, [Status(401)])
        with pytest.raises(LoginRejected):
            await auth.relogin()
        assert auth.token is None


# -- 2. a token fetched early meeting an odd answer, or its auth code failing -------------------


@pytest.mark.parametrize("answer", ODD_ANSWERS, ids=ODD_IDS)
async def test_an_early_fetch_meeting_an_odd_answer_keeps_the_valid_token_and_puts_it_off(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], answer: Any
) -> None:
    """Inside the margin, Sentinel answers a maintenance page: the token, valid for 59 s more,
    keeps serving every call, and the fetch is tried again after a pause, not on every call.
    Once it has expired, the odd answer is the call's error. It used to fail every call (an
    AuthenticationError) and send a token request for each."""
    events: list[StateEvent] = []
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        token = await _inside_the_margin(engine, auth, clock)
        learn_session_secrets(auth, secret_values)
        assert token.expires_at is not None
        sim.faults.script("POST", TOKEN, [answer] * 20)
        before = sim.count("POST", TOKEN)
        for _ in range(5):
            assert (await engine.request("GET", SERVICE, USERS)).status == 200
        await _early_fetch_done(auth)
        assert sim.count("POST", TOKEN) - before == 1
        assert auth.token is not None
        assert auth.token.generation == token.generation
        failed = [e for e in events if e.name == "refresh_failed"]
        assert [(e.details["error"], e.details["next"]) for e in failed] == [
            ("UnexpectedAnswer", "keep the current token")
        ]
        # Tried again after the pause, and put off again.
        await clock.sleep(float(failed[0].details["retry_in"]))
        assert (await engine.request("GET", SERVICE, USERS)).status == 200
        await _early_fetch_done(auth)
        assert sim.count("POST", TOKEN) - before == 2
        # Expired: nothing to fall back on, the answer is the call's error.
        await clock.sleep(token.expires_at - clock.now())
        with pytest.raises(UnexpectedAnswer) as info:
            await engine.request("GET", SERVICE, USERS)
        assert isinstance(info.value, AuthenticationError)
        assert "upkeep" not in str(info.value)


@pytest.mark.parametrize(
    "failure",
    [ConnectionResetError("vault reset"), TimeoutError("vault timed out")],
    ids=["OSError", "TimeoutError"],
)
async def test_an_early_fetch_whose_auth_code_callable_meets_an_outage_keeps_the_token(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], failure: Exception
) -> None:
    """The consumer's auth-code callable (a call to the brand's identity provider) fails on
    the network inside the margin: the still-valid JWT is kept and the fetch put off; after
    expiry the outage is the call's (a ConnectionFailed, as any provider's own network
    failure). It used to fail the call at once."""
    codes = 0

    async def auth_code() -> str:
        nonlocal codes
        codes += 1
        if codes > 1:
            raise failure
        return "code-one-xyz"

    events: list[StateEvent] = []
    auth = ConsumerJwt(
        ACCOUNT,
        domains=csds_for(sim),
        auth_code=auth_code,
        margin=60,
        wall_clock=sim.tokens.epoch_now,
    )
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        token = auth.token
        assert token is not None
        assert token.refresh_at is not None
        assert token.expires_at is not None
        await clock.sleep(token.refresh_at + 1 - clock.now())
        for _ in range(5):
            creds = await engine.login()
            assert creds.generation == first.generation
        await _early_fetch_done(auth)
        assert codes == 2  # one early fetch, then put off
        assert sim.count("POST", AUTHENTICATE) == 1
        failed = [e for e in events if e.name == "refresh_failed"]
        assert [e.details["error"] for e in failed] == [type(failure).__name__]
        await clock.sleep(token.expires_at - clock.now())
        with pytest.raises(ConnectionFailed) as info:
            await engine.login()
        assert info.value.never_sent


# -- 3. the keepalive after a transient refresh failure ----------------------------------------


async def test_a_failed_refresh_is_tried_again_before_a_short_session_expires(
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 600 s session (refreshed every 300 s) whose refresh at 300 s fails (its schedule
    spent at 330 s) is tried again at 465 s, half the TTL left, not at 630 s (a whole interval
    after the failure, past its expiry). The refresh's give-up is a WARNING saying the session
    is kept, not an ERROR."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    events: list[StateEvent] = []
    giveups: list[GiveUpEvent] = []
    async with make_sim(clock, session_ttl=600.0) as sim:
        auth = _user_login(sim)
        async with sim_engine(
            sim, clock, domains=auth._domains, auth=auth, events=events, giveups=giveups
        ) as engine:
            await engine.login()
            learn_session_secrets(auth, secret_values)
            session = auth.session
            assert session is not None
            sim.faults.script("POST", REFRESH, [503] * 4)
            await clock.sleep(700)
            learn_session_secrets(auth, secret_values)
            refreshes = [round(r.at) for r in sim.requests if r.path == REFRESH]
            assert refreshes == [300, 305, 315, 330, 465]
            assert sim.count("POST", LOGIN) == 1
            assert auth.session is session
            assert sim.tokens.valid_session(session.bearer.reveal(), ACCOUNT) is not None
            failed = [e for e in events if e.name == "refresh_failed"]
            assert [(e.details["next"], e.details["retry_in"]) for e in failed] == [
                ("retry on the next tick", 135.0)
            ]
            assert [(g.service, g.handled_by_caller) for g in giveups] == [("agentVep", True)]
            gave_up = [
                r
                for r in caplog.records
                if r.name == "le_transport.retry" and "failed after" in r.getMessage()
            ]
            assert [r.levelno for r in gave_up] == [logging.WARNING]
            assert gave_up[0].getMessage().endswith(f"handled: {_KEEPALIVE_FALLBACK}")
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _session(ttl: float | None, logged_in_at: float = 0.0) -> LoginSession:
    return LoginSession(
        bearer=Secret("zz-not-a-real-bearer"),
        csrf=None,
        session_id=None,
        ttl=ttl,
        user_id=None,
        generation=1,
        logged_in_at=logged_in_at,
    )


def test_the_retry_after_a_failed_refresh_never_passes_the_ttl_left() -> None:
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=StaticDomains({"agentVep": "h"}))
    # Half the TTL left since the session was last known alive, within the interval.
    assert auth._retry_in(_session(600.0), 0.0, 330.0) == 135.0
    assert auth._retry_in(_session(600.0), 465.0, 495.0) == 285.0
    assert auth._retry_in(_session(8 * 3600.0), 0.0, 330.0) == 300.0  # the interval
    # Never sooner than the floor: no tight loop against a Login Service that is down.
    assert auth._retry_in(_session(600.0), 0.0, 598.0) == MIN_SESSION_REFRESH_INTERVAL
    # A TTL unknown, or already over: the interval, as before.
    assert auth._retry_in(_session(None), 0.0, 330.0) == 300.0
    assert auth._retry_in(_session(600.0), 0.0, 601.0) == 300.0


# -- 4. the recovery loop's note on an error shared by many callers ------------------------------


async def test_the_left_running_note_never_changes_an_error_other_callers_share(
    clock: VirtualClock,
) -> None:
    """One login's failure is every waiter's: the same object. The recovery loop added its
    "left running" note to it, so another caller's error said that too. Now the note goes on
    a copy of the same type, with the same attributes, cause and traceback."""
    last = ConnectionFailed("reset", service="svc")

    async def login() -> str:
        await clock.sleep(1)
        raise RetriesExhausted("spent", last=last, service="svc", method="GET", url="/x") from last

    # Confirmed: a single flight raises one and the same object to every waiter.
    flight: SingleFlight[str] = SingleFlight("test")
    first, second = await asyncio.gather(
        flight.run(login), flight.run(login), return_exceptions=True
    )
    assert first is second
    assert isinstance(first, RetriesExhausted)
    shared = first
    recovery = Recovery(
        domains=StaticDomains({"svc": "127.0.0.1:9"}),
        auth=None,
        clock=clock,
        policy=RELOGIN,
    )
    left: list[asyncio.Task[None]] = []

    async def post_meanwhile() -> None:
        await clock.sleep(1)  # during the pause: a POST of the failed run goes on
        record_call(CallContext("svc", idempotent=False), "POST")

    async def call() -> None:
        left.append(asyncio.ensure_future(post_meanwhile()))
        raise shared

    with pytest.raises(RetriesExhausted) as info:
        await recovery.run(call)
    await asyncio.gather(*left)
    raised = info.value
    assert raised is not shared
    assert any("left running" in note for note in raised.__notes__)
    assert getattr(shared, "__notes__", None) is None
    assert (raised.last, raised.service, raised.method, raised.url) == (last, "svc", "GET", "/x")
    assert raised.repeat is shared.repeat
    assert raised.__cause__ is last


def test_a_copied_error_keeps_its_keyword_only_fields_and_notes_of_its_own() -> None:
    original = LoginRejected("refused", status=403)
    original.add_note("first")
    copy = _own_copy(original)
    assert copy is not None
    assert type(copy) is LoginRejected
    assert (str(copy), copy.status, copy.__notes__) == ("refused", 403, ["first"])
    copy.add_note("second")
    assert original.__notes__ == ["first"]


# -- 5. a closed Domain API provider; a JWT exp in milliseconds -----------------------------------


async def test_a_closed_domain_provider_starts_no_fetch_until_attached_again(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim)
    async with Engine(domains, scheme="http", clock=clock):
        assert await domains.resolve(SERVICE) == sim.host
    fetches = sim.count("GET", CSDS)
    await domains.invalidate()
    for ask in (lambda: domains.resolve(SERVICE), domains.refresh):
        with pytest.raises(EngineClosed):
            await ask()
    assert sim.count("GET", CSDS) == fetches
    # Another engine's start attaches it again.
    async with Engine(domains, scheme="http", clock=clock):
        assert await domains.resolve(SERVICE) == sim.host
    assert sim.count("GET", CSDS) == fetches + 1


@pytest.mark.parametrize("expires_in", [600, None], ids=["expires_in", "no-expires_in"])
async def test_a_jwt_whose_exp_is_in_milliseconds_is_read_as_one_without_exp(
    sim: Simulator,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    expires_in: int | None,
) -> None:
    caplog.set_level(logging.WARNING, logger="le_transport.auth")
    exp_ms = int((sim.tokens.epoch_now() + 3600) * 1000)
    token = jwt_with({"exp": exp_ms})
    body: dict[str, object] = {"access_token": token, "token_type": "Bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    auth = sentinel(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        for _ in range(2):
            sim.faults.script("POST", TOKEN, [Status(200, body=json.dumps(body))])
            await auth.relogin()
            held = auth.token
            assert held is not None
            if expires_in is None:
                assert (held.expires_at, held.refresh_at) == (None, None)
            else:
                assert held.expires_at == pytest.approx(clock.now() + expires_in)
        await engine.login()
    ignored = [r for r in caplog.records if "ignoring a JWT exp" in r.getMessage()]
    assert len(ignored) == 1  # once
    assert token not in ignored[0].getMessage()


# -- sockets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ODD_ANSWERS, ids=ODD_IDS)
async def test_a_socket_whose_login_meets_a_maintenance_page_reconnects_not_stops(
    sim: Simulator, clock: VirtualClock, answer: Status | MalformedBody
) -> None:
    """The dialer raised every AuthenticationError for the owner to stop on, as bad
    credentials: a socket whose login met a maintenance page (an UnexpectedAnswer, which the
    HTTP recovery loop waits out) stopped for good with SocketAuthFailed."""
    from le_transport.sockets import SocketState
    from tests.test_socket_support import brand_socket

    auth = _user_login(sim, keepalive=False)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        sim.faults.script("POST", LOGIN, [answer, answer])
        ws = await brand_socket(engine, sim)
        await ws.wait_open(timeout=3600)
        assert ws.state is SocketState.OPEN
        assert sim.count("POST", LOGIN) == 3  # two odd answers, then the login
        assert clock.now() > 0  # on the reconnect schedule between the tries
        await ws.close()


# -- the second review round ------------------------------------------------------------------


async def test_a_due_call_during_a_relogin_sends_its_valid_token_without_waiting(
    sim: Simulator, clock: VirtualClock
) -> None:
    """A call whose token was due (inside its margin, valid for 59 s more) joined the
    re-login's fetch (its whole schedule, through an outage) and failed with it, though it
    had a token that worked."""
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        token = await _inside_the_margin(engine, auth, clock)
        sim.faults.script("POST", TOKEN, [Status(503)] * 40)
        relogin = asyncio.ensure_future(auth.relogin())
        await asyncio.sleep(0)
        start = clock.now()
        resp = await engine.request("GET", SERVICE, USERS)
        assert resp.status == 200
        assert clock.now() == start
        assert token.expires_at is not None
        assert token.expires_at - clock.now() > 0
        with pytest.raises(RetriesExhausted):
            await relogin


async def test_a_maintenance_page_at_the_login_is_a_warning_as_a_503_is(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    """login_failed was an ERROR (the level of a refused password, which pages someone) for a
    maintenance page the recovery loop waits out as a 503, itself a WARNING."""
    auth = _user_login(sim, keepalive=False, retry=RetryPolicy(pauses=()))
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.login()
        learn_session_secrets(auth, secret_values)
        levels: dict[int, list[int]] = {}
        for answer, error in (
            (Status(503), RetriesExhausted),
            (ODD_ANSWERS[0], UnexpectedAnswer),
            (ODD_ANSWERS[1], UnexpectedAnswer),
        ):
            caplog.clear()
            sim.faults.script("POST", LOGIN, [answer])
            with caplog.at_level(logging.DEBUG, logger="le_transport"), pytest.raises(error):
                await auth.relogin()
            levels[answer.code] = [
                r.levelno for r in caplog.records if "login failed" in r.getMessage()
            ]
        assert levels[503] == levels[302] == levels[200] == [logging.WARNING]
        sim.faults.script("POST", LOGIN, [Status(401)])
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="le_transport"), pytest.raises(LoginRejected):
            await auth.relogin()
        assert [r.levelno for r in caplog.records if "login failed" in r.getMessage()] == [
            logging.ERROR
        ]


async def test_the_left_running_copy_keeps_the_root_cause_of_an_implicitly_chained_error() -> None:
    """The copy was raised ``from exc.__cause__`` inside the except clause: for an error
    raised without ``from`` (its cause None, its context the root cause) that suppressed the
    context and put the original error in its place: the root cause left the traceback."""
    import traceback

    clock = VirtualClock()
    try:
        try:
            raise OSError(104, "reset by peer (the root cause)")
        except OSError:
            raise ConnectionFailed("reset", service="svc")  # noqa: B904 - chained implicitly
    except ConnectionFailed as caught:
        shared = caught
    recovery = Recovery(
        domains=StaticDomains({"svc": "127.0.0.1:9"}), auth=None, clock=clock, policy=RELOGIN
    )
    left: list[asyncio.Future[None]] = []

    async def post_meanwhile() -> None:
        await clock.sleep(1)
        record_call(CallContext("svc", idempotent=False), "POST")

    async def call() -> None:
        left.append(asyncio.ensure_future(post_meanwhile()))
        raise shared

    with pytest.raises(ConnectionFailed) as raised:
        await recovery.run(call)
    await asyncio.gather(*left)
    assert raised.value is not shared
    assert raised.value.__context__ is shared.__context__
    assert not raised.value.__suppress_context__
    assert "the root cause" in "".join(traceback.format_exception(raised.value))
