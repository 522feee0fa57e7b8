"""The Domain API provider against the simulator: fetched once, cached on the clock, shared by
concurrent callers, stale-if-error, typed errors naming the account, hostile hosts refused."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from le_transport import Engine
from le_transport.chaos import Reset, Status
from le_transport.errors import (
    DomainResolutionError,
    EngineClosed,
    HostileHostError,
    RetriesExhausted,
    UnknownServiceError,
)
from le_transport.events import GiveUpEvent, StateEvent
from le_transport.providers import CsdsDomains, StaticBearer, UserLogin
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.conftest import ServerFactory, serve_hanging
from tests.known_secrets import BEARER, PASSWORD
from tests.test_providers import ACCOUNT, USER, csds_for, make_sim, sim, sim_engine

__all__ = ["sim"]

CSDS_PATH = f"/api/account/{ACCOUNT}/service/baseURI.json"
USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"


def hostile_map(sim: Simulator, hostile: str) -> str:
    """A Domain API answer in which ``agentVep`` points somewhere hostile."""
    return json.dumps(
        {
            "baseURIs": [
                {"service": "agentVep", "account": ACCOUNT, "baseURI": hostile},
                {"service": "accountConfigReadOnly", "account": ACCOUNT, "baseURI": sim.host},
            ]
        }
    )


async def test_domain_map_is_fetched_once_and_served_from_cache_within_the_ttl(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim, ttl=600)
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        await clock.sleep(599)
        assert await domains.resolve("accountConfigReadOnly") == sim.host
        assert sim.count("GET", CSDS_PATH) == 1
        await clock.sleep(2)
        # Expired: served at once, refreshed in the background (stale-while-revalidate).
        assert await domains.resolve("agentVep") == sim.host
        await domains.wait_refresh()
        assert sim.count("GET", CSDS_PATH) == 2


async def test_a_hundred_concurrent_resolves_share_one_fetch(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim)
    async with sim_engine(sim, clock, domains=domains):
        hosts = await asyncio.gather(*(domains.resolve("idp") for _ in range(100)))
        assert set(hosts) == {sim.host}
        assert sim.count("GET", CSDS_PATH) == 1
        assert domains.fetches == 1


async def test_the_csdr_prefix_is_configurable(sim: Simulator, clock: VirtualClock) -> None:
    domains = csds_for(sim, path_prefix="/csdr")
    async with sim_engine(sim, clock, domains=domains):
        assert await domains.resolve("agentVep") == sim.host
        assert sim.count("GET", f"/csdr/account/{ACCOUNT}/service/baseURI.json") == 1


async def test_the_first_failure_follows_the_schedule_then_names_the_account(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("GET", CSDS_PATH, [503, 503, 503, 503])
    domains = csds_for(sim)
    async with sim_engine(sim, clock, domains=domains):
        with pytest.raises(DomainResolutionError) as info:
            await domains.resolve("agentVep")
        assert info.value.account == ACCOUNT
        assert ACCOUNT in str(info.value)
        assert sim.count("GET", CSDS_PATH) == 4
        cause = info.value.__cause__
        assert isinstance(cause, RetriesExhausted)
        assert [a.pause for a in cause.attempts] == [5.0, 10.0, 15.0, None]


async def test_a_400_for_an_unknown_account_is_a_domain_error_at_once(
    sim: Simulator, clock: VirtualClock
) -> None:
    from le_transport.providers import CsdsDomains

    domains = CsdsDomains("99999999", csds_host=sim.host, scheme="http")
    async with sim_engine(sim, clock, domains=domains):
        with pytest.raises(DomainResolutionError) as info:
            await domains.resolve("agentVep")
    assert info.value.account == "99999999"
    assert sim.count("GET") == 1


async def test_a_failed_refresh_keeps_serving_the_last_good_map_and_logs_it(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[StateEvent] = []
    domains = csds_for(sim, ttl=60, stale_retry=30)
    async with sim_engine(sim, clock, domains=domains, events=events):
        assert await domains.resolve("agentVep") == sim.host
        await clock.sleep(61)
        sim.faults.script("GET", CSDS_PATH, [503, Reset()])
        with caplog.at_level(logging.WARNING, logger="le_transport.domains"):
            assert await domains.resolve("agentVep") == sim.host
            await domains.wait_refresh()  # the refresh runs in the background
        # One attempt, no 5/10/15 s schedule in front of a caller that has a map.
        assert sim.count("GET", CSDS_PATH) == 2
        assert "serving the last good map" in caplog.text
        assert [e.name for e in events] == ["domains_stale"]
        # Within stale_retry the Domain API is not asked again...
        await clock.sleep(29)
        assert await domains.resolve("agentVep") == sim.host
        assert sim.count("GET", CSDS_PATH) == 2
        # ... after it, it is (and this time the Reset fault answers: still stale).
        await clock.sleep(2)
        assert await domains.resolve("agentVep") == sim.host
        await domains.wait_refresh()
        assert sim.count("GET", CSDS_PATH) == 3
        await clock.sleep(31)
        assert await domains.resolve("agentVep") == sim.host
        await domains.wait_refresh()
        assert sim.count("GET", CSDS_PATH) == 4


@pytest.mark.parametrize("fault", ["503", "reset"])
async def test_a_failed_refresh_gives_up_with_a_warning_saying_the_last_good_map_is_served(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """Its one attempt failed nothing for any caller (a token fetched early, say): the retry
    middleware's give-up line is a WARNING that says what is served instead, not an ERROR, and
    the on_giveup hook is told the caller handles it."""
    caplog.set_level(logging.DEBUG, logger="le_transport")
    giveups: list[GiveUpEvent] = []
    domains = csds_for(sim, ttl=60)
    async with sim_engine(sim, clock, domains=domains, giveups=giveups):
        assert await domains.resolve("agentVep") == sim.host
        await clock.sleep(61)
        sim.faults.script("GET", CSDS_PATH, [503 if fault == "503" else Reset()])
        caplog.clear()
        assert await domains.resolve("agentVep") == sim.host
        await domains.wait_refresh()  # the refresh runs in the background
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    [gave_up] = [r for r in caplog.records if r.name == "le_transport.retry"]
    assert gave_up.levelno == logging.WARNING
    assert gave_up.getMessage().endswith("; handled: the last good map is served")
    assert [(g.service, g.attempts, g.handled_by_caller) for g in giveups] == [("csds", 1, True)]


async def test_a_first_fetch_that_fails_has_no_map_to_fall_back_on_and_is_an_error(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport")
    giveups: list[GiveUpEvent] = []
    sim.faults.script("GET", CSDS_PATH, [503] * 4)
    domains = csds_for(sim)
    async with sim_engine(sim, clock, domains=domains, giveups=giveups):
        with pytest.raises(DomainResolutionError):
            await domains.resolve("agentVep")
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.name == "le_transport.retry"
    assert "handled" not in error.getMessage()
    assert [(g.attempts, g.handled_by_caller) for g in giveups] == [(4, False)]


async def test_an_unknown_service_lists_the_services_the_account_has(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim)
    async with sim_engine(sim, clock, domains=domains):
        with pytest.raises(UnknownServiceError) as info:
            await domains.resolve("agentvep")
    assert info.value.service == "agentvep"
    assert "agentVep" in info.value.known
    assert "agentVep" in str(info.value)
    assert "case sensitive" in str(info.value)
    assert info.value.account == ACCOUNT


@pytest.mark.parametrize(
    "hostile",
    [
        "evil.example/steal",
        "user@evil.example",
        "https://evil.example",
        "evil.example\r\nX-Injected: 1",
        "evil.example\n",
    ],
)
async def test_a_hostile_host_is_refused_and_no_credential_is_sent_to_it(
    sim: Simulator, clock: VirtualClock, hostile: str
) -> None:
    sim.faults.script("GET", CSDS_PATH, [Status(200, body=hostile_map(sim, hostile))])
    domains = csds_for(sim)
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains)
    async with sim_engine(sim, clock, domains=domains, auth=auth) as engine:
        # The other services of the map still work.
        assert await domains.resolve("accountConfigReadOnly") == sim.host
        with pytest.raises(HostileHostError) as info:
            await domains.resolve("agentVep")
        assert info.value.account == ACCOUNT
        # Logging in needs agentVep: refused before anything is sent.
        with pytest.raises(HostileHostError):
            await engine.request("GET", "accountConfigReadOnly", USERS)
    assert sim.count("POST") == 0
    assert all("Authorization" not in r.headers for r in sim.requests)


async def test_a_static_bearer_is_not_sent_to_a_service_with_a_hostile_host(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("GET", CSDS_PATH, [Status(200, body=hostile_map(sim, "evil.example/x"))])
    async with sim_engine(sim, clock, auth=StaticBearer(BEARER)) as engine:
        with pytest.raises(HostileHostError):
            await engine.request("GET", "agentVep", "/api/whatever")
    assert [r.method for r in sim.requests] == ["GET"]  # the Domain API call only


async def test_invalidate_makes_the_next_resolve_fetch_again(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim)
    async with sim_engine(sim, clock, domains=domains):
        await domains.resolve("agentVep")
        await domains.invalidate()
        await domains.resolve("agentVep")
        assert sim.count("GET", CSDS_PATH) == 2
        assert dict(await domains.refresh())["idp"] == sim.host
        assert sim.count("GET", CSDS_PATH) == 3


async def test_a_login_answer_warms_the_domain_cache(clock: VirtualClock) -> None:
    async with make_sim(clock) as sim:
        domains = csds_for(sim, ttl=600)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
        async with sim_engine(sim, clock, domains=domains, auth=auth) as engine:
            await engine.login()
            assert sim.count("GET", CSDS_PATH) == 1
            # The map's lifetime starts over from the login answer.
            await clock.sleep(500)
            await domains.resolve("msgHist")
            assert sim.count("GET", CSDS_PATH) == 1


async def test_engine_requests_resolve_through_the_domain_api(
    sim: Simulator, clock: VirtualClock
) -> None:
    domains = csds_for(sim)
    auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains, keepalive=False)
    async with sim_engine(sim, clock, domains=domains, auth=auth) as engine:
        users = await engine.request_json("GET", "accountConfigReadOnly", USERS, expect=list)
    assert [u["loginName"] for u in users] == [USER]


async def test_an_absurdly_nested_answer_is_a_domain_error_not_a_recursion_error(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("GET", CSDS_PATH, [Status(200, body="[" * 100_000 + "]" * 100_000)])
    domains = csds_for(sim)
    async with sim_engine(sim, clock, domains=domains):
        with pytest.raises(DomainResolutionError, match="not JSON"):
            await domains.resolve("agentVep")


@pytest.mark.parametrize(
    "answer",
    [
        {"baseURIs": []},
        {"baseURIs": [None, "x", {"service": 5}, {"baseURI": "va.example"}]},
        {"baseURIs": [{"service": "agentVep", "baseURI": "evil.example/steal"}]},
    ],
    ids=["empty", "all-malformed", "all-hostile"],
)
async def test_a_refresh_answering_no_usable_service_keeps_serving_the_last_good_map(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture, answer: object
) -> None:
    """Installed, such a map failed every service (UnknownServiceError, HostileHostError) for a
    whole TTL; as a failed refresh, stale-if-error serves the last good one."""
    events: list[StateEvent] = []
    domains = csds_for(sim, ttl=60, stale_retry=30)
    async with sim_engine(sim, clock, domains=domains, events=events):
        assert await domains.resolve("agentVep") == sim.host
        await clock.sleep(61)
        sim.faults.script("GET", CSDS_PATH, [Status(200, body=json.dumps(answer))])
        with caplog.at_level(logging.WARNING, logger="le_transport.domains"):
            assert await domains.resolve("agentVep") == sim.host
            await domains.wait_refresh()  # the refresh runs in the background
        assert "without one usable service" in caplog.text
        assert "serving the last good map" in caplog.text
        assert [e.name for e in events] == ["domains_stale"]
        assert domains.hosts["agentVep"] == sim.host
        # Asked again after stale_retry (the script is spent: a good map this time).
        await clock.sleep(31)
        assert await domains.resolve("accountConfigReadOnly") == sim.host
        await domains.wait_refresh()
        assert sim.count("GET", CSDS_PATH) == 3


async def test_a_first_fetch_answering_an_empty_map_names_no_service(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Without a map to fall back to, an empty one is what the account has: resolving says so."""
    sim.faults.script("GET", CSDS_PATH, [Status(200, body=json.dumps({"baseURIs": []}))])
    domains = csds_for(sim)
    async with sim_engine(sim, clock, domains=domains):
        with pytest.raises(UnknownServiceError, match="its services: none"):
            await domains.resolve("agentVep")


@pytest.mark.parametrize("recover", [False, True], ids=["fail-fast", "recover"])
async def test_a_call_waiting_for_the_domain_map_when_the_engine_closes_gets_engine_closed(
    serve: ServerFactory, clock: VirtualClock, recover: bool
) -> None:
    host, arrived, never = await serve_hanging(
        serve, "/api/account/{account}/service/baseURI.json", "GET"
    )
    domains = CsdsDomains(ACCOUNT, csds_host=host, scheme="http")
    engine = Engine(domains, scheme="http", clock=clock)
    await engine.start()
    call = asyncio.ensure_future(engine.request("GET", "agentVep", "/x", recover=recover))
    await arrived.wait()
    await engine.close()
    never.set()
    with pytest.raises(EngineClosed, match=r"csds\[\d+\]: the Domain API fetch in progress"):
        await call
    assert not call.cancelled()
