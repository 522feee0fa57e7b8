"""Simulator: body faults an HTTP/1.0 client sees, a handler's compression and prepared file
under them, a forced delay's jitter, a forced rule that cannot apply, a custom socket's
silence, and OAuth 1.0 against the Host as received."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport.chaos import (
    Delay,
    FaultRule,
    MalformedBody,
    Match,
    SlowBody,
    TruncatedBody,
    WsClose,
    WsSilence,
)
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_APP_KEY,
    SimRoute,
    Simulator,
    SimulatorConfig,
)
from le_transport.testing.simulator import oauth1 as sim_oauth1

K = DEFAULT_APP_KEY
USERS = f"/api/account/{DEFAULT_ACCOUNT}/configuration/le-users/users"
CSDS_ALL = f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"


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


async def _streamer(request: web.Request) -> web.StreamResponse:
    """An answer of unknown length, streamed by the handler."""
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"0123456789")
    await resp.write(b"abcdefghij")
    await resp.write_eof()
    return resp


# -- 1. an HTTP/1.0 client sees the cut of a streamed answer of unknown length ----------------


async def test_an_http10_client_sees_a_truncated_streamed_answer_of_unknown_length_cut(
    clock: VirtualClock,
) -> None:
    rule = FaultRule("cut", TruncatedBody(keep_bytes=5), match=Match(path="/stream"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/stream", _streamer)])
    async with sim:
        status, headers, body = await _raw(sim, "GET /stream HTTP/1.0\r\nHost: x\r\n\r\n")
    assert status.endswith(" 200 OK"), status
    assert body == b"01234"
    # Without a length, an HTTP/1.0 body ends where the connection does: whole to the client.
    assert "content-length" in headers, headers
    assert int(headers["content-length"]) > len(body)


async def test_an_http10_client_sees_a_truncated_payload_of_unknown_length_cut(
    clock: VirtualClock,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"0123456789"
        yield b"abcdefghij"

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=chunks())

    rule = FaultRule("cut", TruncatedBody(keep_bytes=5), match=Match(path="/payload"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/payload", handler)])
    async with sim:
        status, headers, body = await _raw(sim, "GET /payload HTTP/1.0\r\nHost: x\r\n\r\n")
    assert status.endswith(" 200 OK"), status
    assert body == b"01234"
    assert int(headers.get("content-length", "0")) > len(body), headers


async def test_an_http10_client_sees_a_malformed_streamed_answer_of_unknown_length_broken(
    clock: VirtualClock,
) -> None:
    rule = FaultRule("bad", MalformedBody(), match=Match(path="/stream"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/stream", _streamer)])
    async with sim:
        status, headers, body = await _raw(sim, "GET /stream HTTP/1.0\r\nHost: x\r\n\r\n")
    # Cut before its headers (nothing arrives), or a length it never reaches.
    if status:
        assert "content-length" in headers, (status, headers, body)
        assert int(headers["content-length"]) > len(body)


# -- 2. a handler's compression under a body fault --------------------------------------------

BIG = b'{"text": "' + b"abcdefghij" * 300 + b'"}'


async def _compressed(request: web.Request) -> web.Response:
    resp = web.Response(body=BIG, content_type="application/json")
    resp.enable_compression()
    return resp


async def test_a_truncated_answer_keeps_its_handlers_compression(clock: VirtualClock) -> None:
    rule = FaultRule("cut", TruncatedBody(keep_bytes=10), match=Match(path="/zip"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/zip", _compressed)])
    async with (
        sim,
        aiohttp.ClientSession() as http,
        http.get(sim.url + "/zip", headers={"Accept-Encoding": "gzip"}) as resp,
    ):
        assert resp.headers.get("Content-Encoding") == "gzip"
        assert int(resp.headers["Content-Length"]) < len(BIG)  # the compressed length
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_a_slow_answer_keeps_its_handlers_compression(clock: VirtualClock) -> None:
    rule = FaultRule("slow", SlowBody(chunk_bytes=20, chunk_delay_ms=100), match=Match(path="/zip"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/zip", _compressed)])
    async with (
        sim,
        aiohttp.ClientSession() as http,
        http.get(sim.url + "/zip", headers={"Accept-Encoding": "gzip"}) as resp,
    ):
        assert resp.headers.get("Content-Encoding") == "gzip"
        assert await resp.read() == BIG


async def _compressed_payload(request: web.Request) -> web.Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield BIG[:1000]
        yield BIG[1000:]

    resp = web.Response(body=chunks(), content_type="application/json")
    resp.enable_compression()
    return resp


async def test_a_compressed_payload_keeps_its_compression_slow_or_cut(clock: VirtualClock) -> None:
    rules = [
        FaultRule("slow", SlowBody(chunk_bytes=500, chunk_delay_ms=100), match=Match(path="/a")),
        FaultRule("cut", TruncatedBody(keep_bytes=10), match=Match(path="/b")),
    ]
    routes = [
        SimRoute("GET", "/a", _compressed_payload),
        SimRoute("GET", "/b", _compressed_payload),
    ]
    gzip = {"Accept-Encoding": "gzip"}
    async with (
        Simulator(clock=clock, plan=rules, routes=routes) as sim,
        aiohttp.ClientSession() as h,
    ):
        async with h.get(sim.url + "/a", headers=gzip) as resp:
            assert resp.headers.get("Content-Encoding") == "gzip"
            assert await resp.read() == BIG
        async with h.get(sim.url + "/b", headers=gzip) as resp:
            assert resp.headers.get("Content-Encoding") == "gzip"
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    assert sim.faults.injected_counts() == {"slow": 1, "cut": 1}


# -- 3. a file its handler prepares itself, under a body fault --------------------------------


async def test_a_file_its_handler_prepares_is_cut_by_a_truncated_body(
    clock: VirtualClock, tmp_path: Path
) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 8)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.FileResponse(path)
        await resp.prepare(request)
        return resp

    rule = FaultRule("cut", TruncatedBody(keep_bytes=10), match=Match(path="/file"))
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/file", handler)])
    async with sim:
        status, headers, body = await _raw(
            sim, "GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert status.endswith(" 200 OK"), status
    assert body == bytes(range(10))
    assert int(headers["content-length"]) > len(body)


async def test_a_file_its_handler_prepares_is_paced_by_a_slow_body(
    clock: VirtualClock, tmp_path: Path
) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.FileResponse(path)
        await resp.prepare(request)
        return resp

    rule = FaultRule(
        "slow", SlowBody(chunk_bytes=100, chunk_delay_ms=1000), match=Match(path="/file")
    )
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/file", handler)])
    async with sim, aiohttp.ClientSession() as http:
        started = clock.now()
        async with http.get(sim.url + "/file") as resp:
            assert await resp.read() == b"x" * 1000
        assert clock.now() - started == pytest.approx(9.0)


# -- 4. a forced Delay draws its jitter --------------------------------------------------------


async def test_a_forced_delay_draws_its_rules_jitter(clock: VirtualClock) -> None:
    rule = FaultRule("slow", Delay(delay_ms=1000, jitter_ms=500), match=Match(path="/nowhere"))
    config = SimulatorConfig(fault_header=True)
    waits = []
    async with Simulator(config, clock=clock, plan=[rule]) as sim, aiohttp.ClientSession() as h:
        for _ in range(4):
            started = clock.now()
            async with h.get(sim.url + CSDS_ALL, headers={"X-LE-Fault": "slow"}) as resp:
                assert resp.status == 200
            waits.append(clock.now() - started)
    assert all(1.0 <= w <= 1.5 + 1e-6 for w in waits), waits
    assert any(w > 1.0 + 1e-6 for w in waits), waits  # the jitter was drawn
    assert len(set(waits)) > 1, waits  # a draw of its own each time


# -- 5. a forced rule that cannot apply to the request is logged -------------------------------


async def test_a_forced_rule_that_cannot_apply_to_the_request_is_logged_with_why(
    clock: VirtualClock, records: list[logging.LogRecord]
) -> None:
    rule = FaultRule("closer", WsClose(code=4000), unit="ws_session", match=Match(path="/x"))
    config = SimulatorConfig(fault_header=True)
    async with (
        Simulator(config, clock=clock, plan=[rule]) as sim,
        aiohttp.ClientSession() as h,
        h.get(sim.url + CSDS_ALL, headers={"X-LE-Fault": "closer"}) as resp,
    ):
        assert resp.status == 200
    warned = [
        r.getMessage()
        for r in records
        if r.levelno == logging.WARNING and r.name == "le_transport.simulator"
    ]
    assert any("closer" in m and "ws_close" in m for m in warned), warned


# -- 6. a silenced custom socket hands the handler nothing -------------------------------------


async def test_a_silenced_custom_socket_hands_its_handler_no_frame(clock: VirtualClock) -> None:
    seen: list[str] = []
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            async for msg in ws:
                seen.append(msg.data)
                await ws.send_str("echo")
        finally:
            done.set()
        return ws

    rule = FaultRule("quiet", WsSilence(after_messages=2), unit="ws_session", match=Match())
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/custom/ws", handler)])
    async with sim, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{sim.ws_scheme}://{sim.host}/custom/ws") as ws:
            await ws.send_str("one")
            assert (await asyncio.wait_for(ws.receive(), 10)).data == "echo"
            await ws.send_str("two")
            await ws.send_str("three")
        # Closed after them: the handler reads both frames (or not) before the close.
        await asyncio.wait_for(done.wait(), 10)
    # The second frame met the silence: neither it nor any after it is processed, as on the
    # simulator's own sockets (and as the client-side injector never sends them).
    assert seen == ["one"]


async def test_a_request_frame_that_meets_a_silence_never_reaches_the_custom_handler(
    clock: VirtualClock,
) -> None:
    seen: list[str] = []
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            async for msg in ws:
                seen.append(msg.data)
        finally:
            done.set()
        return ws

    rule = FaultRule(
        "quiet", WsSilence(), unit="ws_message", match=Match(method="WS", path="my.Request")
    )
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/custom/ws", handler)])
    async with sim, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{sim.ws_scheme}://{sim.host}/custom/ws") as ws:
            await ws.send_str("plain")
            await ws.send_json({"kind": "req", "id": "1", "type": "my.Request", "body": {}})
            await ws.send_str("after")
        await asyncio.wait_for(done.wait(), 10)
    assert seen == ["plain"]


# -- 7. OAuth 1.0: the base string URI from the Host as received --------------------------------


def _oauth_header(method: str, base_uri: str, nonce: str) -> str:
    params = {
        "oauth_consumer_key": K.key,
        "oauth_token": K.access_token,
        "oauth_signature_method": "HMAC-SHA1",
        "oauth_timestamp": "1",
        "oauth_nonce": nonce,
        "oauth_version": "1.0",
    }
    enc = sim_oauth1.percent_encode
    normalised = "&".join(
        f"{k}={v}" for k, v in sorted((enc(k), enc(v)) for k, v in params.items())
    )
    base = "&".join((method, enc(base_uri), enc(normalised)))
    params["oauth_signature"] = sim_oauth1.sign(base, K.secret, K.access_token_secret)
    return "OAuth " + ", ".join(f'{k}="{enc(v)}"' for k, v in params.items())


@pytest.mark.parametrize(
    ("host", "signed"),
    [
        ("[0:0::1]:{port}", "http://[0:0::1]:{port}"),
        ("[0:0::1]:80", "http://[0:0::1]"),
        ("Example.COM:{port}", "http://example.com:{port}"),
    ],
)
async def test_an_oauth1_request_is_verified_against_its_host_as_received(
    clock: VirtualClock, host: str, signed: str
) -> None:
    async with Simulator(clock=clock) as sim:
        host = host.format(port=sim.port)
        header = _oauth_header("GET", signed.format(port=sim.port) + USERS, "n1")
        status, _, _ = await _raw(
            sim,
            f"GET {USERS} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {header}\r\n"
            "Connection: close\r\n\r\n",
        )
    assert status.endswith(" 200 OK"), status


async def test_an_oauth1_request_signed_for_another_host_form_is_refused(
    clock: VirtualClock,
) -> None:
    # As received, not normalised: "[::1]" signed, "[0:0::1]" sent is another request.
    async with Simulator(clock=clock) as sim:
        header = _oauth_header("GET", f"http://[::1]:{sim.port}{USERS}", "n2")
        status, _, _ = await _raw(
            sim,
            f"GET {USERS} HTTP/1.1\r\nHost: [0:0::1]:{sim.port}\r\nAuthorization: {header}\r\n"
            "Connection: close\r\n\r\n",
        )
    assert status.endswith(" 401 Unauthorized"), status


# -- 8. a body given as a bytearray is cut and paced as bytes are ------------------------------


async def _bytearray_body(request: web.Request) -> web.Response:
    return web.Response(body=bytearray(b"x" * 100))


async def test_a_bytearray_body_is_paced_by_a_slow_body(clock: VirtualClock) -> None:
    rule = FaultRule("slow", SlowBody(chunk_bytes=10, chunk_delay_ms=1000), match=Match())
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/ba", _bytearray_body)])
    async with sim, aiohttp.ClientSession() as http:
        started = clock.now()
        async with http.get(sim.url + "/ba") as resp:
            assert await resp.read() == b"x" * 100
        assert clock.now() - started == pytest.approx(9.0)


async def test_a_bytearray_body_is_cut_by_a_truncated_body(clock: VirtualClock) -> None:
    rule = FaultRule("cut", TruncatedBody(keep_bytes=5), match=Match())
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/ba", _bytearray_body)])
    async with sim:
        status, headers, body = await _raw(
            sim, "GET /ba HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert status.endswith(" 200 OK"), status
    assert (headers["content-length"], body) == ("100", b"xxxxx")


# -- 9. a body compressed as it is written is paced on the wire ---------------------------------


async def _compressed_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_compression(web.ContentCoding.gzip)
    await resp.prepare(request)
    await resp.write(BIG)
    await resp.write_eof()
    return resp


@pytest.mark.parametrize("handler", [_compressed_payload, _compressed_stream])
async def test_a_body_compressed_as_it_is_written_arrives_in_paced_pieces(
    clock: VirtualClock, handler: Any
) -> None:
    # zlib holds what it is given until it has enough (or the end): each piece is flushed, so
    # that the client gets it as it is paced, not the whole body after the last pause.
    rule = FaultRule("slow", SlowBody(chunk_bytes=1000, chunk_delay_ms=1000), match=Match())
    sim = Simulator(clock=clock, plan=[rule], routes=[SimRoute("GET", "/z", handler)])
    arrivals: list[tuple[float, int]] = []
    got = b""
    async with (
        sim,
        aiohttp.ClientSession() as http,
        http.get(sim.url + "/z", headers={"Accept-Encoding": "gzip"}) as resp,
    ):
        assert resp.headers.get("Content-Encoding") == "gzip"
        started = clock.now()
        while chunk := await resp.content.readany():
            got += chunk
            arrivals.append((clock.now() - started, len(got)))
    assert got == BIG
    # 3012 bytes in pieces of 1000: 1000 of them at once, the rest 1 s apart.
    assert arrivals[0][0] == pytest.approx(0.0), arrivals
    assert arrivals[0][1] == 1000, arrivals
    assert arrivals[-1][0] == pytest.approx(3.0), arrivals
