"""The request path's credentials: a redirect hop to another origin (scheme, host or port)
carries none of the caller's own secret headers, a hop on the call's origin keeps them; an
OAuth 1.0 signature leaves a caller's ``oauth_signature`` parameter out of its base string."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time

import aiohttp
import pytest
from aiohttp import ClientRequest, web
from oauthlib import oauth1 as independent  # type: ignore[import-untyped]
from yarl import URL

from le_transport import RealClock, RetryMiddleware, RetryPolicy
from le_transport.chaos import Status
from le_transport.errors import ClientStatusError
from le_transport.middleware.context import CallContext, drop_secret_headers
from le_transport.providers import OAuth1Auth, OAuth1Signer, StaticBearer, StaticDomains
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from le_transport.testing.simulator.oauth1 import parse_oauth_header, verify
from tests.conftest import ServerFactory
from tests.known_secrets import ACCESS_TOKEN, ACCESS_TOKEN_SECRET, APP_SECRET, BEARER
from tests.test_auth_middleware import login_for
from tests.test_providers import ACCOUNT, APP_KEY, USER, sim, sim_engine
from tests.test_retry_middleware import Script, _reply_with

__all__ = ["sim"]

USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"

#: The caller's own headers: three a credential's name gives away, one that is no secret.
CALLER_HEADERS = {
    "X-Api-Key": "caller-api-key-1",
    "X-Auth-Token": "caller-auth-token-2",
    "X-Partner-Secret": "caller-partner-3",
    "X-Request-Id": "trace-4",
}
SECRET_NAMES = ("X-Api-Key", "X-Auth-Token", "X-Partner-Secret")


async def _recorder(serve: ServerFactory) -> tuple[str, list[dict[str, str]]]:
    """A plain loopback app (another origin) recording the headers of every request."""
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return await serve(app), seen


@pytest.mark.parametrize("recover", [False, True])
async def test_a_redirect_to_another_origin_drops_the_callers_secret_headers(
    sim: Simulator, clock: VirtualClock, serve: ServerFactory, recover: bool
) -> None:
    elsewhere, seen = await _recorder(serve)
    sim.faults.script(
        "GET", USERS, [Status(302, headers={"Location": f"http://{elsewhere}/steal"}, body="")]
    )
    async with sim_engine(
        sim, clock, domains=StaticDomains(sim.domains), auth=StaticBearer(BEARER)
    ) as engine:
        resp = await engine.request(
            "GET", "accountConfigReadOnly", USERS, headers=CALLER_HEADERS, recover=recover
        )
    assert resp.status == 200
    assert len(seen) == 1
    got = {k.lower() for k in seen[0]}
    for name in (*SECRET_NAMES, "Authorization"):
        assert name.lower() not in got, name
    # Not a secret: still sent.
    assert {k.lower(): v for k, v in seen[0].items()}["x-request-id"] == "trace-4"
    # The service's own host did get them (the test would prove nothing otherwise).
    first = sim.requests[0].headers
    assert all(name in first for name in SECRET_NAMES)


async def test_an_oauth1_call_redirected_elsewhere_is_neither_signed_nor_given_caller_secrets(
    sim: Simulator, clock: VirtualClock, serve: ServerFactory
) -> None:
    elsewhere, seen = await _recorder(serve)
    sim.faults.script(
        "GET", USERS, [Status(307, headers={"Location": f"http://{elsewhere}/steal"}, body="")]
    )
    auth = OAuth1Auth("app-key", APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET)
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        await engine.request("GET", "accountConfigReadOnly", USERS, headers=CALLER_HEADERS)
    assert len(seen) == 1
    got = {k.lower() for k in seen[0]}
    assert not got & {n.lower() for n in (*SECRET_NAMES, "Authorization")}


async def test_a_redirect_to_another_port_of_the_same_host_is_another_origin(
    sim: Simulator, clock: VirtualClock, serve: ServerFactory
) -> None:
    """Both servers are 127.0.0.1: only the port differs."""
    elsewhere, seen = await _recorder(serve)
    assert elsewhere.split(":")[0] == sim.host.split(":")[0]
    sim.faults.script(
        "GET", USERS, [Status(301, headers={"Location": f"http://{elsewhere}/x"}, body="")]
    )
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains)) as engine:
        await engine.request("GET", "accountConfigReadOnly", USERS, headers=CALLER_HEADERS)
    assert len(seen) == 1
    assert not {k.lower() for k in seen[0]} & {n.lower() for n in SECRET_NAMES}


async def test_a_redirect_on_the_same_origin_keeps_the_callers_secret_headers(
    sim: Simulator, clock: VirtualClock
) -> None:
    moved = f"/api/account/{ACCOUNT}/configuration/le-users/users/1"
    sim.faults.script("GET", USERS, [Status(302, headers={"Location": moved}, body="")])
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await engine.request("GET", "accountConfigReadOnly", USERS, headers=CALLER_HEADERS)
    gets = [r for r in sim.requests if r.method == "GET" and r.path.startswith(USERS)]
    assert [r.path for r in gets] == [USERS, moved]
    for request in gets:
        assert all(name in request.headers for name in SECRET_NAMES)
        assert "Authorization" in request.headers


async def test_a_redirect_to_another_name_of_the_same_server_is_another_origin(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """``localhost`` and ``127.0.0.1`` on the same port: the same server, but another host, so
    another origin. The WARNING names the headers it did not send, never their values."""
    port = sim.host.rpartition(":")[2]
    moved = f"http://localhost:{port}{USERS}/1"
    sim.faults.script("GET", USERS, [Status(302, headers={"Location": moved}, body="")])
    caplog.set_level(logging.WARNING, logger="le_transport")
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains)) as engine:
        with pytest.raises(ClientStatusError) as info:
            await engine.request("GET", "accountConfigReadOnly", USERS, headers=CALLER_HEADERS)
    assert info.value.status == 401  # the simulator wants a bearer: the engine has none
    first, hop = [r for r in sim.requests if r.path.startswith(USERS)]
    assert all(name in first.headers for name in SECRET_NAMES)
    assert not {k.lower() for k in hop.headers} & {n.lower() for n in SECRET_NAMES}
    shown = "\n".join(r.getMessage() for r in caplog.records)
    assert "X-Api-Key, X-Auth-Token, X-Partner-Secret" in shown
    assert not any(value in shown for value in CALLER_HEADERS.values())


async def test_a_hop_back_to_the_calls_origin_is_sent_them_again(
    sim: Simulator, clock: VirtualClock, serve: ServerFactory
) -> None:
    """Service host → elsewhere → the service host: the foreign hop gets none, the hop back
    gets the caller's headers and the credentials again, as the first did."""
    seen: list[dict[str, str]] = []
    back = f"http://{sim.host}{USERS}/1"

    async def bounce(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(status=302, headers={"Location": back})

    app = web.Application()
    app.router.add_get("/{tail:.*}", bounce)
    elsewhere = await serve(app)
    sim.faults.script(
        "GET", USERS, [Status(302, headers={"Location": f"http://{elsewhere}/x"}, body="")]
    )
    auth = login_for(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        user = await engine.request_json(
            "GET", "accountConfigReadOnly", USERS, headers=CALLER_HEADERS
        )
    assert user["loginName"] == USER
    assert len(seen) == 1
    assert not {k.lower() for k in seen[0]} & {n.lower() for n in (*SECRET_NAMES, "Authorization")}
    gets = [r for r in sim.requests if r.path.startswith(USERS)]
    assert [r.path for r in gets] == [USERS, f"{USERS}/1"]
    for request in gets:
        assert all(name in request.headers for name in (*SECRET_NAMES, "Authorization"))


# -- OAuth 1.0: a parameter of the caller's named oauth_signature ------------------------------

_CK, _CS, _TK, _TS = "ck-1", "cs-1 &x", "tk-1", "ts-1/=+"


def _independent() -> independent.Client:
    return independent.Client(
        _CK,
        client_secret=_CS,
        resource_owner_key=_TK,
        resource_owner_secret=_TS,
        nonce="n0nce",
        timestamp="1700000000",
    )


def _oauth_params(header: str) -> dict[str, str]:
    return parse_oauth_header(header)


def test_the_signer_leaves_a_query_oauth_signature_out_of_the_base_string() -> None:
    """RFC 5849 3.4.1.3.1: ``oauth_signature`` is excluded from the base string wherever it
    is found; oauthlib (an independent signer) leaves it out, and so must ours."""
    url = URL("https://va.example.net/x?a=1&oauth_signature=zzz")
    signer = OAuth1Signer(_CK, _CS, _TK, _TS)
    ours = _oauth_params(signer.header("GET", url, nonce="n0nce", timestamp="1700000000"))
    _, headers, _ = _independent().sign(str(url), http_method="GET")
    assert ours == _oauth_params(headers["Authorization"])


def test_the_signer_leaves_a_form_fields_oauth_signature_out_of_the_base_string() -> None:
    url = URL("https://va.example.net/x")
    form = [("b", "2"), ("oauth_signature", "zzz")]
    signer = OAuth1Signer(_CK, _CS, _TK, _TS)
    ours = signer.signature("POST", url, nonce="n0nce", timestamp="1700000000", body_params=form)
    without = signer.signature(
        "POST", url, nonce="n0nce", timestamp="1700000000", body_params=[("b", "2")]
    )
    assert ours == without
    _, headers, _ = _independent().sign(
        str(url),
        http_method="POST",
        body="b=2&oauth_signature=zzz",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert _oauth_params(headers["Authorization"])["oauth_signature"] == ours


def test_the_simulators_verifier_leaves_a_query_oauth_signature_out_of_the_base_string() -> None:
    """The verifier, as the gateway does, accepts what an RFC signer signed over such a URL."""
    url = URL("https://va.example.net/x?a=1&oauth_signature=zzz")
    _, headers, _ = _independent().sign(str(url), http_method="GET")
    assert verify(
        method="GET",
        url=url.with_query(None),
        oauth=_oauth_params(headers["Authorization"]),
        extra_params=list(url.query.items()),
        consumer_secret=_CS,
        token_secret=_TS,
    )


async def test_an_oauth1_call_with_a_query_oauth_signature_is_accepted_by_the_simulator(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = OAuth1Auth(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET)
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        users = await engine.request_json(
            "GET", "accountConfigReadOnly", USERS, params={"oauth_signature": "the-callers"}
        )
    assert isinstance(users, list)


# -- Retry-After HTTP-dates: read on the injected clock's date ---------------------------------


async def test_a_retry_middleware_on_a_virtual_clock_dates_retry_after_by_that_clock(
    serve: ServerFactory,
) -> None:
    """Without a ``wall_clock`` of its own, a RetryMiddleware reads a ``Retry-After`` date
    (on an answer with no valid ``Date``) against its clock's date, as the engine and
    ProviderHttp do: never the machine's, which a virtual clock's is not."""
    clock = VirtualClock(epoch=1_700_000_000.0)
    headers = {
        "Date": "not a date",
        "Retry-After": email.utils.formatdate(clock.wall() + 12, usegmt=True),
    }
    host = await serve(Script(_reply_with(503, headers), 200).app())
    mw = RetryMiddleware(policy=RetryPolicy(), clock=clock)
    assert mw.wall_clock == clock.wall
    async with (
        aiohttp.ClientSession(middlewares=[mw], timeout=aiohttp.ClientTimeout(total=None)) as s,
        s.get(f"http://{host}/x") as resp,
    ):
        assert resp.status == 200
    assert clock.now() == 12.0


def test_a_retry_middleware_on_the_real_clock_reads_the_real_date() -> None:
    assert RetryMiddleware().wall_clock is time.time
    assert RetryMiddleware(clock=RealClock()).wall_clock is time.time
    mine = lambda: 1.0e9  # noqa: E731
    assert RetryMiddleware(clock=VirtualClock(), wall_clock=mine).wall_clock is mine


async def test_the_warning_names_an_ipv6_origin_bracketed(caplog: pytest.LogCaptureFixture) -> None:
    """The origin the WARNING names is written as a URL is: an IPv6 host bracketed (it read
    ``http://::1:8080``), and never with userinfo."""
    ctx = CallContext(service="svc")
    ctx.first_url = URL("http://user:pw@[::1]:8080/start")
    hop = ClientRequest(
        "GET",
        URL("http://elsewhere.test/next"),
        headers={"X-Api-Key": "caller-api-key-1"},
        loop=asyncio.get_running_loop(),
    )
    caplog.set_level(logging.WARNING, logger="le_transport")
    drop_secret_headers(ctx, hop)
    assert "X-Api-Key" not in hop.headers
    shown = "\n".join(r.getMessage() for r in caplog.records)
    assert "(http://[::1]:8080)" in shown, shown
    assert "pw" not in shown
    assert "caller-api-key-1" not in shown
