"""OAuth 1.0 across retries: each attempt is a new request, with its own nonce and timestamp.

RFC 5849 3.3: a server may reject a nonce it has seen with the same timestamp and credentials,
and a gateway in front of LiveEngage's APIs does. A 5xx answered from behind that gateway has
already spent the nonce; a retry sent with the same ``Authorization`` header would be refused as
a replay (401), costing the auth middleware's one re-authentication and a misleading log line.
So a provider that signs each request (:attr:`OAuth1Auth.signs_each_request`) signs each
attempt of the retry loop anew, over the same form; a bearer is still put on once per call.

The gateway here is a real aiohttp server on loopback that verifies signatures with the
simulator's independent verifier and remembers nonces, as LiveEngage's does.
"""

from __future__ import annotations

import itertools

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from le_transport import Engine, RetryPolicy
from le_transport.middleware.auth import AuthMiddleware
from le_transport.middleware.retry import RetryMiddleware
from le_transport.providers import Credentials, OAuth1Auth, StaticBearer, StaticDomains
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from le_transport.testing.simulator import oauth1 as verifier
from le_transport.testing.simulator.auth import SeenNonces
from tests.conftest import ServerFactory
from tests.known_secrets import ACCESS_TOKEN, ACCESS_TOKEN_SECRET, APP_SECRET, BEARER
from tests.test_providers import ACCOUNT, make_sim, sim_engine
from tests.test_providers import APP_KEY as APP_KEY_SIM
from tests.test_providers import sim as provider_sim

__all__ = ["provider_sim"]

APP_KEY = "app-key-1"
RETRY = RetryPolicy(pauses=(5.0, 10.0, 15.0))
USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"


class Gateway:
    """Verifies each request's OAuth 1.0 signature and nonce, then answers from ``statuses``
    (the answer of the service behind it: a 5xx comes after the nonce was spent)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.nonces: list[str] = []
        self.answers: list[int] = []
        self.authorizations: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        self.authorizations.append(header)
        status = await self._answer(request, header)
        self.answers.append(status)
        return web.json_response({"status": status}, status=status)

    async def _answer(self, request: web.Request, header: str) -> int:
        if not header.startswith("OAuth "):
            return 401
        oauth = verifier.parse_oauth_header(header)
        form = await request.post() if request.content_type.endswith("urlencoded") else {}
        valid = verifier.verify(
            method=request.method,
            url=request.url,
            oauth=oauth,
            extra_params=[*request.query.items(), *((k, str(v)) for k, v in form.items())],
            consumer_secret=APP_SECRET,
            token_secret=ACCESS_TOKEN_SECRET,
        )
        nonce = oauth.get("oauth_nonce", "")
        replayed = nonce in self.nonces
        self.nonces.append(nonce)
        if not valid or replayed:
            return 401
        return self.statuses.pop(0) if self.statuses else 200


def oauth1(counter: itertools.count[int] | None = None) -> OAuth1Auth:
    numbers = counter or itertools.count(1)
    return OAuth1Auth(
        APP_KEY,
        APP_SECRET,
        ACCESS_TOKEN,
        ACCESS_TOKEN_SECRET,
        wall_clock=lambda: 1_700_000_000.0,
        nonce=lambda: f"nonce-{next(numbers)}",
    )


async def test_a_5xx_retry_is_signed_with_a_fresh_nonce_so_the_gateway_takes_it(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    gateway = Gateway(503, 503)
    host = await serve(gateway.app())
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, auth=oauth1(), retry=RETRY
    ) as engine:
        resp = await engine.request("GET", "svc", "/api/users", params={"v": "4.0"})
    assert resp.status == 200
    # Three attempts, three nonces, no 401 and no re-authentication in between.
    assert gateway.answers == [503, 503, 200]
    assert gateway.nonces == ["nonce-1", "nonce-2", "nonce-3"]
    assert [a.outcome.status for a in resp.attempts] == [503, 503, 200]
    assert clock.now() == pytest.approx(15.0)


async def test_a_retried_form_post_is_signed_anew_over_the_same_form(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    gateway = Gateway(503)
    host = await serve(gateway.app())
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, auth=oauth1(), retry=RETRY
    ) as engine:
        resp = await engine.request(
            "POST", "svc", "/api/search", data={"q": "café", "q2": ""}, idempotent=True
        )
    assert resp.status == 200
    assert gateway.answers == [503, 200]
    assert len(set(gateway.authorizations)) == 2


async def test_a_401_after_a_retry_still_gets_its_one_replay_with_the_whole_schedule(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    # 503, then a 401 (the key was rotated, say), then the replay: 503 and 200.
    gateway = Gateway(503, 401, 503)
    host = await serve(gateway.app())
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, auth=oauth1(), retry=RETRY
    ) as engine:
        resp = await engine.request("GET", "svc", "/api/users")
    assert resp.status == 200
    assert gateway.answers == [503, 401, 503, 200]
    assert len(set(gateway.nonces)) == 4


async def test_a_bearer_is_put_on_once_per_call_and_sent_as_is_on_every_retry(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    seen: list[str] = []
    statuses = [503, 503]

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(status=statuses.pop(0) if statuses else 200)

    app = web.Application()
    app.router.add_get("/api/x", handle)
    host = await serve(app)

    class CountingBearer(StaticBearer):
        __slots__ = ("asked",)

        def __init__(self) -> None:
            super().__init__(BEARER)
            self.asked = 0

        async def credentials(self, method: str, url: URL) -> Credentials:
            self.asked += 1
            return await super().credentials(method, url)

    bearer = CountingBearer()
    async with Engine({"svc": host}, scheme="http", clock=clock, auth=bearer, retry=RETRY) as e:
        resp = await e.request("GET", "svc", "/api/x")
    assert resp.status == 200
    assert seen == [f"Bearer {BEARER}"] * 3
    assert bearer.asked == 1


async def test_a_retry_on_a_foreign_session_is_signed_anew_too(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    gateway = Gateway(503)
    host = await serve(gateway.app())
    auth = AuthMiddleware(auth=oauth1(), domains=StaticDomains({}), allowed_hosts=[host])
    retry = RetryMiddleware(policy=RETRY, clock=clock)
    async with (
        aiohttp.ClientSession(middlewares=(auth, retry)) as session,
        session.get(f"http://{host}/api/users") as resp,
    ):
        assert resp.status == 200
    assert gateway.answers == [503, 200]
    assert gateway.nonces == ["nonce-1", "nonce-2"]


async def test_a_retry_after_a_redirect_to_another_host_carries_no_credentials(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    elsewhere_seen: list[str | None] = []
    statuses = [503]

    async def elsewhere(request: web.Request) -> web.Response:
        elsewhere_seen.append(request.headers.get("Authorization"))
        return web.Response(status=statuses.pop(0) if statuses else 200)

    other = web.Application()
    other.router.add_get("/landing", elsewhere)
    other_host = await serve(other)

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://{other_host}/landing")

    app = web.Application()
    app.router.add_get("/api/moved", moved)
    host = await serve(app)
    async with Engine(
        {"svc": host}, scheme="http", clock=clock, auth=oauth1(), retry=RETRY
    ) as engine:
        resp = await engine.request("GET", "svc", "/api/moved")
    assert resp.status == 200
    # The hop was retried after its 503, and neither of its attempts was signed.
    assert elsewhere_seen == [None, None]


# -- the simulator's gateway, which spends a nonce before a 5xx from behind it ----------------


async def test_the_simulator_takes_a_retry_signed_anew_after_a_5xx(
    provider_sim: Simulator, clock: VirtualClock
) -> None:
    provider_sim.faults.script("GET", USERS, [503, 503])
    auth = OAuth1Auth(APP_KEY_SIM, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET)
    async with sim_engine(
        provider_sim, clock, domains=StaticDomains(provider_sim.domains), auth=auth, retry=RETRY
    ) as engine:
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
    assert resp.status == 200
    assert [a.outcome.status for a in resp.attempts] == [503, 503, 200]
    assert provider_sim.count("GET", USERS) == 3


async def test_the_simulator_refuses_a_retry_that_repeats_the_nonce_as_the_gateway_does(
    provider_sim: Simulator, clock: VirtualClock
) -> None:
    provider_sim.faults.script("GET", USERS, [503])
    signer = OAuth1Auth(APP_KEY_SIM, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET).signer
    url = URL(provider_sim.url + USERS)
    header = {"Authorization": signer.header("GET", url)}
    async with aiohttp.ClientSession() as session:
        for expected in (503, 401):  # the same header again: a replayed nonce
            async with session.get(url, headers=header) as resp:
                assert resp.status == expected


async def test_the_simulator_remembers_its_newest_nonces_only_so_a_long_soak_stays_bounded(
    clock: VirtualClock,
) -> None:
    # A nonce per signed request: a simulator serving a day-long soak keeps the newest
    # max_records of them, so its memory stays flat; a replay within them is still refused.
    signer = OAuth1Auth(APP_KEY_SIM, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET).signer
    async with make_sim(clock, max_records=4) as sim, aiohttp.ClientSession() as session:
        url = URL(sim.url + USERS)
        headers = [{"Authorization": signer.header("GET", url)} for _ in range(10)]
        for header in headers:
            async with session.get(url, headers=header) as resp:
                assert resp.status == 200
        assert len(sim.tokens.nonces) == 4
        async with session.get(url, headers=headers[-1]) as resp:
            assert resp.status == 401  # the newest nonces are remembered: a replay
        async with session.get(url, headers=headers[0]) as resp:
            assert resp.status == 200  # forgotten: the bound's documented price
        assert len(sim.tokens.nonces) == 4


def test_seen_nonces_forget_the_oldest_when_full_and_keep_all_without_a_bound() -> None:
    seen = SeenNonces(2)
    for n in ("a", "b", "a", "c"):
        seen.add(("key", "1", n))
    assert ("key", "1", "a") not in seen  # the oldest, once "c" came ("a" again was no news)
    assert ("key", "1", "b") in seen
    assert ("key", "1", "c") in seen
    assert len(seen) == 2
    unbounded = SeenNonces()
    for i in range(1000):
        unbounded.add(("key", "1", str(i)))
    assert len(unbounded) == 1000
