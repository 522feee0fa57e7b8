"""HTTP chaos soak: thousands of calls against the simulator with ~30% of requests faulted.

Every kind of fault the vocabulary has for HTTP is injected by the simulator from one seeded
plan: 5xx, resets, timeouts (hangs), slow answers, truncated and empty answers, malformed JSON,
401 (a token the server no longer accepts), 429 with ``Retry-After``, 404. Between batches the
simulator also expires every token for real. Calls run concurrently through the whole stack
(Domain API, Login Service, auth middleware, retry middleware) on a virtual clock, so the
guide's 5/10/15 s schedule costs no wall time.

For every call the simulator's records (tagged with the call's number) give the exact sequence
of faults it met; a small model of the guide's rules predicts, from that sequence alone, how
many requests the call must make, the pause before each retry, and how it must end. The run
asserts that every call ended, as a success or a typed error, exactly as predicted; then that
nothing leaked: tasks, file descriptors, connections, memory.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

import pytest

from le_transport import Engine
from le_transport.chaos import (
    Delay,
    EmptyResponse,
    Fault,
    FaultPlan,
    FaultRule,
    Hang,
    MalformedBody,
    Match,
    Reset,
    Status,
    TruncatedBody,
)
from le_transport.clock import timeout_after
from le_transport.errors import (
    AttemptTimeout,
    AuthenticationError,
    ClientStatusError,
    ConnectionFailed,
    ResponseDecodeError,
    RetriesExhausted,
    ServerStatusError,
    TransportError,
)
from le_transport.policies.retry import RetryPolicy
from le_transport.providers import CsdsDomains, UserLogin
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from le_transport.testing.simulator.config import DEFAULT_PASSWORD, DEFAULT_USER
from tests.soak._report import (
    REPORTS,
    FaultTally,
    MemoryProbe,
    SoakSize,
    forget_clock_history,
    leaked_tasks,
    open_fds,
    pytest_keeps_no_records,
    render_table,
    socket_fds,
)

SEED = 20261126
CONCURRENCY = 25
ATTEMPT_TIMEOUT = 10.0
SCHEDULE = (5.0, 10.0, 15.0)
RETRY_AFTER = 12.0
SLOW = 2.0
# A call still running after this much virtual time is hung (the longest legitimate call:
# two loops of four 10 s timeouts and 30 s of pauses).
HANG_LIMIT = 3600.0

USERS = "/api/account/{acc}/configuration/le-users/users"
SEARCH = "/interaction_history/api/account/{acc}/interactions/search"

# rule id -> (fault, probability per request). About 30% of REST requests are faulted.
FAULTS: dict[str, tuple[Fault, float]] = {
    "503": (Status(503), 0.05),
    "500": (Status(500), 0.02),
    "reset": (Reset(), 0.035),
    "timeout": (Hang(duration_ms=60_000), 0.02),
    "slow": (Delay(delay_ms=SLOW * 1000), 0.03),
    "truncated": (TruncatedBody(keep_bytes=5), 0.02),
    "empty": (EmptyResponse(), 0.02),
    "malformed JSON": (MalformedBody(), 0.02),
    "401": (Status(401), 0.025),
    "429 + Retry-After": (Status(429, retry_after=RETRY_AFTER), 0.03),
    "404": (Status(404), 0.02),
}
ORGANIC = "401 (tokens expired)"
# A slow answer (Delay) whose real handler then found the token expired.
ORGANIC_SLOW = "slow, then 401 (tokens expired)"


def _plan() -> FaultPlan:
    rules = []
    for rule_id, (fault, p) in FAULTS.items():
        for path in ("/api/account/*/configuration/le-users/users", "/interaction_history/*"):
            rules.append(
                FaultRule(id=f"{rule_id}@{path[:12]}", fault=fault, match=Match(path=path), p=p)
            )
    return FaultPlan(seed=SEED, rules=tuple(rules))


def _rule_kind(rule_id: str) -> str:
    # A fresh string owned by the test, not a slice of the simulator's record.
    return "".join(rule_id.split("@", 1)[0])


# -- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """What the guide's rules say a call must do, given the faults it met in order."""

    requests: int
    result: str  # ok | decode | client | auth | exhausted | server | broken | timeout
    pauses: tuple[float, ...]  # the gap before each request after the first


def _meaning(kind: str | None) -> str:
    return {
        None: "ok",
        "slow": "ok",
        "503": "server",
        "500": "server",
        "429 + Retry-After": "rate",
        "reset": "broken",
        "truncated": "broken",
        "empty": "broken",
        "timeout": "timeout",
        "malformed JSON": "decode",
        "401": "unauthorized",
        ORGANIC: "unauthorized",
        ORGANIC_SLOW: "unauthorized",
        "404": "client",
    }[kind]


def predict(method: str, faults: list[str | None]) -> Prediction:
    """Replay the guide's rules over the faults a call met.

    A 5xx, a 429, a broken connection or a timeout is retried (3 retries pausing 5, 10, 15 s;
    a 429 never sooner than its Retry-After); a POST only after a 429. A 4xx is final, except
    that a 401 re-authenticates and replays once. A timed-out attempt takes the attempt
    timeout; every other fault here answers at once.
    """
    idempotent = method != "POST"
    pauses: list[float] = []
    i = 0
    for loop in (1, 2):
        for attempt in range(1, len(SCHEDULE) + 2):
            if i >= len(faults):
                return Prediction(i + 1, "missing", tuple(pauses))
            kind = faults[i]
            meaning = _meaning(kind)
            i += 1
            if meaning in ("ok", "decode", "client"):
                return Prediction(i, meaning, tuple(pauses))
            if meaning == "unauthorized":
                if loop == 2:
                    return Prediction(i, "auth", tuple(pauses))
                # Re-login, then the replay goes out at once (after the slow answer, if any).
                pauses.append(SLOW if kind == ORGANIC_SLOW else 0.0)
                break
            retryable = meaning == "rate" or (idempotent and meaning != "unauthorized")
            if not retryable:
                return Prediction(i, meaning, tuple(pauses))
            if attempt > len(SCHEDULE):
                return Prediction(i, "exhausted", tuple(pauses))
            pause = SCHEDULE[attempt - 1]
            if meaning == "rate":
                pause = max(pause, RETRY_AFTER)
            took = ATTEMPT_TIMEOUT if meaning == "timeout" else 0.0
            pauses.append(took + pause)
    raise AssertionError("unreachable: two loops always end the call")


def _result_of(outcome: BaseException) -> str:
    if isinstance(outcome, ResponseDecodeError):
        return "decode"
    if isinstance(outcome, ClientStatusError):
        return "client"
    if isinstance(outcome, AuthenticationError):
        return "auth"
    if isinstance(outcome, RetriesExhausted):
        return "exhausted"
    if isinstance(outcome, ServerStatusError):
        return "server"
    if isinstance(outcome, AttemptTimeout):
        return "timeout"
    if isinstance(outcome, ConnectionFailed):
        return "broken"
    return f"unexpected {type(outcome).__name__}"


# -- the run ----------------------------------------------------------------------------------


async def test_http_chaos_soak_every_call_ends_as_scheduled_and_nothing_leaks(
    soak_size: SoakSize, secret_values: set[str]
) -> None:
    """Every call ends (none hangs) as a success or a typed error; each made exactly the
    requests, with exactly the pauses, the guide's rules predict from the faults it met; no
    4xx was retried; and the run leaks no task, file descriptor, connection or memory."""
    calls = soak_size.http_calls
    clock = VirtualClock()
    rng = random.Random(SEED)
    methods = ["POST" if rng.random() < 0.2 else "GET" for _ in range(calls)]
    # call -> (result, what ended it): results only, no exception (its traceback would hold
    # the call's frames, memory the leak check would charge to the library).
    outcomes: dict[int, tuple[str, str]] = {}
    tasks_before = set(asyncio.all_tasks())
    fds_before = open_fds()
    sockets_before = socket_fds()
    organic_expiries = 0
    requests: list[Seen] = []
    injected: Counter[str] = Counter()
    with MemoryProbe() as memory, pytest_keeps_no_records():
        async with Simulator(clock=clock, plan=_plan()) as sim:
            acc = sim.account.id
            domains = CsdsDomains(acc, csds_host=sim.host, scheme="http")
            auth = UserLogin(acc, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains)
            async with Engine(
                domains,
                scheme="http",
                clock=clock,
                auth=auth,
                retry=RetryPolicy(attempt_timeout=ATTEMPT_TIMEOUT),
                rng=random.Random(SEED),
                connection_limit=CONCURRENCY,
            ) as engine:

                async def call(n: int) -> None:
                    method = methods[n]
                    params = {"call": str(n)}
                    try:
                        async with timeout_after(clock, HANG_LIMIT):
                            if method == "GET":
                                await engine.request_json(
                                    "GET",
                                    "accountConfigReadOnly",
                                    USERS.format(acc=acc),
                                    params={"v": "6.0", **params},
                                    expect=list,
                                )
                            else:
                                await engine.request_json(
                                    "POST",
                                    "engHistDomain",
                                    SEARCH.format(acc=acc),
                                    params=params,
                                    json={"start": {"from": 0, "to": 1}},
                                    expect=dict,
                                )
                        outcomes[n] = ("ok", "ok")
                    except TimeoutError:
                        outcomes[n] = ("hung", "hung")
                    except TransportError as exc:
                        outcomes[n] = (_result_of(exc), f"{exc!r:.200}")
                    except Exception as exc:  # an untyped error is a finding: record it
                        outcomes[n] = ("untyped", f"{exc!r:.200}")

                sem = asyncio.Semaphore(CONCURRENCY)

                async def bounded(n: int) -> None:
                    async with sem:
                        await call(n)

                batch = 100
                for start in range(0, calls, batch):
                    if start and (start // batch) % 3 == 0:
                        # Tokens expire for real between batches: the next call meets a 401
                        # from the Login Service's point of view, re-logs in and replays.
                        await sim.expire_tokens()
                        organic_expiries += 1
                    await asyncio.gather(
                        *(bounded(n) for n in range(start, min(calls, start + batch)))
                    )
                    _collect(sim, requests, injected)
                    done = min(calls, start + batch)
                    if "second tenth" not in memory.samples and done >= calls // 5:
                        forget_clock_history(clock)
                        memory.sample("second tenth")
                    if done >= calls * 9 // 10 and "last tenth" not in memory.samples:
                        forget_clock_history(clock)
                        memory.sample("last tenth")
                        held_sockets = socket_fds() - sockets_before
                session = auth.session
                if session is not None:
                    secret_values.add(session.bearer.reveal())
            _collect(sim, requests, injected)
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)

    # -- 100% accounted: every call ended, none hung, none with an untyped error ---------------
    assert len(outcomes) == calls
    hung = [n for n, o in outcomes.items() if o[0] == "hung"]
    assert hung == [], f"{len(hung)} calls hung"
    untyped = {n: o[1] for n, o in outcomes.items() if o[0] == "untyped"}
    assert untyped == {}, f"untyped errors: {list(untyped.values())[:5]}"

    # -- each call against the model -----------------------------------------------------------
    per_call: dict[int, list[Seen]] = defaultdict(list)
    for seen_request in requests:
        per_call[seen_request.call].append(seen_request)
    # A 401 the simulator answered without a fault rule is an expired token.
    tally = FaultTally()
    mismatches: list[str] = []
    for n in range(calls):
        seen = per_call.get(n, [])
        faults = [r.kind for r in seen]
        got = outcomes[n][0]
        gaps = tuple(b.at - a.at for a, b in itertools.pairwise(seen))
        faults = _with_organic_401s(faults, gaps, got, methods[n])
        expected = predict(methods[n], faults)
        ok = (
            expected.requests == len(seen)
            and expected.result == got
            and gaps == pytest.approx(expected.pauses)
        )
        if not ok:
            mismatches.append(
                f"call {n} {methods[n]}: faults {faults}, gaps {gaps}: expected {expected}, "
                f"got {got} ({outcomes[n][1]})"
            )
        kinds = {k for f in faults if f for k in ((ORGANIC, "slow") if f == ORGANIC_SLOW else (f,))}
        for kind in kinds:
            tally.calls_hit[kind] += 1
            if got == "ok":
                tally.ended_ok[kind] += 1
            else:
                tally.ended_typed[kind] += 1
            if ok:
                tally.as_scheduled[kind] += 1
        tally.injected[ORGANIC] += sum(1 for f in faults if f in (ORGANIC, ORGANIC_SLOW))
    tally.injected.update(injected)
    assert mismatches == [], f"{len(mismatches)} calls off schedule:\n" + "\n".join(mismatches[:10])

    # -- no 4xx retried ------------------------------------------------------------------------
    for n, seen in per_call.items():
        met = [r.kind for r in seen]
        assert "404" not in met[:-1], f"call {n}: a 404 was retried"

    # -- ~30% of REST requests faulted, every kind present -------------------------------------
    tagged = len(requests)
    faulted = sum(1 for r in requests if r.kind is not None)
    assert 0.2 < faulted / tagged < 0.4, f"{faulted}/{tagged} requests faulted"
    assert all(tally.injected[k] > 0 for k in FAULTS), tally.injected

    # -- nothing leaked ------------------------------------------------------------------------
    assert leaked_tasks(tasks_before) == []
    assert open_fds() == fds_before, "file descriptors leaked"
    assert socket_fds() == sockets_before, "connections leaked"
    assert held_sockets <= 2 * CONCURRENCY + 10, f"{held_sockets} sockets held mid-run"
    grew = memory.samples["last tenth"] - memory.samples["second tenth"]
    margin = max(256 * 1024, memory.samples["second tenth"] // 4)
    assert grew <= margin, (
        f"library memory grew by {grew} bytes (margin {margin}): {memory.samples}\n"
        + "\n".join(memory.growth("second tenth", "last tenth"))
    )

    ok_calls = sum(1 for o in outcomes.values() if o[0] == "ok")
    results = Counter(o[0] for o in outcomes.values())
    rows = tally.rows([*FAULTS, ORGANIC])
    rows.append(
        [
            "**all calls**",
            str(faulted + tally.injected[ORGANIC]),
            str(calls),
            str(ok_calls),
            str(calls - ok_calls),
            str(calls - len(mismatches)),
        ]
    )
    table = render_table(
        ["fault", "injected", "calls hit", "ended ok", "typed error", "as scheduled"], rows
    )
    summary = (
        f"{calls} calls ({methods.count('POST')} POST), {tagged} requests, "
        f"{faulted / tagged:.0%} faulted, {organic_expiries} real token expiries; "
        f"results {dict(sorted(results.items()))}; 0 hung, 0 untyped; "
        f"library memory {memory.samples['second tenth'] // 1024} KiB at 2/10, "
        f"{memory.samples['last tenth'] // 1024} KiB at 9/10; fds {fds_before} before and after"
    )
    REPORTS.append((f"HTTP chaos soak ({soak_size.value})", f"{table}\n\n{summary}"))


@dataclass(frozen=True)
class Seen:
    """A request the simulator received for a tagged call: when, and the fault it applied."""

    call: int
    at: float
    kind: str | None


def _collect(sim: Simulator, requests: list[Seen], injected: Counter[str]) -> None:
    """Move the simulator's records into compact form and clear them.

    The simulator keeps every request and decision (redacted strings and header dicts); over
    a long run that is memory the leak check would charge to the library.
    """
    for r in sim.requests:
        tag = r.query.get("call")
        if tag is not None:
            kind = None if r.rule_id is None else _rule_kind(r.rule_id)
            requests.append(Seen(int(tag), float(r.at), kind))
    for decision in sim.faults.injected():
        injected[_rule_kind(decision.rule_id)] += 1
    sim.requests.clear()
    sim.faults.log.clear()


def _with_organic_401s(
    faults: list[str | None], gaps: tuple[float, ...], got: str, method: str
) -> list[str | None]:
    """Mark the request that met an expired token (a 401 without a fault rule), if any.

    The simulator records no fault for it: it is the real handler's 401, after a real expiry.
    Any request that reached the handler (no fault, or a slow one) is a candidate; at most one
    per call (the re-login brings a token that stays valid until the next expiry, and expiries
    happen only between batches). The reading that explains what the call did is kept.
    """

    def explains(candidate: list[str | None]) -> bool:
        p = predict(method, candidate)
        return p.requests == len(faults) and p.result == got and gaps == pytest.approx(p.pauses)

    if explains(faults):
        return faults
    for j, kind in enumerate(faults):
        if kind in (None, "slow"):
            candidate = list(faults)
            candidate[j] = ORGANIC if kind is None else ORGANIC_SLOW
            if explains(candidate):
                return candidate
    return faults
