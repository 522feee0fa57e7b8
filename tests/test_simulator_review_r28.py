"""Simulator body faults on compressed answers, and OAuth 1.0 against a received Host."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from le_transport.chaos import FaultRule, MalformedBody, Match, SlowBody, TruncatedBody
from le_transport.providers.oauth1 import base_string_uri
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_ACCOUNT, DEFAULT_APP_KEY, SimRoute, Simulator
from le_transport.testing.simulator import oauth1 as sim_oauth1

BIG = b'{"text": "' + b"abcdefghij" * 300 + b'"}'


async def _raw(sim: Simulator, request: str) -> tuple[str, dict[str, str], bytes]:
    """Send ``request`` as it is; the status line, the headers (lower-cased names) and the
    body, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    try:
        writer.write(request.encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


async def _read_cut(resp: aiohttp.ClientResponse) -> bytes:
    """The (decoded) body ``resp`` delivers before the payload error of its cut."""
    got = b""
    try:
        while chunk := await resp.content.readany():
            got += chunk
    except aiohttp.ClientPayloadError:
        return got
    raise AssertionError(f"the body ended whole, after {len(got)} bytes")


async def _compressed_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_compression()
    await resp.prepare(request)
    await resp.write(BIG)
    await resp.write_eof()
    return resp


async def _compressed_payload(request: web.Request) -> web.Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield BIG[:1000]
        yield BIG[1000:]

    resp = web.Response(body=chunks(), content_type="application/json")
    resp.enable_compression()
    return resp


@pytest.mark.parametrize("handler", [_compressed_stream, _compressed_payload])
async def test_a_cut_body_compressed_as_it_is_written_delivers_its_kept_bytes(
    clock: VirtualClock, handler: Any
) -> None:
    rule = FaultRule("cut", TruncatedBody(keep_bytes=1000), match=Match(path="/z"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/z", handler)])
    async with (
        sim,
        aiohttp.ClientSession() as http,
        http.get(sim.url + "/z", headers={"Accept-Encoding": "gzip"}) as resp,
    ):
        assert resp.headers.get("Content-Encoding") == "gzip"
        got = await _read_cut(resp)
    assert got == BIG[:1000]


@pytest.mark.parametrize(
    ("handler", "fault"),
    [
        (_compressed_stream, TruncatedBody(keep_bytes=len(BIG) + 10)),
        (_compressed_payload, TruncatedBody(keep_bytes=len(BIG) + 10)),
        # (A returned answer is replaced by a MalformedBody: only a streamed one is cut.)
        (_compressed_stream, MalformedBody()),
    ],
    ids=["stream-kept", "payload-kept", "stream-malformed"],
)
async def test_a_compressed_body_cut_at_its_end_delivers_all_it_wrote(
    clock: VirtualClock, handler: Any, fault: Any
) -> None:
    # Every byte the handler wrote is sent (a MalformedBody's, or a TruncatedBody keeping
    # more than there is), then the cut: none of them left behind in the compressor.
    rule = FaultRule("cut", fault, match=Match(path="/z"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/z", handler)])
    async with (
        sim,
        aiohttp.ClientSession() as http,
        http.get(sim.url + "/z", headers={"Accept-Encoding": "gzip"}) as resp,
    ):
        assert resp.headers.get("Content-Encoding") == "gzip"
        got = await _read_cut(resp)
    assert got == BIG


@pytest.mark.parametrize("handler", [_compressed_stream, _compressed_payload])
async def test_an_http10_answer_its_handler_would_compress_goes_out_identity_cut(
    clock: VirtualClock, handler: object
) -> None:
    rule = FaultRule("cut", TruncatedBody(keep_bytes=5), match=Match(path="/z"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/z", handler)])  # type: ignore[arg-type]
    async with sim:
        status, headers, body = await _raw(sim, "GET /z HTTP/1.0\r\nHost: x\r\n\r\n")
    assert status.endswith(" 200 OK"), (status, headers, body)
    assert "content-encoding" not in headers
    assert body == BIG[:5]
    assert int(headers["content-length"]) > len(body)


async def test_an_http10_answer_compressed_as_it_is_written_is_cut_before_its_headers(
    clock: VirtualClock,
) -> None:
    # Its bytes on the wire are counted by no one beforehand: no length to announce.
    rule = FaultRule("cut", TruncatedBody(keep_bytes=5), match=Match(path="/z"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/z", _compressed_stream)])
    async with sim:
        answer = await _raw(sim, "GET /z HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
    assert answer == ("", {}, b"")
    assert sim.faults.injected_counts() == {"cut": 1}


# -- OAuth 1.0: a Host that is no authority verifies nothing ----------------------------------

K = DEFAULT_APP_KEY
USERS = f"/api/account/{DEFAULT_ACCOUNT}/configuration/le-users/users"


def _oauth_header(base_uri: str, nonce: str) -> str:
    """A GET's Authorization header, signed with the default key over ``base_uri``."""
    params = {
        "oauth_consumer_key": K.key,
        "oauth_token": K.access_token,
        "oauth_signature_method": "HMAC-SHA1",
        "oauth_timestamp": "1",
        "oauth_nonce": nonce,
        "oauth_version": "1.0",
    }
    base = sim_oauth1.signature_base_string("GET", base_uri, params.items())
    params["oauth_signature"] = sim_oauth1.sign(base, K.secret, K.access_token_secret)
    enc = sim_oauth1.percent_encode
    return "OAuth " + ", ".join(f'{k}="{enc(v)}"' for k, v in params.items())


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}/x", "127.0.0.1/x", "127.0.0.1:{port}?", "127.0.0.1:{port}#"]
)
async def test_an_oauth1_signature_for_another_path_never_verifies_through_a_forged_host(
    clock: VirtualClock, host: str
) -> None:
    # Signed for ".../x/api/...": sent to "/api/..." with the "/x" moved into the Host, the
    # base string the verifier builds would be the signed one, were the Host taken as it is.
    async with Simulator(clock=clock) as sim:
        host = host.format(port=sim.port)
        header = _oauth_header(f"http://{host}{USERS}", "n1")
        status, _, _ = await _raw(
            sim,
            f"GET {USERS} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {header}\r\n"
            "Connection: close\r\n\r\n",
        )
    assert not status.endswith(" 200 OK"), status


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}",
        "http://[::ffff:127.0.0.1]:{port}",
        "http://LOCALHOST:{port}",
        "http://localhost:{port}",
    ],
)
async def test_an_oauth1_request_its_signer_built_verifies(clock: VirtualClock, url: str) -> None:
    # The library's signer and the Host aiohttp sends for the same URL: always the same URI.
    async with Simulator(clock=clock) as sim:
        target = URL(url.format(port=sim.port) + USERS)
        header = _oauth_header(base_string_uri(target), "n2")
        status, _, _ = await _raw(
            sim,
            f"GET {USERS} HTTP/1.1\r\nHost: {target.host_port_subcomponent}\r\n"
            f"Authorization: {header}\r\nConnection: close\r\n\r\n",
        )
    assert status.endswith(" 200 OK"), status


async def test_a_compressed_payload_cut_before_its_headers_is_closed(clock: VirtualClock) -> None:
    # An HTTP/1.0 answer compressed as it is written, cut before its headers: its payload (a
    # file object) is closed, not left open until collected.
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()

    class File(io.BufferedReader):
        def close(self) -> None:
            super().close()
            loop.call_soon_threadsafe(closed.set)  # aiohttp closes it in an executor

    async def handler(request: web.Request) -> web.Response:
        resp = web.Response(body=File(io.BytesIO(BIG)), content_type="application/json")
        resp.enable_compression()
        return resp

    rule = FaultRule("cut", TruncatedBody(keep_bytes=5), match=Match(path="/z"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/z", handler)])
    async with sim:
        answer = await _raw(sim, "GET /z HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        assert answer == ("", {}, b"")
        await asyncio.wait_for(closed.wait(), 10)


# -- aiohttp's internals the body faults lean on, moved: unshaped and said, never broken ------


@pytest.mark.parametrize("fault", [TruncatedBody(keep_bytes=10), SlowBody(100, 1000)])
async def test_a_prepared_file_an_aiohttp_cannot_reroute_goes_out_unshaped_with_a_warning(
    clock: VirtualClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fault: Any,
) -> None:
    # An aiohttp whose FileResponse no longer reads the compression flag the simulator sets:
    # its file goes past the shaped write (loop.sendfile). Sent whole, and said; nothing of
    # the simulator's breaks it.
    monkeypatch.setattr(web.FileResponse, "compression", property(lambda self: False))
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.FileResponse(path)
        await resp.prepare(request)
        return resp

    rule = FaultRule("shaped", fault, match=Match(path="/file"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/file", handler)])
    with caplog.at_level(logging.WARNING, logger="le_transport.simulator"):
        async with sim:
            status, _, body = await _raw(
                sim, "GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
    assert status.endswith(" 200 OK"), status
    assert body == b"x" * 1000
    assert any(
        "FileResponse" in r.getMessage() and "unshaped" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    ), caplog.records


@pytest.mark.parametrize("fault", [TruncatedBody(keep_bytes=10), SlowBody(100, 1000)])
async def test_a_returned_file_is_shaped_without_rerouting_its_writer(
    clock: VirtualClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fault: Any,
) -> None:
    # A file its handler returns is sent by the simulator through write: shaped, and no
    # warning, whatever the flag the prepared one's rerouting leans on.
    monkeypatch.setattr(web.FileResponse, "compression", property(lambda self: False))
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path)

    rule = FaultRule("shaped", fault, match=Match(path="/file"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/file", handler)])
    with caplog.at_level(logging.WARNING, logger="le_transport.simulator"):
        async with sim:
            started = clock.now()
            status, headers, body = await _raw(
                sim, "GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
    assert status.endswith(" 200 OK"), status
    assert headers["content-length"] == "1000"
    if isinstance(fault, TruncatedBody):
        assert body == b"x" * 10
    else:
        assert body == b"x" * 1000
        assert clock.now() - started == pytest.approx(9.0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


async def test_a_file_its_handler_prepares_is_sent_once_under_a_slow_body(
    clock: VirtualClock, tmp_path: Path
) -> None:
    # aiohttp prepares the answer a handler returns once more: a FileResponse's prepare opens
    # and sends its file again. Paced twice, the connection was held ten more pauses, and
    # the next request on it waited for a body no one reads.
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.FileResponse(path)
        await resp.prepare(request)
        return resp

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    rule = FaultRule("slow", SlowBody(100, 1000), match=Match(path="/file"))
    routes = [SimRoute("GET", "/file", handler), SimRoute("GET", "/ok", ok)]
    async with (
        Simulator(clock=clock, plan=[rule], routes=routes) as sim,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http,
    ):
        started = clock.now()
        async with http.get(sim.url + "/file") as resp:
            assert await resp.read() == b"x" * 1000
        assert clock.now() - started == pytest.approx(9.0)
        async with http.get(sim.url + "/ok") as resp:
            assert await resp.text() == "ok"
        assert clock.now() - started == pytest.approx(9.0)
