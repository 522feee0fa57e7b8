"""The engine's front door: a call waiting for a pooled connection when the engine
closes, what a refused path or header shows, how a JSON answer of the wrong kind is said and
logged, streamed and file bodies with redirects and recover=True, and options that must be
bools. Real loopback servers, virtual time."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import aiohttp
import aiohttp.payload
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from le_transport import Engine, InvalidRequest, RetryPolicy, StaticBearer
from le_transport.engine import Response
from le_transport.errors import DeadlineExceeded, EngineClosed, RequestError, ResponseDecodeError
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory, serve_hanging
from tests.known_secrets import PASSWORD

FAST = RetryPolicy(pauses=(0.05, 0.1, 0.15))


def _echo_app(seen: list[tuple[str, str, bytes]], *, fail_first: int = 0) -> web.Application:
    """Answers every request 200 (after ``fail_first`` 503s), recording method, path, body."""

    async def echo(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, await request.read()))
        return web.Response(status=503 if len(seen) <= fail_first else 200, text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


# -- 3. a call waiting for a pooled connection when the engine closes --------------------------


async def _queued_behind_a_hanging_call(
    serve: ServerFactory, clock: VirtualClock
) -> tuple[Engine, asyncio.Task[object], asyncio.Task[object], asyncio.Event]:
    host, arrived, release = await serve_hanging(serve, "/h")
    # No attempt timeout: nothing sleeps on the clock, so virtual time stays put while the
    # first call hangs.
    engine = Engine(
        {"svc": host},
        scheme="http",
        clock=clock,
        connection_limit=1,
        retry=RetryPolicy(attempt_timeout=None),
    )
    await engine.start()
    first = asyncio.ensure_future(engine.request("GET", "svc", "/h"))
    await arrived.wait()
    queued = asyncio.ensure_future(engine.request("GET", "svc", "/h"))
    connector = engine.session.connector
    assert connector is not None
    for _ in range(200):  # a few loop iterations: no I/O between the call and the pool
        if any(getattr(connector, "_waiters", {}).values()):
            break
        await asyncio.sleep(0)
    assert not queued.done()
    return engine, first, queued, release


async def test_a_call_waiting_for_a_pooled_connection_ends_with_engine_closed(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """It ended with a bare CancelledError, though nobody cancelled it."""
    engine, first, queued, release = await _queued_behind_a_hanging_call(serve, clock)
    await engine.close()
    release.set()
    with pytest.raises(EngineClosed):
        await first
    with pytest.raises(EngineClosed, match="the engine was closed"):
        await queued
    assert not queued.cancelled()


async def test_a_cancelled_call_waiting_for_a_pooled_connection_is_still_cancelled(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The caller's own cancellation, even as the engine closes, propagates as it is."""
    engine, first, queued, release = await _queued_behind_a_hanging_call(serve, clock)
    queued.cancel()
    await engine.close()
    release.set()
    with pytest.raises(EngineClosed):
        await first
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert queued.cancelled()


# -- 4. a URL given as the path: its userinfo is never shown -----------------------------------

USERINFO = f"bot:{PASSWORD}@"


@pytest.mark.parametrize(
    "path",
    [
        f"https://{USERINFO}example.com/api/x",
        f"//{USERINFO}evil.example/x",
        f"{USERINFO}example.com/x",
    ],
)
async def test_a_url_given_as_a_path_is_refused_without_its_password(
    clock: VirtualClock, path: str
) -> None:
    async with Engine({"svc": "example.com"}, clock=clock) as engine:
        with pytest.raises(InvalidRequest, match="not shown") as info:
            await engine.request("GET", "svc", path)
        assert PASSWORD not in str(info.value)
        assert "example" not in str(info.value)  # nothing of it shown, its host neither
        with pytest.raises(InvalidRequest, match="not shown") as ws_info:
            await engine.websocket("svc", path.replace("https://", "wss://"))
        assert PASSWORD not in str(ws_info.value)


# -- 5. a JSON answer that is malformed or of the wrong kind -----------------------------------


def _response(body: bytes, status: int = 200) -> Response:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    return Response(status, headers, body, "GET", "http://h.example/api/x", "svc")


@pytest.mark.parametrize(
    ("body", "expect", "said"),
    [
        (b"true", int, "expected a JSON integer, got a JSON boolean"),
        (b"false", float, "got a JSON boolean"),
        (
            b"1.5",
            int,
            "expected a JSON integer, got a JSON number written with a fraction or an exponent",
        ),
        (b"1", bool, "expected a JSON boolean, got a JSON integer"),
        (b'"1"', float, "expected a JSON number, got a JSON string"),
        (b'"1"', int | float, "expected a JSON integer or number, got a JSON string"),
        (b"true", int | str, "expected a JSON integer or string, got a JSON boolean"),
        (b"1" + b"0" * 400, float, "got a JSON integer too large for a float"),
    ],
)
def test_a_json_value_of_the_wrong_kind_is_said_precisely_and_logged(
    body: bytes, expect: type, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, "le_transport.engine"),
        pytest.raises(ResponseDecodeError, match=said),
    ):
        _response(body).json(expect)
    [record] = [r for r in caplog.records if r.name == "le_transport.engine"]
    assert record.levelno == logging.WARNING
    assert said in record.getMessage()
    assert "GET http://h.example/api/x" in record.getMessage()
    assert record.service == "svc"  # type: ignore[attr-defined]
    assert record.status == 200  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", [b"1e2", b"1.0", b" 2.50E+1\n"])
def test_a_float_refused_as_an_int_is_said_as_written_with_the_body_itself(
    body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """1e2 was "a number with a fraction", shown as "body starts '100.0'": the value
    re-serialised, not the body."""
    with (
        caplog.at_level(logging.WARNING, "le_transport.engine"),
        pytest.raises(ResponseDecodeError) as info,
    ):
        _response(body).json(int)
    said = (
        "expected a JSON integer, got a JSON number written with a fraction or an exponent; "
        f"status 200, body starts {body.decode().strip()!r}"
    )
    assert info.value.message == said
    [record] = [r for r in caplog.records if r.name == "le_transport.engine"]
    assert said in record.getMessage()


def test_a_number_from_an_auth_endpoint_is_still_not_shown() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    url = "http://h.example/api/account/1/token"
    with pytest.raises(ResponseDecodeError) as info:
        Response(200, headers, b"123456.0", "POST", url, "svc").json(int)
    assert "123456" not in info.value.message
    assert "auth endpoint's body, not shown" in info.value.message


@pytest.mark.parametrize(
    ("body", "expect", "value"),
    [
        (b"1", float, 1.0),  # JSON has one number type: an integer is a float's value too
        (b"1.5", float, 1.5),
        (b"2", int, 2),
        (b"true", bool, True),
        (b"true", object, True),
        (b"7", int | None, 7),
    ],
)
def test_a_json_value_of_the_expected_kind_is_returned(
    body: bytes, expect: type, value: object
) -> None:
    got: object = _response(body).json(expect)
    assert got == value
    assert type(got) is type(value)


async def test_a_malformed_json_answer_is_logged_with_its_body_scrubbed(
    serve: ServerFactory, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """It raised ResponseDecodeError with no log record at all."""

    async def bad(request: web.Request) -> web.Response:
        body = '{"password": "' + PASSWORD + '", "users": [1, 2'
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/bad", bad)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with (
            caplog.at_level(logging.WARNING, "le_transport.engine"),
            pytest.raises(ResponseDecodeError, match="not valid JSON"),
        ):
            await engine.request_json("GET", "svc", "/bad")
    [record] = [r for r in caplog.records if r.name == "le_transport.engine"]
    assert "body is not valid JSON" in record.getMessage()
    assert "/bad" in record.getMessage()
    assert PASSWORD not in record.getMessage()
    assert record.method == "GET"  # type: ignore[attr-defined]


# -- 6. header names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({"Authorization:Bearer mine": "x"}, "holds ':'"),
        ({"": "v"}, "a header name is empty"),
        ({"X A": "v"}, "holds ' '"),
        ({"X-Tr\u00e4ce": "v"}, "holds U\\+00E4"),
        ({"Content-Length": "5"}, "header 'Content-Length' is not the caller's to set"),
        ({"transfer-encoding": "chunked"}, "header 'transfer-encoding' is not the caller's"),
    ],
)
async def test_a_header_name_that_is_no_token_or_frames_the_body_is_refused_unsent(
    serve: ServerFactory, clock: VirtualClock, headers: dict[str, str], said: str
) -> None:
    seen: list[tuple[str, str, bytes]] = []
    host = await serve(_echo_app(seen))
    async with Engine({"svc": host}, scheme="http", clock=clock, auth=StaticBearer("t0k")) as e:
        with pytest.raises(InvalidRequest, match=said) as info:
            await e.request(
                "PUT", "svc", "/a", data=b"12345GET /smuggled HTTP/1.1", headers=headers
            )
        with pytest.raises(InvalidRequest, match=said):
            await e.websocket("svc", "/ws", headers=headers)
        # A name that is a token, odd as it looks, goes out.
        ok = await e.request("GET", "svc", "/b", headers={"X-Trace_id.v2!": "1"})
    assert "Bearer mine" not in str(info.value)
    assert "chunked" not in str(info.value)
    assert ok.status == 200
    assert seen == [("GET", "/b", b"")]


# -- 7. a streamed body and a 307 --------------------------------------------------------------


async def test_a_streamed_body_met_by_a_307_says_it_was_sent(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """It said "the request could not be made", though the server had processed it."""
    seen: list[bytes] = []

    async def a(request: web.Request) -> web.Response:
        seen.append(await request.read())
        raise web.HTTPTemporaryRedirect("/b")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"order-1"

    app = web.Application()
    app.router.add_post("/a", a)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(RequestError) as info:
            await engine.request("POST", "svc", "/a", data=chunks())
    message = str(info.value)
    assert "the request was sent, and answered 307" in message
    assert "cannot follow the 307 redirect" in message
    assert "could not be made" not in message
    assert seen == [b"order-1"]


# -- 8. recover=True and bodies that can be sent again -----------------------------------------


async def test_recover_sends_a_file_body_whole_on_every_run(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A BytesIO was refused as "a streamed body"; it goes out whole on every attempt and on
    the run after the re-login (read into memory once, before the first)."""
    seen: list[tuple[str, str, bytes]] = []
    host = await serve(_echo_app(seen, fail_first=4))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=FAST) as engine:
        resp = await engine.request("PUT", "svc", "/f", data=io.BytesIO(b"payload"), recover=True)
    assert resp.status == 200
    assert [body for _, _, body in seen] == [b"payload"] * 5
    assert engine.recovery.relogins == 0  # no auth provider; the round ran all the same
    assert len(engine.recovery.pauses) == 1


async def test_recover_sends_a_file_on_disk_again_after_the_re_login(
    serve: ServerFactory, clock: VirtualClock, tmp_path: Path
) -> None:
    """aiohttp closes a file body once sent: the run after the re-login failed with a bare
    ValueError ("seek of closed file"). Read from where it stands, sent whole each run."""
    path = tmp_path / "body.bin"
    path.write_bytes(b"head:payload")
    seen: list[tuple[str, str, bytes]] = []
    host = await serve(_echo_app(seen, fail_first=1))
    once = RetryPolicy(pauses=(), attempt_timeout=None)
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=once) as engine:
        with path.open("rb") as file:
            file.seek(5)
            resp = await engine.request("PUT", "svc", "/f", data=file, recover=True)
    assert resp.status == 200
    assert [body for _, _, body in seen] == [b"payload", b"payload"]
    assert len(engine.recovery.pauses) == 1


async def test_recover_sends_a_text_file_in_the_charset_its_content_type_names(
    serve: ServerFactory, clock: VirtualClock, tmp_path: Path
) -> None:
    path = tmp_path / "body.txt"
    path.write_text("Zoë", encoding="utf-8")
    seen: list[tuple[str, str, bytes]] = []
    host = await serve(_echo_app(seen, fail_first=1))
    once = RetryPolicy(pauses=(), attempt_timeout=None)
    headers = {"Content-Type": "text/plain; charset=iso-8859-1"}
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=once) as engine:
        with path.open(encoding="utf-8") as file:
            resp = await engine.request(
                "PUT", "svc", "/f", data=file, headers=headers, recover=True
            )
    assert resp.status == 200
    assert [body for _, _, body in seen] == ["Zoë".encode("iso-8859-1")] * 2


async def test_recover_takes_a_form_given_as_pairs(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    seen: list[tuple[str, str, bytes]] = []
    host = await serve(_echo_app(seen))
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        resp = await engine.request("PUT", "svc", "/f", data=[("a", "b")], recover=True)
    assert resp.status == 200
    assert seen == [("PUT", "/f", b"a=b")]


class _Pipe(io.RawIOBase):
    """A readable stream that cannot seek (a pipe, a socket), holding ``b"piped"``."""

    def __init__(self) -> None:
        super().__init__()
        self._left = b"piped"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


async def test_recover_reads_a_stream_that_cannot_seek_once(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    seen: list[tuple[str, str, bytes]] = []
    host = await serve(_echo_app(seen, fail_first=1))
    once = RetryPolicy(pauses=(), attempt_timeout=None)
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=once) as engine:
        resp = await engine.request(
            "PUT", "svc", "/f", data=io.BufferedReader(_Pipe()), recover=True
        )
    assert resp.status == 200
    assert [body for _, _, body in seen] == [b"piped", b"piped"]


@pytest.mark.parametrize(
    ("name", "headers", "sent"),
    [
        ("report.json", None, "application/json"),
        ("report.json", {"X-Trace": "1"}, "application/json"),
        ("report.json", {"content-type": "text/csv"}, "text/csv"),
        ("report.le-unknown", None, "application/octet-stream"),
    ],
)
async def test_recover_sends_a_binary_file_with_the_content_type_aiohttp_gives_it(
    serve: ServerFactory,
    clock: VirtualClock,
    tmp_path: Path,
    name: str,
    headers: dict[str, str] | None,
    sent: str,
) -> None:
    """Read into bytes, a report.json went out as application/octet-stream, not as the
    application/json aiohttp guesses from the file's name when it sends the file itself."""
    path = tmp_path / name
    path.write_bytes(b'{"a": 1}')
    types: list[str | None] = []

    async def record(request: web.Request) -> web.Response:
        types.append(request.headers.get("Content-Type"))
        await request.read()
        return web.Response(status=503 if len(types) == 2 else 200)

    app = web.Application()
    app.router.add_put("/f", record)
    host = await serve(app)
    once = RetryPolicy(pauses=(), attempt_timeout=None)
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=once) as engine:
        for recover in (False, True):  # the first as aiohttp sends the file; then two runs
            with path.open("rb") as file:
                resp = await engine.request(
                    "PUT", "svc", "/f", data=file, headers=headers, recover=recover
                )
            assert resp.status == 200
    assert types == [sent] * 3


class _SlowPipe(io.RawIOBase):
    """A pipe whose content comes only once ``ready`` is set (or after 5 real seconds);
    ``reading`` is set once a read is waiting for it."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = threading.Event()
        self.reading = threading.Event()
        self._left = b"late"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self.reading.set()
        self.ready.wait(5)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


async def test_recover_reads_a_file_body_within_the_calls_deadline(serve: ServerFactory) -> None:
    """The file was read before the call's deadline was fixed, and without a bound: a pipe
    that took 3 s made a deadline=1 call last 3 s, then succeed."""
    seen: list[tuple[str, str, bytes]] = []
    host = await serve(_echo_app(seen))
    pipe = _SlowPipe()
    # Moved by hand: a VirtualClock's time waits for the read in the loop's thread pool.
    clock = VirtualClock(autojump=False)
    loop = asyncio.get_running_loop()
    try:
        async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
            call = asyncio.ensure_future(
                engine.request(
                    "PUT", "svc", "/f", data=io.BufferedReader(pipe), deadline=1, recover=True
                )
            )
            assert await loop.run_in_executor(None, pipe.reading.wait, 5)
            clock.advance(1)  # the call's deadline passes while the read is blocked
            with pytest.raises(DeadlineExceeded, match="deadline passed while its file body"):
                await call
            assert not pipe.ready.is_set()
    finally:
        pipe.ready.set()
    assert clock.now() == 1.0
    assert seen == []


async def _generated() -> AsyncIterator[bytes]:
    yield b"x"


def _file_payload(tmp_path: Path) -> object:
    path = tmp_path / "payload.bin"
    path.write_bytes(b"x")
    return aiohttp.payload.get_payload(path.open("rb"))


def _closed_file(tmp_path: Path) -> object:
    file = io.BytesIO(b"x")
    file.close()
    return file


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda _: _generated(), "an async iterable \\(async_generator\\), read as it is sent"),
        # aiohttp closes it, with its file, once sent: the run after the re-login failed.
        (_file_payload, "an aiohttp payload \\(BufferedReaderPayload\\)"),
        (_closed_file, "a BytesIO that is closed"),
    ],
)
async def test_recover_refuses_only_a_body_that_can_be_sent_once(
    serve: ServerFactory, clock: VirtualClock, tmp_path: Path, make: object, said: str
) -> None:
    seen: list[tuple[str, str, bytes]] = []
    host = await serve(_echo_app(seen))
    body = make(tmp_path)  # type: ignore[operator]
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match=said):
            await engine.request("PUT", "svc", "/f", data=body, recover=True)
    if hasattr(body, "aclose"):
        await body.aclose()
    if isinstance(body, aiohttp.payload.Payload):
        await body.close()
    assert seen == []


@pytest.mark.parametrize("kind", ["bytesio", "file"])
async def test_a_closed_file_as_data_is_refused_naming_data_and_why(
    serve: ServerFactory, clock: VirtualClock, tmp_path: Path, kind: str
) -> None:
    """Without recover=True it was 'invalid request (ValueError)' and the list of what each
    argument may be, which names neither data nor that the file is closed."""
    seen: list[tuple[str, str, bytes]] = []
    host = await serve(_echo_app(seen))
    body: IO[bytes]
    if kind == "file":
        path = tmp_path / "body"
        path.write_bytes(b"x")
        body = path.open("rb")
    else:
        body = io.BytesIO(b"x")
    body.close()
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match=r"data is a [A-Za-z]+ that is closed: nothing"):
            await engine.request("PUT", "svc", "/f", data=body)
    assert seen == []


# -- 9. Response.text with an encoding Python cannot look up ----------------------------------


def test_text_in_an_encoding_with_a_nul_is_the_callers_mistake_typed() -> None:
    with pytest.raises(InvalidRequest, match="is not a text encoding Python knows"):
        _response(b"x").text("utf-8\x00")


def test_a_declared_charset_python_cannot_look_up_is_read_as_utf8() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "text/plain; charset=utf-8\x00"}))
    resp = Response(200, headers, "Zo\u00eb".encode(), "GET", "http://h.example/x", "svc")
    assert resp.text() == "Zo\u00eb"


# -- 10. options that must be bools ------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "said"),
    [
        ({"allow_redirects": "no"}, "allow_redirects must be True or False, got str"),
        ({"allow_redirects": 0}, "allow_redirects must be True or False, got int"),
        ({"recover": "false"}, "recover must be True or False, got str"),
        ({"recover": 1}, "recover must be True or False, got int"),
    ],
)
async def test_an_option_that_is_no_bool_is_refused_unsent(
    serve: ServerFactory, clock: VirtualClock, option: dict[str, object], said: str
) -> None:
    seen: list[tuple[str, str, bytes]] = []
    host = await serve(_echo_app(seen))
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match=said):
            await engine.request("GET", "svc", "/x", **option)  # type: ignore[arg-type]
        assert (await engine.request("GET", "svc", "/x", allow_redirects=False)).status == 200
    assert seen == [("GET", "/x", b"")]
