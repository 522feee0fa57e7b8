"""The simulator's HTTP side: OAuth 1.0 verification of IPv6 and encoded paths, a request
aiohttp's parser refuses, the checks on Account and AppKey, a lone surrogate at login."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from yarl import URL

from le_transport import Engine
from le_transport.errors import ConfigurationError
from le_transport.providers import OAuth1Auth, StaticDomains
from le_transport.providers.oauth1 import OAuth1Signer
from le_transport.providers.oauth1 import base_string_uri as signer_base_string_uri
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_APP_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    Simulator,
    SimulatorConfig,
)
from le_transport.testing.simulator import oauth1 as sim_oauth1
from le_transport.testing.simulator.config import Account, AppKey

K = DEFAULT_APP_KEY
USERS = f"/api/account/{DEFAULT_ACCOUNT}/configuration/le-users/users"
#: Typed Any: the wrong types below are the point, and mypy would refuse them otherwise.
AN_INT: Any = 12345678
SECRET = "0123456789abcdef0123456789abcdef"


def _wrong(value: object) -> Any:
    """``value``, typed Any: a field of the wrong type is what these tests hand over."""
    return value


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Every record logged anywhere, DEBUG up, while the test runs."""
    kept: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    keep = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    old = root.level
    root.addHandler(keep)
    root.setLevel(logging.DEBUG)
    try:
        yield kept
    finally:
        root.removeHandler(keep)
        root.setLevel(old)


# -- 1. OAuth 1.0: the verifier's base string URI is the signer's ------------------------------


def test_the_simulator_verifies_with_the_signers_base_string_uri() -> None:
    assert sim_oauth1.base_string_uri is signer_base_string_uri
    assert sim_oauth1.base_string_uri(URL("http://[::1]:8080/x?a=1")) == "http://[::1]:8080/x"


async def test_an_oauth1_engine_call_to_a_simulator_on_ipv6_loopback_is_accepted() -> None:
    clock = VirtualClock()
    sim = Simulator(clock=clock, host="::1")
    try:
        await sim.start()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    auth = OAuth1Auth(K.key, K.secret, K.access_token, K.access_token_secret)
    try:
        async with Engine(
            StaticDomains(sim.domains), scheme="http", clock=clock, auth=auth
        ) as engine:
            users = await engine.request_json("GET", "accountConfigReadOnly", USERS)
            assert isinstance(users, list)
    finally:
        await sim.stop()


@pytest.mark.parametrize("segment", ["a%2Fb", "a%2Bb", "a%3Ab", "%7E1"])
async def test_an_oauth1_signed_path_with_an_encoded_octet_is_verified(segment: str) -> None:
    # The signature covers the path as sent ("a%2Fb"), not as aiohttp decodes it ("a/b").
    signer = OAuth1Signer(K.key, K.secret, K.access_token, K.access_token_secret)
    async with Simulator(clock=VirtualClock()) as sim, aiohttp.ClientSession() as http:
        url = URL(f"{sim.url}{USERS}/{segment}", encoded=True)
        async with http.get(url, headers={"Authorization": signer.header("GET", url)}) as r:
            assert r.status == 404  # signature good, no such user (a bad one: 401)


@pytest.mark.parametrize("host", ["h:99999", "h:abc"])
async def test_an_oauth1_request_whose_host_header_has_a_bad_port_is_a_401_not_a_500(
    host: str,
) -> None:
    # The base string URI is built from the Host header: yarl refused the port, a 500.
    oauth = ", ".join(
        f'{k}="{v}"'
        for k, v in {
            "oauth_consumer_key": K.key,
            "oauth_token": K.access_token,
            "oauth_signature_method": "HMAC-SHA1",
            "oauth_timestamp": "1",
            "oauth_nonce": "n",
            "oauth_version": "1.0",
            "oauth_signature": "x",
        }.items()
    )
    async with Simulator(clock=VirtualClock()) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        writer.write(
            f"GET {USERS} HTTP/1.1\r\nHost: {host}\r\nAuthorization: OAuth {oauth}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert answer.split(b"\r\n", 1)[0].endswith(b" 401 Unauthorized")


# -- 2. a request aiohttp's parser refuses ----------------------------------------------------


async def test_a_malformed_header_line_puts_no_bearer_in_a_log_and_nothing_at_error(
    records: list[logging.LogRecord],
) -> None:
    async with Simulator(clock=VirtualClock()) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        # What http.client (urllib, requests) sends for a token that picked up a DEL.
        line = f"Authorization: Bearer {SECRET}\x7f"
        writer.write(f"GET {USERS} HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    texts = [(r.levelno, r.name, logging.Formatter().format(r)) for r in records]
    assert not [t for _, _, t in texts if SECRET in t], "the bearer reached a log record"
    assert not [t for lvl, _, t in texts if lvl >= logging.ERROR], "a client's bad request at ERROR"
    assert [
        t
        for lvl, name, t in texts
        if lvl == logging.DEBUG and name == "le_transport.simulator" and "could not parse" in t
    ]


def test_the_server_log_filter_drops_a_parse_error_for_its_type_only(
    records: list[logging.LogRecord],
) -> None:
    log = logging.getLogger("aiohttp.server.le_simulator")
    try:
        raise BadHttpMessage(f"Invalid header value char: b'Authorization: Bearer {SECRET}'")
    except BadHttpMessage:
        log.exception("Error handling request from %s", "127.0.0.1")
    assert [r.name for r in records] == ["le_transport.simulator"]
    (debug,) = records
    assert debug.levelno == logging.DEBUG
    assert "BadHttpMessage" in debug.getMessage()
    assert SECRET not in debug.getMessage()
    assert debug.exc_info is None


# -- 3. Account and AppKey are checked --------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Account(id=AN_INT),  # account ids are digits: an int is the natural slip
        lambda: Account(id=""),
        lambda: Account(users={"bot": AN_INT}),
        lambda: Account(users={AN_INT: "pw"}),
        lambda: Account(users=AN_INT),
        lambda: Account(users=_wrong("agent1")),
        lambda: Account(clients={DEFAULT_CLIENT_ID: AN_INT}),
        lambda: Account(app_keys=[AppKey("k", AN_INT, "t", "u")]),
        lambda: Account(app_keys=[AppKey("k", "s", "t", "")]),
        lambda: Account(app_keys=_wrong(["sim-app-key-1"])),
        lambda: Account(app_keys=_wrong(DEFAULT_APP_KEY)),
        lambda: Account(app_keys=AN_INT),
    ],
    ids=[
        "int-id",
        "empty-id",
        "int-password",
        "int-username",
        "users-int",
        "users-str",
        "int-client-secret",
        "int-appkey-secret",
        "empty-access-token-secret",
        "str-app-key",
        "one-AppKey-not-list",
        "app-keys-int",
    ],
)
def test_a_wrong_account_field_is_a_configuration_error(make: Callable[[], Account]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SimulatorConfig(accounts=[make()])
    message = str(caught.value)
    assert "Account." in message or "AppKey." in message
    assert str(AN_INT) not in message


@pytest.mark.parametrize("field", ["key", "secret", "access_token", "access_token_secret"])
def test_an_app_key_field_of_the_wrong_type_is_named_by_field_and_type_not_value(
    field: str,
) -> None:
    values: dict[str, Any] = {
        "key": "k",
        "secret": "s",
        "access_token": "t",
        "access_token_secret": "u",
    }
    values[field] = b"hunter2-secret-bytes"
    with pytest.raises(ConfigurationError) as caught:
        AppKey(**values)
    message = str(caught.value)
    assert f"AppKey.{field}" in message
    assert "bytes" in message
    assert "hunter2" not in message


def test_an_int_password_is_refused_at_construction_naming_field_and_type_not_value() -> None:
    # Taken before, it was a 500 at the login that compared it.
    with pytest.raises(ConfigurationError) as caught:
        Account(users={"bot": AN_INT})
    message = str(caught.value)
    assert "Account.users" in message
    assert "int" in message
    assert str(AN_INT) not in message


def test_two_accounts_with_one_id_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="same id"):
        SimulatorConfig(accounts=[Account(), Account(users={"other": "pw"})])


def test_the_existing_ways_to_build_an_account_still_work() -> None:
    key = AppKey("app-key-1", "app-secret", "access-token", "access-token-secret")
    account = Account(
        id="555", users={"alice": "pw-a"}, app_keys=(key,), clients={"client-1": "secret"}
    )
    assert account.app_keys == (key,)
    assert Account(app_keys=[key]).app_keys == (key,)
    assert Account(app_keys=[]).app_keys == ()
    config = SimulatorConfig(accounts=[Account(), account])
    assert config.account("555") is account


# -- 4. a lone surrogate in an application login's username -----------------------------------


async def test_an_application_login_whose_username_is_a_lone_surrogate_is_not_a_500() -> None:
    body = json.dumps(
        {
            "username": "bot\ud800",
            "appKey": DEFAULT_CLIENT_ID,
            "secret": DEFAULT_CLIENT_SECRET,
            "accessToken": "dummy",
            "accessTokenSecret": "dummy",
        }
    )
    async with (
        Simulator(clock=VirtualClock()) as sim,
        aiohttp.ClientSession() as http,
        http.post(
            f"{sim.url}/api/account/{DEFAULT_ACCOUNT}/login?v=1.3",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        assert r.status < 500


# -- review of the fixes above ------------------------------------------------------------------


async def _raw_get(port: int, head: bytes) -> bytes:
    """Send one raw request (``head``: the request line and headers, without the blank line
    that ends them) and return the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"Connection: close\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("part", ["too-many-headers", "a-secret-read-as-a-header"])
async def test_a_handlers_aiohttp_parse_error_is_a_500_at_error_without_the_request(
    part: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The log filter dropping the parser's refusals (their message holds a raw header line)
    # dropped a handler's own 500 too (no ERROR; a DEBUG line called it a request aiohttp could
    # not parse); re-raised chained, its text (here a form field's secret) reached the ERROR.
    async def upload(request: web.Request) -> web.Response:
        form = await request.post()  # aiohttp's multipart reader
        return web.json_response({"fields": sorted(form)})

    sim = Simulator(clock=VirtualClock())
    sim.add_route("POST", "/api/account/{account}/upload", upload)
    caplog.set_level(logging.DEBUG)
    if part == "too-many-headers":
        lines = "".join(f"X-H{i}: v\r\n" for i in range(200))
        body = '--b\r\nContent-Disposition: form-data; name="a"\r\n' + lines + "\r\nv\r\n--b--\r\n"
    else:
        body = (
            f'--b\r\nContent-Disposition: form-data; name="client_secret"\r\n{SECRET}\r\n--b--\r\n'
        )
    async with (
        sim,
        aiohttp.ClientSession() as http,
        http.post(
            f"{sim.url}/api/account/{sim.account.id}/upload",
            data=body.encode(),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        ) as resp,
    ):
        assert resp.status == 500
    assert [r for r in caplog.records if r.levelno >= logging.ERROR], "a 500 and no ERROR"
    assert SECRET not in caplog.text


async def test_a_correctly_signed_absolute_form_request_is_verified() -> None:
    # aiohttp's request.host keeps neither port nor brackets for an absolute-form target
    # (as a proxy forwards): the check signed "http://127.0.0.1/..." and answered 401, and the
    # Domain API handed out a host without its port.
    signer = OAuth1Signer(K.key, K.secret, K.access_token, K.access_token_secret)
    async with Simulator(clock=VirtualClock()) as sim:
        url = URL(f"{sim.url}{USERS}")
        for target in (USERS, str(url)):
            head = (
                f"GET {target} HTTP/1.1\r\nHost: {url.authority}\r\n"
                f"Authorization: {signer.header('GET', url)}\r\n"
            )
            assert (await _raw_get(sim.port, head.encode())).endswith(b" 200 OK"), target
        csds = f"{sim.url}/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json?version=1.0"
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        writer.write(f"GET {csds} HTTP/1.1\r\nHost: {url.authority}\r\n".encode())
        writer.write(b"Connection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert f'"baseURI": "{url.authority}"'.encode() in answer or (
        f'"baseURI":"{url.authority}"'.encode() in answer
    ), answer[-300:]


@pytest.mark.parametrize("field", ["oauth_nonce", "oauth_signature", "oauth_version"])
async def test_a_non_utf8_byte_in_an_oauth_parameter_is_a_401_not_a_500(
    field: str, caplog: pytest.LogCaptureFixture
) -> None:
    params = {
        "oauth_consumer_key": K.key.encode(),
        "oauth_token": K.access_token.encode(),
        "oauth_signature_method": b"HMAC-SHA1",
        "oauth_timestamp": b"1",
        "oauth_nonce": b"n",
        "oauth_version": b"1.0",
        "oauth_signature": b"x",
    }
    params[field] = b"\xff"
    header = b"OAuth " + b", ".join(k.encode() + b'="' + v + b'"' for k, v in params.items())
    async with Simulator(clock=VirtualClock()) as sim:
        head = (
            f"GET {USERS} HTTP/1.1\r\nHost: 127.0.0.1:{sim.port}\r\n".encode()
            + b"Authorization: "
            + header
            + b"\r\n"
        )
        status = await _raw_get(sim.port, head)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert status.endswith(b" 401 Unauthorized"), status


@pytest.mark.parametrize("where", ["target", "host-header"])
async def test_a_userinfo_is_no_part_of_the_host(where: str) -> None:
    async with Simulator(clock=VirtualClock()) as sim:
        path = f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json?version=1.0"
        host = f"127.0.0.1:{sim.port}"
        if where == "target":
            target = f"http://admin:hunter2@{host}{path}"
        else:
            target, host = path, f"admin:hunter2@{host}"
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n".encode())
        writer.write(b"Connection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert b"hunter2" not in body
    assert f"127.0.0.1:{sim.port}".encode() in body
