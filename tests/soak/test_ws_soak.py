"""WebSocket chaos soak: many sockets, forced drops of every kind, messages flowing both ways.

Agent-like clients hold UMS brand sockets to the simulator (through the Domain API and the
Login Service, on a virtual clock). Each re-subscribes in ``on_connect`` after every connect
and publishes messages without pause, retrying a message only when the library said, with a
typed error, that it may not have arrived; the simulator echoes each published message back as
a notification. Meanwhile a chaos driver drops sockets, one kind at a time: abruptly (the
client sees 1006), with close codes (1000, 1001, 1011, 4401, 4407), by going silent (no answers,
no pongs: the keepalive must find the dead peer), and by restarting the whole server.

The run asserts: every dropped socket came back (one new connection per drop, no more), every
message the clients meant to send reached the server (none silently lost; a message resent
after a drop may arrive twice, and is counted), every echo reached its client unless its socket
was being dropped at that moment, no call hung, no error was untyped; then that nothing leaked.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from le_transport import Engine
from le_transport.clock import timeout_after
from le_transport.errors import SocketError
from le_transport.events import StateEvent
from le_transport.policies.keepalive import MESSAGING_AGENT_SDK_GETCLOCK
from le_transport.providers import CsdsDomains, UserLogin
from le_transport.sockets import ResilientSocket, SocketOptions
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from le_transport.testing.simulator.config import DEFAULT_PASSWORD, DEFAULT_USER
from le_transport.testing.simulator.sockets import SimSocket
from tests.soak._report import (
    REPORTS,
    MemoryProbe,
    SoakSize,
    forget_clock_history,
    leaked_tasks,
    open_fds,
    pytest_keeps_no_records,
    render_table,
    socket_fds,
)

SEED = 20261127
BRAND = "/ws_api/account/{acc}/messaging/brand/{{bearer}}"
PUBLISH = ".ams.ms.PublishEvent"
SUBSCRIBE = ".ams.aam.SubscribeExConversations"
ECHO = ".ams.ms.MessagingEventNotification"
# A single publish (with its retries) still unanswered after this much virtual time is hung.
HANG_LIMIT = 3600.0
RESTART_DOWN_FOR = 2.0

# drop kind -> weight, for drops of one socket.
DROPS: dict[str, int] = {
    "abrupt (1006)": 6,
    "close 1000": 2,
    "close 1001": 3,
    "close 1011": 3,
    "close 4401": 3,
    "close 4407": 2,
    "silent peer": 2,
}
RESTART = "server restart"
# Closes that mean "re-authenticate first" (LivePerson's SDK treats 1011 so too).
AUTH_CLOSES = frozenset({"close 1011", "close 4401", "close 4407"})
# A restart drops every open socket at once; it is drawn so that about this share of all
# drops come from restarts, whatever the number of sockets.
RESTART_SHARE = 0.2


def _prune_closed(sim: Simulator) -> list[int]:
    """Drop the simulator's records of sockets that have ended; return their ids.

    The simulator keeps the record of every socket it accepted (the newest
    ``config.max_records``: an ended socket keeps its frames, not its connection): memory the
    leak check would charge to the library over a long run.
    """
    ended = [s.id for s in sim.sockets.all if s.closed]
    sim.sockets.all[:] = [s for s in sim.sockets.all if not s.closed]
    return ended


async def _apply(kind: str, sock: SimSocket) -> None:
    if kind == "abrupt (1006)":
        sock.drop()
    elif kind == "silent peer":
        sock.silence()
    else:
        await sock.close(int(kind.rsplit(" ", 1)[1]), "soak")


async def test_ws_chaos_soak_every_drop_reconnects_and_no_message_is_lost(
    soak_size: SoakSize, secret_values: set[str]
) -> None:
    """Every forced drop (abrupt, close codes, silent peer, server restart) is followed by
    exactly one reconnect; every message reaches the server (at least once) and every echo
    its client; nothing hangs, every error is typed, and nothing leaks."""
    n_sockets, target = soak_size.ws_sockets, soak_size.ws_drops
    long_run = soak_size is SoakSize.LONG
    clock = VirtualClock()
    rng = random.Random(SEED)
    opens: Counter[int] = Counter()
    losses: Counter[int] = Counter()
    applied: Counter[int] = Counter()
    # Every forced drop: (kind, client, its opens and losses before the drop).
    drops: list[tuple[str, int, int, int]] = []
    confirmed: dict[str, int] = {}  # message id -> client
    attempts: Counter[str] = Counter()
    echoes: Counter[str] = Counter()
    typed_errors: Counter[str] = Counter()
    untyped: list[str] = []
    hung: list[str] = []
    hit: set[int] = set()  # simulator sockets the driver dropped, closed or silenced
    closed_ids: set[int] = set()  # simulator sockets that have ended
    tasks_before = set(asyncio.all_tasks())
    fds_before, sockets_before = open_fds(), socket_fds()
    stop = asyncio.Event()

    with MemoryProbe() as memory, pytest_keeps_no_records():
        async with Simulator(clock=clock) as sim:
            acc = sim.account.id
            domains = CsdsDomains(acc, csds_host=sim.host, scheme="http")
            auth = UserLogin(acc, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains)
            async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
                options = SocketOptions(keepalive=MESSAGING_AGENT_SDK_GETCLOCK)

                def client(i: int) -> tuple[Any, Any, Any]:
                    async def resubscribe(ws: ResilientSocket) -> None:
                        await ws.request(SUBSCRIBE, {"client": i, "convState": ["OPEN"]})

                    def on_frame(frame: Any) -> None:
                        if isinstance(frame, dict) and frame.get("type") == ECHO:
                            for change in frame.get("body", {}).get("changes", []):
                                echoes[str(change.get("event", {}).get("message"))] += 1

                    def on_state(event: StateEvent) -> None:
                        if event.name == "open":
                            opens[i] += 1
                        elif event.name == "lost":
                            losses[i] += 1

                    return resubscribe, on_frame, on_state

                sockets: list[ResilientSocket] = []
                for i in range(n_sockets):
                    resubscribe, on_frame, on_state = client(i)
                    ws = await engine.websocket(
                        "facadeMsg",
                        BRAND.format(acc=acc),
                        params={"v": "2.1"},
                        options=options,
                        on_connect=[resubscribe],
                        on_frame=on_frame,
                    )
                    ws.add_on_state(on_state)
                    sockets.append(ws)
                for ws in sockets:
                    await ws.wait_open(timeout=600)

                async def send_until_confirmed(i: int, ws: ResilientSocket, mid: str) -> None:
                    body = {
                        "dialogId": f"dialog-{i}",
                        "event": {"type": "ContentEvent", "contentType": "text/plain"},
                    }
                    body["event"]["message"] = mid  # type: ignore[index]
                    try:
                        async with timeout_after(clock, HANG_LIMIT):
                            while True:
                                attempts[mid] += 1
                                try:
                                    await ws.request(PUBLISH, body)
                                except SocketError as exc:
                                    # The library says it may not have arrived: send again.
                                    typed_errors[type(exc).__name__] += 1
                                    await clock.sleep(0.5)
                                    continue
                                confirmed[mid] = i
                                return
                    except TimeoutError:
                        hung.append(mid)
                    except Exception as exc:  # an untyped error is a finding: record it
                        untyped.append(f"{exc!r:.200}")

                async def publisher(i: int, ws: ResilientSocket) -> None:
                    own = random.Random(SEED + i)
                    seq = 0
                    while not stop.is_set():
                        seq += 1
                        await send_until_confirmed(i, ws, f"c{i}-m{seq}")
                        await clock.sleep(
                            own.uniform(2.0, 10.0) if long_run else own.uniform(0.2, 1.5)
                        )

                dropped = 0
                held_sockets = 0

                async def chaos() -> None:
                    nonlocal dropped, held_sockets

                    def client_of(sock: SimSocket) -> int | None:
                        for frame in sock.subscriptions:
                            body = frame.get("body")
                            if isinstance(body, dict) and isinstance(body.get("client"), int):
                                return int(body["client"])
                        return None

                    names = list(DROPS)
                    weights = [DROPS[k] for k in names]
                    events = 0
                    restart_p = RESTART_SHARE / (n_sockets * (1 - RESTART_SHARE) + RESTART_SHARE)
                    while dropped < target:
                        await clock.sleep(rng.uniform(0.5, 3.0))
                        candidates = [
                            (s, c)
                            for s in sim.sockets.open
                            if not s.silent and s.id not in hit and (c := client_of(s)) is not None
                        ]
                        if not candidates:
                            continue
                        if events < len(names) + 1:
                            # Every kind at least once, whatever the draws: then at random.
                            kind = [*names, RESTART][events]
                        elif rng.random() < restart_p:
                            kind = RESTART
                        else:
                            kind = rng.choices(names, weights)[0]
                        if kind in AUTH_CLOSES:
                            # The library gives up (SocketAuthFailed) when fresh credentials are
                            # rejected again and again: revoke only a connection that has been
                            # healthy, as a server revoking a token would.
                            now = clock.now()
                            candidates = [
                                (s, c)
                                for s, c in candidates
                                if now - s.opened_at >= options.healthy_after
                            ]
                            if not candidates:
                                continue
                        events += 1
                        victims = candidates if kind == RESTART else [rng.choice(candidates)]
                        for s, c in victims:
                            hit.add(s.id)
                            applied[c] += 1
                            drops.append((kind, c, opens[c], losses[c]))
                        dropped += len(victims)
                        if kind == RESTART:
                            await sim.restart(down_for=RESTART_DOWN_FOR)
                        else:
                            await _apply(kind, victims[0][0])
                        for name, share in (("second tenth", 0.2), ("last tenth", 0.9)):
                            if name not in memory.samples and dropped >= target * share:
                                # Sample when the dust has settled: every socket back and idle.
                                for ws in sockets:
                                    await ws.wait_open(timeout=600)
                                await clock.sleep(1.0)
                                forget_clock_history(clock)
                                closed_ids.update(_prune_closed(sim))
                                memory.sample(name)
                                held_sockets = socket_fds() - sockets_before

                publishers = [
                    asyncio.ensure_future(publisher(i, ws)) for i, ws in enumerate(sockets)
                ]
                try:
                    await chaos()
                finally:
                    stop.set()
                    await asyncio.gather(*publishers, return_exceptions=True)
                # A silent peer is found only by the keepalive, an interval and its timeout
                # after the silence began: a drop of that kind among the last ones must be seen
                # before the losses are counted (virtual time: the wait costs nothing).
                keepalive = MESSAGING_AGENT_SDK_GETCLOCK
                seen_by = clock.now() + 2 * (keepalive.interval + keepalive.timeout)
                while clock.now() < seen_by and any(
                    losses[i] < applied[i] for i in range(n_sockets)
                ):
                    await clock.sleep(1.0)
                for ws in sockets:
                    await ws.wait_open(timeout=600)
                # The last echoes are on their way: let them arrive.
                await clock.sleep(5.0)
                states_at_end = [ws.state.name for ws in sockets]
                for ws in sockets:
                    await ws.close()
                session = auth.session
                if session is not None:
                    secret_values.add(session.bearer.reveal())
            published = list(sim.sockets.published)
            closed_ids.update(s.id for s in sim.sockets.all if s.closed)
    for _ in range(5):
        await asyncio.sleep(0)

    # -- nothing hung, every error typed -------------------------------------------------------
    assert hung == [], f"{len(hung)} publishes hung"
    assert untyped == [], f"untyped errors: {untyped[:5]}"

    # -- 100% reconnect: one new connection per drop, every socket open at the end ------------
    assert states_at_end == ["OPEN"] * n_sockets
    assert dropped >= target
    for i in range(n_sockets):
        assert losses[i] == applied[i], f"client {i}: {losses[i]} losses for {applied[i]} drops"
        assert opens[i] == applied[i] + 1, f"client {i}: {opens[i]} opens for {applied[i]} drops"

    # -- 0 messages silently lost --------------------------------------------------------------
    sent = set(attempts)
    assert set(confirmed) == sent, "a message was neither confirmed nor reported"
    arrivals = Counter(str(m.text) for m in published)
    assert set(arrivals) == sent, "the server saw a message no client sent, or missed one"
    duplicates = sum(n - 1 for n in arrivals.values())
    resent = sum(n - 1 for n in attempts.values())
    assert duplicates <= resent, "a message arrived twice without being sent twice"
    # An echo may be lost only with its socket: the driver hit that socket right then.
    last_publish = {str(m.text): m.socket_id for m in published}
    echo_lost = [mid for mid in sent if echoes[mid] == 0]
    assert all(last_publish[mid] in hit for mid in echo_lost), "an echo was lost on a live socket"
    assert all(last_publish[mid] in closed_ids for mid in echo_lost)

    # -- nothing leaked ------------------------------------------------------------------------
    assert leaked_tasks(tasks_before) == []
    assert open_fds() == fds_before, "file descriptors leaked"
    assert socket_fds() == sockets_before, "connections leaked"
    assert held_sockets <= 4 * n_sockets + 10, f"{held_sockets} sockets held mid-run"
    grew = memory.samples["last tenth"] - memory.samples["second tenth"]
    margin = max(256 * 1024, memory.samples["second tenth"] // 4)
    assert grew <= margin, (
        f"library memory grew by {grew} bytes (margin {margin}): {memory.samples}\n"
        + "\n".join(memory.growth("second tenth", "last tenth"))
    )

    forced: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    back: Counter[str] = Counter()
    for kind, c, opens_before, losses_before in drops:
        forced[kind] += 1
        seen[kind] += losses[c] > losses_before
        back[kind] += opens[c] > opens_before
    rows = [[k, str(forced[k]), str(seen[k]), str(back[k])] for k in (*DROPS, RESTART)]
    rows.append(
        [
            "**all drops**",
            str(dropped),
            str(sum(losses.values())),
            str(sum(opens.values()) - n_sockets),
        ]
    )
    table = render_table(["drop", "forced", "seen by the client", "reconnected"], rows)
    summary = (
        f"{n_sockets} sockets, {dropped} drops, {len(sent)} messages published "
        f"({sum(attempts.values())} sends; {resent} resent after a typed error "
        f"{dict(sorted(typed_errors.items()))}; {duplicates} arrived twice), "
        f"{sum(1 for m in sent if echoes[m])} echoes received, {len(echo_lost)} lost with "
        f"their socket; 0 messages lost, 0 hung, 0 untyped; library memory "
        f"{memory.samples['second tenth'] // 1024} KiB at 2/10, "
        f"{memory.samples['last tenth'] // 1024} KiB at 9/10; fds {fds_before} before and after"
    )
    REPORTS.append((f"WebSocket chaos soak ({soak_size.value})", f"{table}\n\n{summary}"))
