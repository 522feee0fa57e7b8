"""``le-transport demo``: what the library does under failure, on a timeline, with a verdict.

The demo starts the built-in LiveEngage simulator and runs an agent's workload through an
:class:`~le_transport.Engine` while faults are injected on both sides (the simulator's script
and the client-side :class:`~le_transport.chaos.FaultInjector`, from one seeded
:class:`~le_transport.chaos.FaultPlan`):

1. resolve the account's domains through the Domain API (which fails once: retried);
2. log in (Login Service) and call the Users API (two injected 503s: retried after the guide's
   5 and 10 s, scaled);
3. ask for a user that does not exist: a 404, not retried;
4. open the UMS agent socket with ``.GetClock`` keepalives, subscribe on every connect, publish
   messages while the server drops the socket (reconnect, re-subscribe, resend);
5. wait for the Login Service refresh (the session keepalive);
6. a long outage: every token expires, the socket is closed with 4401 and the Login Service
   answers 503 for two whole request schedules; the outer loop re-logs in on its backoff, the
   REST call that waited succeeds, the socket re-authenticates and comes back, and the
   messages published meanwhile go out from its queue (one is rate-limited: 429, paused,
   resent).

Each thing the library did is printed as it happens, then a summary table. Every schedule is
the guide's multiplied by ``time_scale``. The exit code is 0 only if every invariant held
(retries as scheduled: the Users API call's two after the guide's 5 and 10 s and the Domain
API's after 5 s, each pause announced and waited, and each re-login's pause within the
backoff's bounds, 2, 4, 8 min ±20 %; the 404 sent once, a refresh, a re-login, a reconnect
with its subscription renewed, nothing lost, keepalives sent, no secret printed).

With an account (``--account`` with a user and its password or an API key, or the ``LE_*``
environment variables), a shorter workload runs against LiveEngage itself, with client-side
faults only (nothing is injected on LiveEngage's side, and no socket is opened): steps 1 to 3,
resolving the domains, logging in, one Users API call through two injected 503s (retried
twice, after 5 and 10 s scaled), and the missing user's 404 (not retried). Its checks are
those two, and that no secret was printed. A ``--csds-host`` (or ``LE_CSDS_HOST``) that is
not a bare hostname with an optional port is a usage error, as a missing option is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import attrs

from ._tasks import stop_task
from .chaos import FaultInjector, FaultRule, Match, Reset, Schedule, Status, WsDrop
from .clock import Clock, RealClock, timeout_after
from .engine import Engine
from .errors import (
    ClientStatusError,
    HostileHostError,
    SocketClosed,
    SocketRequestError,
    TransportError,
)
from .events import EventHooks, GiveUpEvent, RetryEvent, StateEvent
from .policies.backoff import BackoffPolicy
from .policies.keepalive import MESSAGING_AGENT_SDK_GETCLOCK
from .policies.retry import GUIDE_5XX_PAUSES, RetryPolicy
from .providers import (
    AppLogin,
    CsdsDomains,
    LoginServiceAuth,
    LoginSession,
    UserLogin,
    validate_host,
)
from .sockets import UMS_BRAND_SOCKET_QUERY, ResilientSocket, SocketOptions, ums_brand_path

__all__ = ["AccountOptionsError", "DemoAccount", "account_from", "run_demo"]

#: Default: the guide's minutes become about a second; the whole run takes a few seconds.
DEFAULT_TIME_SCALE = 0.01
#: Keepalives shown on the timeline (the rest are counted).
KEEPALIVE_LINES = 3
#: Messages the agent publishes on the socket.
MESSAGES = 12
#: Login attempts the outage refuses: two whole request schedules (4 attempts each).
OUTAGE_LOGIN_FAILURES = 8

USERS_PATH = "/api/account/{account}/configuration/le-users/users"


@attrs.frozen(repr=False)
class DemoAccount:
    """A real LiveEngage account to run against instead of the simulator."""

    account: str
    username: str
    password: str | None = None
    app_key: str | None = None
    app_secret: str | None = None
    access_token: str | None = None
    access_token_secret: str | None = None
    csds_host: str = "api.liveperson.net"
    #: ``https`` for LiveEngage; ``http`` only for a local server (LE_CSDS_SCHEME).
    scheme: str = "https"

    def __repr__(self) -> str:
        return f"DemoAccount(account={self.account!r}, username={self.username!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str], **given: str | None) -> DemoAccount | None:
        """From ``--account``-style values, falling back to ``LE_*`` environment variables."""

        def pick(name: str) -> str | None:
            value = given.get(name)
            return value if value else env.get(f"LE_{name.upper()}") or None

        account = pick("account")
        if account is None:
            return None
        return cls(
            account=account,
            username=pick("username") or "",
            password=pick("password"),
            app_key=pick("app_key"),
            app_secret=pick("app_secret"),
            access_token=pick("access_token"),
            access_token_secret=pick("access_token_secret"),
            csds_host=pick("csds_host") or "api.liveperson.net",
            scheme=pick("csds_scheme") or "https",
        )

    def auth(self, domains: CsdsDomains, refresh_interval: float) -> LoginServiceAuth:
        """The Login Service auth for these credentials."""
        if self.password:
            return UserLogin(
                self.account,
                self.username,
                self.password,
                domains=domains,
                refresh_interval=refresh_interval,
            )
        return AppLogin(
            self.account,
            self.username,
            app_key=self.app_key or "",
            secret=self.app_secret or "",
            access_token=self.access_token or "",
            access_token_secret=self.access_token_secret or "",
            domains=domains,
            refresh_interval=refresh_interval,
        )

    def secrets(self) -> list[str]:
        """Every credential value given, to check that none was printed (what the login
        answers, bearer, CSRF value and ``Session_id``, is checked too: see :func:`_real`)."""
        return [
            s
            for s in (
                self.password,
                self.app_secret,
                self.access_token,
                self.access_token_secret,
            )
            if s
        ]


# -- the timeline --------------------------------------------------------------------------------


@attrs.define(eq=False)
class Timeline:
    """Prints what the library did, as it happens, and counts it."""

    out: TextIO
    started: float = attrs.field(factory=time.monotonic)
    lines: list[str] = attrs.field(factory=list)
    counts: dict[str, int] = attrs.field(factory=dict)
    _waiters: dict[str, asyncio.Event] = attrs.field(factory=dict)
    #: Called once when ``out`` turns out to be gone (a closed pipe: ``demo | head -1``).
    on_broken: Callable[[], object] | None = None
    #: Whether ``out`` is gone: lines are then still kept, no longer printed.
    broken: bool = False
    #: Why: the error writing to ``out`` raised (a closed pipe, a full disk).
    write_error: OSError | None = None
    #: Every retry, in order: what its pause was, to check it against the guide's schedule.
    retries: list[RetryEvent] = attrs.field(factory=list)
    #: When each of :attr:`retries` was announced, on the demo's clock (``time.monotonic()``,
    #: :class:`~le_transport.clock.RealClock`'s): to check that its pause was waited.
    retried_at: list[float] = attrs.field(factory=list)
    #: Every outer re-login scheduled, in order: its attempt and its pause.
    relogin_pauses: list[tuple[int, float]] = attrs.field(factory=list)

    def say(self, what: str, detail: str = "") -> None:
        """Print one line of the timeline. Never raises for an output that cannot be written
        (closed, full): hooks and log handlers call it, and the library would log the error
        (to this very timeline). The demo stops then (``on_broken``)."""
        at = time.monotonic() - self.started
        line = f"[{at:7.3f}s] {what:<10} {detail}".rstrip()
        self.lines.append(line)
        if self.broken:
            return
        try:
            print(line, file=self.out, flush=True)
        except OSError as exc:  # a closed pipe, or a full disk under a redirected output
            self.broken = True
            self.write_error = exc
            if self.on_broken is not None:
                self.on_broken()

    def count(self, name: str) -> int:
        """How many times ``name`` happened."""
        return self.counts.get(name, 0)

    def _bump(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        waiter = self._waiters.get(name)
        if waiter is not None:
            waiter.set()

    async def wait_for(self, name: str, clock: Clock, within: float, *, more_than: int = 0) -> bool:
        """Wait until ``name`` has happened more than ``more_than`` times; False on timeout."""
        with contextlib.suppress(TimeoutError):
            async with timeout_after(clock, within):
                while self.count(name) <= more_than:
                    waiter = self._waiters.setdefault(name, asyncio.Event())
                    waiter.clear()
                    await waiter.wait()
        return self.count(name) > more_than

    # hooks

    def on_retry(self, ev: RetryEvent) -> None:
        """Hook: an attempt failed and another follows."""
        self.retries.append(ev)
        self.retried_at.append(time.monotonic())
        self._bump("retry")
        self.say(
            "retry",
            f"{ev.method} {ev.service}: attempt {ev.attempt} got {ev.outcome.describe()}; "
            f"pausing {ev.pause:.3g} s",
        )

    def on_giveup(self, ev: GiveUpEvent) -> None:
        """Hook: a call failed for good."""
        self._bump("giveup")
        self.say("give-up", f"{ev.method} {ev.service} after {ev.attempts} attempt(s): {ev.reason}")

    def on_state(self, ev: StateEvent) -> None:
        """Hook: a session or socket changed state."""
        if ev.name == "relogin_scheduled":
            attempt, pause = ev.details.get("attempt"), ev.details.get("pause")
            if isinstance(attempt, int) and isinstance(pause, int | float):
                self.relogin_pauses.append((attempt, float(pause)))
        self._bump(ev.name)
        label = _STATE_LABELS.get(ev.name)
        if label is None:
            return
        details = " ".join(f"{k}={v}" for k, v in ev.details.items())
        subject = "agent socket" if "/messaging/brand/" in ev.subject else ev.subject
        self.say(label, f"{ev.name.replace('_', ' ')} ({subject}) {details}".rstrip())


_STATE_LABELS = {
    "logged_in": "login",
    "login_failed": "login",
    "refreshed": "refresh",
    "refresh_failed": "refresh",
    "clock_skew": "refresh",
    "logged_out": "logout",
    "relogin_scheduled": "relogin",
    "relogin_failed": "relogin",
    "recovered": "relogin",
    "gave_up": "relogin",
    "connecting": "socket",
    "connect_failed": "socket",
    "ready": "socket",
    "lost": "socket",
    "server_closed": "socket",
    "reauthenticating": "socket",
    "escalating": "socket",
    "closed": "socket",
    "domains_stale": "domains",
}


class _KeepaliveLines(logging.Handler):
    """Turns the socket layer's keepalive log records into timeline lines."""

    def __init__(self, timeline: Timeline) -> None:
        super().__init__(logging.DEBUG)
        self._timeline = timeline

    def emit(self, record: logging.LogRecord) -> None:
        keepalive = getattr(record, "keepalive", None)
        if keepalive is None:
            return
        if record.levelno == logging.DEBUG:
            self._timeline._bump("keepalive")
            sent = self._timeline.count("keepalive")
            if sent <= KEEPALIVE_LINES:
                more = (
                    " (further ones are counted in the summary)" if sent == KEEPALIVE_LINES else ""
                )
                self._timeline.say("keepalive", f"{keepalive} sent on an idle socket{more}")
        else:
            self._timeline.say("keepalive", record.getMessage())


class _Echo(logging.Handler):
    """With ``--verbose``: every library log record (already redacted by the library)."""

    def __init__(self, timeline: Timeline) -> None:
        super().__init__(logging.INFO)
        self._timeline = timeline

    def emit(self, record: logging.LogRecord) -> None:
        self._timeline.say("log", f"{record.name}: {record.getMessage()}")


# -- the workload --------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Agent:
    """The agent-like workload: REST calls and a socket, recording what it saw."""

    engine: Engine
    account: str
    timeline: Timeline
    clock: Clock
    scale: float
    sent: list[str] = attrs.field(factory=list)
    acked: list[str] = attrs.field(factory=list)
    echoes: list[str] = attrs.field(factory=list)
    checks: list[tuple[str, bool]] = attrs.field(factory=list)
    #: Sends repeated by the agent: after a connection lost in flight, after a 429.
    resent_lost: int = 0
    resent_429: int = 0

    def check(self, what: str, ok: bool) -> None:
        self.checks.append((what, ok))
        if not ok:
            self.timeline.say("WRONG", what)

    async def users(self) -> list[Any]:
        path = USERS_PATH.format(account=self.account)
        users = await self.engine.request_json(
            "GET", "accountConfigReadOnly", path, params={"v": "4.0"}, expect=list, recover=True
        )
        assert isinstance(users, list)
        return users

    async def missing_user(self) -> int | None:
        path = USERS_PATH.format(account=self.account) + "/999999"
        try:
            await self.engine.request("GET", "accountConfigReadOnly", path, params={"v": "4.0"})
        except ClientStatusError as exc:
            self.timeline.say(
                "4xx",
                f"GET user 999999: {exc.status} after {len(exc.attempts)} attempt: not retried",
            )
            return len(exc.attempts)
        return None

    async def subscribe(self, ws: ResilientSocket) -> None:
        answer = await ws.request(".ams.aam.SubscribeExConversations", {"convState": ["OPEN"]})
        self.timeline._bump("subscribed")
        self.timeline.say("subscribe", f"SubscribeExConversations -> {answer.get('code')}")

    async def on_frame(self, frame: Any) -> None:
        if isinstance(frame, dict) and frame.get("type") == ".ams.ms.MessagingEventNotification":
            for change in frame.get("body", {}).get("changes", []):
                message = change.get("event", {}).get("message")
                if isinstance(message, str):
                    self.echoes.append(message)

    async def publish(self, ws: ResilientSocket, text: str) -> None:
        """Publish one message; resend after a lost connection or a 429 (at least once)."""
        body = {
            "dialogId": "demo-dialog",
            "event": {"type": "ContentEvent", "contentType": "text/plain", "message": text},
        }
        self.sent.append(text)
        for _ in range(10):
            try:
                await ws.request(".ams.ms.PublishEvent", body, timeout=600 * self.scale + 10)
            except SocketRequestError as exc:
                pause = max(1.0 * self.scale, 0.01)
                self.resent_429 += 1
                self.timeline.say(
                    "rate-limit", f"{text}: resp code {exc.code}; pausing {pause:.3g} s, resending"
                )
                await self.clock.sleep(pause)
                continue
            except SocketClosed:
                if ws.closed:
                    self.timeline.say("WRONG", f"{text}: the socket closed for good")
                    return
                self.resent_lost += 1
                self.timeline.say("resend", f"{text}: its connection was lost in flight; resending")
                continue
            self.acked.append(text)
            return


async def _simulated(
    time_scale: float, seed: int, timeline: Timeline
) -> tuple[list[tuple[str, bool]], list[tuple[str, str]], list[str]]:
    """The workload against the built-in simulator, with server- and client-side faults."""
    from .testing.simulator import DEFAULT_PASSWORD, DEFAULT_USER, Simulator, SimulatorConfig

    scale = time_scale
    clock = RealClock()
    config = SimulatorConfig(idle_timeout=60 * scale)
    sim = Simulator(config, clock=clock)
    account = sim.account.id
    users_glob = "/api/account/*/configuration/le-users/users"
    # Server side: the Domain API fails once; the first socket drops after a few frames;
    # one published message is rate-limited.
    sim.faults.script("GET", "*/service/baseURI.json", [503], id="csds-503-once")
    sim.faults.add(
        FaultRule(
            "socket-drop",
            WsDrop(after_messages=5),
            unit="ws_session",
            schedule=Schedule(fail_next=1),
        )
    )
    sim.faults.add(
        FaultRule(
            "publish-429",
            Status(429),
            unit="ws_message",
            match=Match(path=".ams.ms.PublishEvent"),
            schedule=Schedule(skip_first=7, fail_next=1),
        )
    )
    # Client side: the Users API's first call meets two 503s, a later one a reset.
    injector = FaultInjector.seeded(
        seed,
        FaultRule(
            "users-503-twice",
            Status(503),
            match=Match("GET", users_glob),
            schedule=Schedule(fail_next=2),
        ),
        FaultRule("users-reset", Reset(), match=Match("GET", users_glob), schedule=Schedule(3, 1)),
        clock=clock,
    )
    await sim.start()
    timeline.say("start", f"simulator on {sim.url}; schedules x{scale:g}; seed {seed}")
    csds = CsdsDomains(account, csds_host=sim.host, scheme="http", ttl=600 * scale)
    auth = UserLogin(
        account, DEFAULT_USER, DEFAULT_PASSWORD, domains=csds, refresh_interval=300 * scale
    )
    engine = Engine(
        csds,
        scheme="http",
        clock=clock,
        auth=auth,
        retry=RetryPolicy().scaled(scale),
        recovery=BackoffPolicy.relogin().scaled(scale),
        hooks=EventHooks(
            on_retry=[timeline.on_retry],
            on_giveup=[timeline.on_giveup],
            on_state=[timeline.on_state],
        ),
        wire_middlewares=[injector],
    )
    agent = _Agent(engine, account, timeline, clock, scale)
    try:
        async with engine:
            await _workload(agent, sim, scale)
    finally:
        await sim.stop()
    published = {m.text for m in sim.sockets.published}
    brand = [s for s in sim.sockets.all if s.kind == "brand"]
    served = [s for s in brand if s.received]
    getclocks = sum(1 for s in brand for f in s.received if f.get("type") == ".GetClock")
    checks = agent.checks
    relogin = BackoffPolicy.relogin().scaled(scale)
    checks += [
        ("the Domain API's 503 was retried", sim.count("GET", "*/baseURI.json") >= 2),
        ("the 404 reached the server exactly once", sim.count("GET", "*/users/999999") == 1),
        (
            "the simulator saw the refresh and the second login",
            sim.tokens.refreshes >= 1 and sim.tokens.logins >= 2,
        ),
        ("the outer loop scheduled a re-login", timeline.count("relogin_scheduled") >= 1),
        (
            "each re-login paused within the guide's backoff (2, 4, 8 min ±20%, scaled)",
            bool(timeline.relogin_pauses)
            and all(_within(pause, relogin.bounds(n)) for n, pause in timeline.relogin_pauses),
        ),
        ("the socket reconnected (after a drop, and after the outage)", len(served) >= 3),
        (
            "every connection was subscribed again",
            all(".ams.aam.SubscribeExConversations" in s.subscription_types for s in served),
        ),
        ("nothing lost: the server received every message", published >= set(agent.sent)),
        ("every message was acknowledged", set(agent.acked) == set(agent.sent)),
        ("keepalives were sent", getclocks >= 1),
    ]
    client_faults = len(injector.report())
    server_faults = len(sim.faults.injected())
    summary = [
        ("requests received by the simulator", str(len(sim.requests))),
        ("faults injected (server / client)", f"{server_faults} / {client_faults}"),
        ("retries", str(timeline.count("retry"))),
        ("give-ups", str(timeline.count("giveup"))),
        ("logins (first + re-logins)", str(sim.tokens.logins)),
        ("session refreshes", str(sim.tokens.refreshes)),
        ("outer re-login rounds", str(timeline.count("relogin_scheduled"))),
        ("socket connections (reconnects)", f"{len(brand)} ({max(0, len(brand) - 1)})"),
        ("subscriptions renewed", str(timeline.count("subscribed"))),
        ("keepalives (.GetClock) received", str(getclocks)),
        ("messages sent / acknowledged", f"{len(agent.sent)} / {len(set(agent.acked))}"),
        (
            "messages resent (lost in flight / 429)",
            f"{agent.resent_lost} / {agent.resent_429}",
        ),
        ("messages received by the server", f"{len(published & set(agent.sent))}"),
        (
            "  of which received more than once",
            str(len(sim.sockets.published) - len(published)),
        ),
        ("messages echoed back", str(len(set(agent.echoes)))),
        ("nothing lost", "yes" if published >= set(agent.sent) else "NO"),
    ]
    secrets = [DEFAULT_PASSWORD]
    for session in sim.tokens.sessions.values():
        secrets += [session.bearer, session.csrf, session.session_id]
    return checks, summary, secrets


def _check_users_retries(agent: _Agent, since: int, ended_at: float) -> None:
    """The Users API call's retries (those of ``agent.timeline`` from index ``since``; the
    call returned at ``ended_at``): two, after the guide's first two pauses (5 and 10 s,
    scaled), each waited."""
    retries = agent.timeline.retries[since:]
    agent.check("the Users API call was retried twice", len(retries) == 2)
    pauses = " and ".join(f"{p:g}" for p in GUIDE_5XX_PAUSES[:2])
    agent.check(
        f"the Users API call's retries paused the guide's {pauses} s (scaled)",
        len(retries) == 2
        and _on_schedule(retries, agent.scale)
        and _last_pause_waited(agent.timeline, since, ended_at),
    )


def _last_pause_waited(timeline: Timeline, since: int, ended_at: float) -> bool:
    """Whether the last of one call's retries (those of ``timeline`` from index ``since``)
    had its pause waited before the call ended at ``ended_at`` (``time.monotonic()``):
    :func:`_on_schedule` sees each pause but the last waited by the gap to the next retry;
    the last one's is the gap to the call's end. False when there was no retry."""
    if len(timeline.retries) <= since:
        return False
    early = max(time.get_clock_info("monotonic").resolution, 1e-3)
    return ended_at - timeline.retried_at[-1] >= timeline.retries[-1].pause - early


def _on_schedule(retries: list[RetryEvent], scale: float) -> bool:
    """Whether each of one call's ``retries`` paused the guide's pause for its attempt (5,
    10, 15 s) times ``scale``, and the call really waited it: the next retry came that much
    later at least (a timer may fire up to the clock's resolution early). The last retry's
    pause has no next retry to show it: :func:`_last_pause_waited` checks it."""
    for ev in retries:
        if not 1 <= ev.attempt <= len(GUIDE_5XX_PAUSES):
            return False
        if not math.isclose(ev.pause, GUIDE_5XX_PAUSES[ev.attempt - 1] * scale, rel_tol=1e-9):
            return False
    early = max(time.get_clock_info("monotonic").resolution, 1e-3)
    return all(
        later.elapsed - ev.elapsed >= ev.pause - early for ev, later in itertools.pairwise(retries)
    )


def _within(pause: float, bounds: tuple[float, float]) -> bool:
    """Whether ``pause`` (as an event tells it, to the millisecond) is within ``bounds``."""
    low, high = bounds
    return low - 5e-4 <= pause <= high + 5e-4


async def _workload(agent: _Agent, sim: Any, scale: float) -> None:
    timeline, clock, engine = agent.timeline, agent.clock, agent.engine
    # 1-2. Domains (through an injected 503), login, a REST call through two injected 503s.
    since = len(timeline.retries)
    host = await engine.domains.resolve("accountConfigReadOnly")
    resolved_at = time.monotonic()
    timeline.say("domains", f"accountConfigReadOnly is at {host} (from the Domain API)")
    csds_retries = [ev for ev in timeline.retries[since:] if ev.service == "csds"]
    agent.check(
        f"the Domain API's retry paused the guide's {GUIDE_5XX_PAUSES[0]:g} s (scaled)",
        len(csds_retries) == 1
        and len(timeline.retries) == since + 1
        and _on_schedule(csds_retries, scale)
        and _last_pause_waited(timeline, since, resolved_at),
    )
    await engine.login()
    since = len(timeline.retries)
    users = await agent.users()
    _check_users_retries(agent, since, time.monotonic())
    timeline.say("ok", f"GET users: {len(users)} user(s)")
    # 3. A 4xx is the caller's bug: one attempt.
    attempts = await agent.missing_user()
    agent.check("the 404 was not retried", attempts == 1)
    # A reset mid-flight: retried like a 5xx.
    users = await agent.users()
    timeline.say("ok", f"GET users again after a connection reset: {len(users)} user(s)")
    # 4. The socket, with keepalive, subscriptions renewed on every connect.
    options = SocketOptions(
        keepalive=MESSAGING_AGENT_SDK_GETCLOCK.scaled(scale),
        backoff=BackoffPolicy.reconnect().scaled(scale),
        healthy_after=30 * scale,
        request_timeout=30 * scale + 5,
        connect_timeout=30 * scale + 5,
    )
    ws = await engine.websocket(
        "facadeMsg",
        ums_brand_path(agent.account),
        params=UMS_BRAND_SOCKET_QUERY,
        options=options,
        on_connect=[agent.subscribe],
        on_frame=agent.on_frame,
    )
    try:
        await ws.wait_open()
        for i in range(MESSAGES // 2):
            await agent.publish(ws, f"message {i + 1}")
            await clock.sleep(5 * scale)
        timeline.say("publish", f"{len(agent.acked)} message(s) acknowledged so far")
        # 5. The Login Service keepalive: a refresh every 5 min (scaled).
        refreshed = await timeline.wait_for("refreshed", clock, 600 * scale + 5)
        agent.check("a session refresh happened", refreshed)
        await timeline.wait_for("keepalive", clock, 60 * scale + 5, more_than=2)
        # 6. A long outage: every token expires, the server closes the socket with 4401, and
        # the Login Service answers 503 for two whole request schedules. The REST call waits
        # through the outer re-login loop; the socket keeps trying to re-authenticate and comes
        # back once login works again; messages published meanwhile wait in its queue.
        timeline.say(
            "outage",
            "every token expires, the agent socket is closed with 4401, and the Login "
            f"Service answers 503 to {OUTAGE_LOGIN_FAILURES} logins",
        )
        sim.faults.script("POST", "*/login", [503] * OUTAGE_LOGIN_FAILURES, id="login-outage")
        logins = timeline.count("logged_in")
        ready = timeline.count("ready")
        await sim.expire_tokens()

        async def publish_rest() -> None:
            for i in range(MESSAGES // 2, MESSAGES):
                await agent.publish(ws, f"message {i + 1}")

        publishing = asyncio.get_running_loop().create_task(publish_rest())
        try:
            users = await agent.users()
            timeline.say("ok", f"GET users after the outage: {len(users)} user(s)")
            agent.check("logged in again after the outage", timeline.count("logged_in") > logins)
            agent.check(
                "the socket came back after 4401 and the outage",
                await timeline.wait_for("ready", clock, 600 * scale + 10, more_than=ready),
            )
            await publishing
        finally:
            await stop_task(publishing)
        timeline.say("publish", f"{len(agent.acked)} message(s) acknowledged in all")
    finally:
        await ws.close()


async def _real(
    account: DemoAccount, time_scale: float, seed: int, timeline: Timeline
) -> tuple[list[tuple[str, bool]], list[tuple[str, str]], list[str]]:
    """The workload against a real account: client-side faults only."""
    scale = time_scale
    clock = RealClock()
    injector = FaultInjector.seeded(
        seed,
        FaultRule(
            "users-503-twice",
            Status(503),
            match=Match("GET", "/api/account/*/configuration/le-users/users"),
            schedule=Schedule(fail_next=2),
        ),
        clock=clock,
    )
    csds = CsdsDomains(account.account, csds_host=account.csds_host)
    auth = account.auth(csds, refresh_interval=300.0)
    # What the real login answered must not be printed either (as the simulated run checks
    # its sessions'): every session the auth held, taken as each login or refresh is told.
    sessions: list[LoginSession] = []

    def keep_session(event: StateEvent | None = None) -> None:
        session = auth.session
        if session is not None and session not in sessions:
            sessions.append(session)

    engine = Engine(
        csds,
        scheme=account.scheme,
        clock=clock,
        auth=auth,
        retry=RetryPolicy().scaled(scale),
        hooks=EventHooks(
            on_retry=[timeline.on_retry],
            on_giveup=[timeline.on_giveup],
            on_state=[keep_session, timeline.on_state],
        ),
        wire_middlewares=[injector],
    )
    timeline.say("start", f"account {account.account} via {account.csds_host}; seed {seed}")
    agent = _Agent(engine, account.account, timeline, clock, scale)
    async with engine:
        host = await csds.resolve("accountConfigReadOnly")
        timeline.say("domains", f"accountConfigReadOnly is at {host}")
        await engine.login()
        # Only the Users API call's retries: the Domain API or the login may have retried too.
        since = len(timeline.retries)
        users = await agent.users()
        _check_users_retries(agent, since, time.monotonic())
        timeline.say("ok", f"GET users: {len(users)} user(s)")
        agent.check("the 404 was not retried", await agent.missing_user() == 1)
        keep_session()  # the session the close logs out
    summary = [
        ("retries", str(timeline.count("retry"))),
        ("give-ups", str(timeline.count("giveup"))),
        ("faults injected (client)", str(len(injector.report()))),
    ]
    secrets = account.secrets()
    for session in sessions:
        secrets += [
            s.reveal() for s in (session.bearer, session.csrf, session.session_id) if s is not None
        ]
    return agent.checks, summary, secrets


def _print_summary(
    out: TextIO, summary: list[tuple[str, str]], checks: list[tuple[str, bool]]
) -> None:
    width = max(len(k) for k, _ in summary)
    print(file=out)
    print("summary", file=out)
    print("-" * (width + 12), file=out)
    for key, value in summary:
        print(f"{key:<{width}}  {value:>8}", file=out)
    print("-" * (width + 12), file=out)
    print(file=out)
    print("invariants", file=out)
    for what, ok in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {what}", file=out)


async def _main(
    *,
    time_scale: float,
    seed: int,
    out: TextIO,
    account: DemoAccount | None,
    verbose: bool,
) -> bool:
    timeline = Timeline(out)
    # Nobody reads any more (``demo | head -1``): stop the workload, cleaning up as it goes.
    running = asyncio.current_task()
    if running is not None:
        timeline.on_broken = running.cancel
    stopped_by: list[int] = []
    watched = _stop_on_signals(running, stopped_by)
    lib_log = logging.getLogger("le_transport")
    handlers: list[logging.Handler] = [_KeepaliveLines(timeline)]
    if verbose:
        handlers.append(_Echo(timeline))
    saved = (lib_log.level, lib_log.propagate)
    lib_log.setLevel(logging.DEBUG)
    # The timeline shows what happened; the library's own records go to stderr only with
    # --verbose, where they appear (redacted) in the timeline instead.
    lib_log.propagate = False
    for h in handlers:
        lib_log.addHandler(h)
    try:
        if account is None:
            checks, summary, secrets = await _simulated(time_scale, seed, timeline)
        else:
            checks, summary, secrets = await _real(account, time_scale, seed, timeline)
    except TransportError as exc:
        timeline.say("FAILED", f"{type(exc).__name__}: {exc}")
        return False
    except asyncio.CancelledError:
        if stopped_by and not timeline.broken:
            # Cleaned up (logged out, sockets closed) as the cancellation went through.
            raise Terminated(stopped_by[0]) from None
        if not timeline.broken:
            raise
        failed = timeline.write_error
        if failed is not None and not isinstance(failed, BrokenPipeError):
            # Not a reader gone: the output cannot be written (a full disk), said as such.
            raise OSError(failed.errno, failed.strerror) from None
        raise BrokenPipeError(errno.EPIPE, "the demo's output was closed") from None
    finally:
        _give_back_signals(watched)
        for h in handlers:
            lib_log.removeHandler(h)
        lib_log.setLevel(saved[0])
        lib_log.propagate = saved[1]
    printed = "\n".join(timeline.lines)
    checks.append(("no secret was printed", not any(s and s in printed for s in secrets)))
    _print_summary(out, summary, checks)
    ok = all(ok for _, ok in checks)
    print(file=out)
    print("every invariant held" if ok else "AN INVARIANT FAILED", file=out)
    out.flush()  # a closed output fails here, not at the interpreter's exit
    return ok


class Terminated(Exception):
    """The demo was stopped by SIGTERM or SIGHUP, after it cleaned up (its engines closed, a
    real account logged out) as it does on Ctrl-C. ``signum`` is the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own calls cls(*args), the message: taken for the signal, it was said twice.
        return (type(self), (self.signum,), self.__dict__)


_Handler = Callable[[int, Any], Any] | int | signal.Handlers | None


def _stop_on_signals(task: asyncio.Task[Any] | None, stopped_by: list[int]) -> dict[int, _Handler]:
    """Cancel ``task`` on SIGTERM and SIGHUP, noting the signal in ``stopped_by``; the
    signals it now handles, with the handlers they had (:func:`_give_back_signals` restores
    them). By default either killed the demo with nothing cleaned up: a real account's
    session was left logged in (a CI job cancelled, a container stopped, an ssh session
    lost), where Ctrl-C logs it out.

    A signal that is ignored (SIGHUP under nohup) is left so. Only the first signal cancels:
    a second one (systemd stops a session with SIGTERM, then SIGHUP) would cut the clean-up
    short, the logout included."""
    if task is None:
        return {}
    loop = asyncio.get_running_loop()
    watched: dict[int, _Handler] = {}

    def stop(signum: int) -> None:
        if stopped_by:
            return  # cleaning up already
        stopped_by.append(signum)
        task.cancel()

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            before = signal.getsignal(sig)
            if before is signal.SIG_IGN:
                continue
            loop.add_signal_handler(sig, stop, int(sig))
            watched[int(sig)] = before
    return watched


def _give_back_signals(watched: Mapping[int, _Handler]) -> None:
    """Remove the demo's signal handlers and put back those they replaced (asyncio's removal
    leaves the default action: a program that ran the demo lost its own handlers)."""
    loop = asyncio.get_running_loop()
    for sig, before in watched.items():
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(sig)
            if before is not None:
                signal.signal(sig, before)


def run_demo(
    *,
    time_scale: float = DEFAULT_TIME_SCALE,
    seed: int = 7,
    out: TextIO | None = None,
    account: DemoAccount | None = None,
    verbose: bool = False,
) -> int:
    """Run the demo; return the process exit code (0: every invariant held).

    Raises :class:`BrokenPipeError` when ``out`` is a pipe its reader closed (the workload is
    stopped and cleaned up first), and :class:`KeyboardInterrupt` on Ctrl-C (likewise). On
    SIGTERM, and SIGHUP unless ignored, it cleans up likewise and returns 128 + the signal's
    number (143, 129), as a shell reports a process that signal ended.

    With no ``out`` and no ``sys.stdout`` (``pythonw``, a process started with its output
    closed) it says so in one line on ``sys.stderr`` (if there is one) and returns 1 without
    running, as ``le-transport demo >&-`` does: the run went nowhere, then failed on
    ``None.flush()`` with an AttributeError."""
    stream = sys.stdout if out is None else out
    if stream is None:
        if sys.stderr is not None:
            with contextlib.suppress(OSError, ValueError):  # a closed or broken stderr too
                print(
                    "le-transport demo: no standard output to write the timeline to (it is closed)",
                    file=sys.stderr,
                )
        return 1
    try:
        ok = asyncio.run(
            _main(
                time_scale=time_scale,
                seed=seed,
                out=stream,
                account=account,
                verbose=verbose,
            )
        )
    except Terminated as stopped:
        return 128 + stopped.signum
    return 0 if ok else 1


class AccountOptionsError(ValueError):
    """The real account's options do not make a run: one given without the account, or an
    account without the credentials of one login form, or a ``--csds-host`` that is no host.
    The message names what is missing or wrong (the options and their ``LE_*`` variables),
    never a value (of a refused host, only its host-like start)."""


#: A real account's options (``--csds-scheme`` has only its variable), each with its variable.
ACCOUNT_OPTIONS = (
    "account",
    "username",
    "password",
    "app_key",
    "app_secret",
    "access_token",
    "access_token_secret",
    "csds_host",
    "csds_scheme",
)
#: The API key's four values: an application login needs them all.
_APP_KEY_OPTIONS = ("app_key", "app_secret", "access_token", "access_token_secret")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _var(name: str) -> str:
    return f"LE_{name.upper()}"


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _named(names: list[str]) -> str:
    """The options ``names`` for a message, each with its variable."""
    return _and([f"{_flag(n)} (or {_var(n)})" if n != "csds_scheme" else _var(n) for n in names])


def account_from(
    args: Mapping[str, str | None], env: Mapping[str, str] | None = None
) -> DemoAccount | None:
    """The real account named on the command line or in ``LE_*`` variables, if any.

    None when neither names an account: the demo then runs against the simulator.
    :class:`AccountOptionsError` when a real account's option is given without the account
    (it would be ignored, and the run pass against the simulator), or when the account comes
    without a username, or without the credentials of either login form: a password (user
    login) or the API key's four values (application login), or with a ``--csds-host`` (or
    ``LE_CSDS_HOST``) that is not a bare hostname with an optional port."""
    environ = os.environ if env is None else env
    account = DemoAccount.from_env(environ, **args)
    if account is None:
        flags = [n for n in ACCOUNT_OPTIONS if args.get(n)]
        variables = [_var(n) for n in ACCOUNT_OPTIONS if environ.get(_var(n)) and n not in flags]
        given = [_flag(n) for n in flags] + variables
        if given:
            raise AccountOptionsError(
                f"{_and(given)} given without --account (or LE_ACCOUNT): a real "
                "account's options need the account to run against (without them all, the "
                "demo runs against the built-in simulator)"
            )
        return None
    if not account.username:
        raise AccountOptionsError(
            f"{_named(['username'])} is needed with --account: the user (or bot user) to log in as"
        )
    if account.scheme not in ("https", "http"):
        raise AccountOptionsError("LE_CSDS_SCHEME must be https (LiveEngage) or http")
    try:
        # A host that can never be one is the command line's mistake, told before any run
        # starts (as a run, it was a FAILED verdict, exit 1). The message shows only the
        # value's host-like start: what follows may be a secret pasted by mistake.
        validate_host(account.csds_host, service="csds", account=account.account)
    except HostileHostError as exc:
        raise AccountOptionsError(f"{_named(['csds_host'])}: {exc}") from None
    if account.password:
        return account
    app_key = {n: getattr(account, n) for n in _APP_KEY_OPTIONS}
    missing = [n for n, value in app_key.items() if not value]
    if len(missing) == len(app_key):
        raise AccountOptionsError(
            f"{_named(['password'])} is needed for a user login; or, for an application "
            f"login, {_named(list(_APP_KEY_OPTIONS))}"
        )
    if missing:
        raise AccountOptionsError(
            f"an application login needs {_named(missing)} too (the API key's four values); "
            f"or give {_named(['password'])} for a user login"
        )
    return account
