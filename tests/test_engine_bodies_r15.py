"""Bodies and headers the engine sent wrong or refused in the wrong words: a multipart form
under ``recover=True`` (aiohttp builds one once, then closes it with its files), a header value
holding a lone surrogate (dropped by aiohttp's writer, another value sent), and a str body or a
form value holding one (refused as if a str were the wrong type). Real loopback servers,
virtual time."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.payload
import pytest
from aiohttp import web

from le_transport import Engine, InvalidRequest, RetryPolicy
from le_transport.errors import DeadlineExceeded
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

#: One attempt a run: a 503 ends the run, and the recovery loop runs the call again.
ONCE = RetryPolicy(pauses=(), attempt_timeout=None)

#: What os.fsdecode (or os.environ) gives for a byte that is not UTF-8: '\udcff'.
SURROGATE = os.fsdecode(b"agent-\xff7")

#: A part as the server read it: its headers (Content-Type, Content-Disposition) and content.
Part = tuple[tuple[tuple[str, str], ...], bytes]


def _multipart_app(
    parts: list[list[Part]], statuses: list[int], bodies: list[bytes] | None = None
) -> web.Application:
    """Answers each request with the next of ``statuses`` (then 200), recording the parts of
    its multipart body (or, for another body, its bytes in ``bodies``)."""
    script = iter(statuses)

    async def record(request: web.Request) -> web.Response:
        if request.content_type.startswith("multipart/"):
            got: list[Part] = []
            reader = await request.multipart()
            async for part in reader:
                assert isinstance(part, aiohttp.BodyPartReader)
                headers = tuple(sorted((k, v) for k, v in part.headers.items()))
                got.append((headers, await part.read()))
            parts.append(got)
        else:
            assert bodies is not None
            bodies.append(await request.read())
        return web.Response(status=next(script, 200), text="{}")

    app = web.Application()
    app.router.add_route("*", "/f", record)
    return app


def _rich_form(tmp_path: Path) -> tuple[aiohttp.FormData, list[io.IOBase]]:
    """A multipart form of every kind of field, with fresh files, and the files to close."""
    report = tmp_path / "report.json"
    report.write_bytes(b'{"a": 1}')
    notes = tmp_path / "notes.txt"
    notes.write_text("Zoë's notes", encoding="utf-8")
    binary = report.open("rb")
    text = notes.open(encoding="utf-8")
    memory = io.BytesIO(b"in memory")
    form = aiohttp.FormData(charset="utf-8", quote_fields=False)
    form.add_field("greeting", "Zoë")
    form.add_field("report", binary)  # filename and Content-Type from the file's name
    form.add_field("notes", text, filename="renamed.txt")
    form.add_field("memory", memory, filename="blob.bin")
    form.add_field("image", b"\x89PNG", content_type="image/png", filename="pic.png")
    form.add_field("scan", io.BytesIO(b"typed"), content_type="application/pdf")
    return form, [binary, text, memory]


# -- 1. a multipart form under recover=True ---------------------------------------------------


async def test_recover_sends_a_multipart_form_with_files_the_same_on_every_run(
    serve: ServerFactory, clock: VirtualClock, tmp_path: Path
) -> None:
    """aiohttp builds a multipart FormData once, and closes it (with its files) once sent: the
    run after the first failed to build the request, with an InvalidRequest listing what
    "params", "headers" and "data" may be. Now each run sends the parts aiohttp itself sends
    for the form: the same names, filenames, content types and contents."""
    parts: list[list[Part]] = []
    host = await serve(_multipart_app(parts, [200, 503]))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        for recover in (False, True):  # the first as aiohttp sends it; then two runs
            form, files = _rich_form(tmp_path)
            try:
                resp = await engine.request("PUT", "svc", "/f", data=form, recover=recover)
            finally:
                for file in files:
                    file.close()
            assert resp.status == 200
    assert len(engine.recovery.pauses) == 1
    assert len(parts) == 3
    assert parts[1] == parts[0]
    assert parts[2] == parts[0]
    by_name = {dict(headers)["Content-Disposition"]: (headers, body) for headers, body in parts[0]}
    assert len(by_name) == 6
    assert ("Content-Type", "application/json") in by_name[
        'form-data; name="report"; filename="report.json"'
    ][0]
    assert by_name['form-data; name="notes"; filename="renamed.txt"'][1] == "Zoë's notes".encode()


async def test_recover_retries_a_text_only_multipart_form_on_its_second_run(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """The second run took the first run's multipart writer, closed and so "consumed": its
    503 was not retried as a spent stream's, and the recovery loop gave up on it as not
    recoverable. Each run now retries its 503 as the first did."""
    parts: list[list[Part]] = []
    host = await serve(_multipart_app(parts, [503, 503, 503, 200]))
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("a", "1")
    twice = RetryPolicy(pauses=(0.05,), attempt_timeout=None)
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=twice) as engine:
        resp = await engine.request("PUT", "svc", "/f", data=form, recover=True)
    assert resp.status == 200
    assert len(parts) == 4
    assert all(got == parts[0] for got in parts)
    assert parts[0][0][1] == b"1"


@pytest.mark.parametrize("shape", ["mapping", "pairs"])
async def test_recover_sends_a_form_mapping_holding_a_file_again(
    serve: ServerFactory, clock: VirtualClock, tmp_path: Path, shape: str
) -> None:
    """A mapping or pairs holding a file is made a multipart form by aiohttp, and its file
    closed once sent: the second run failed to build the request, as a FormData's did."""
    path = tmp_path / "upload.bin"
    path.write_bytes(b"payload-123")
    parts: list[list[Part]] = []
    host = await serve(_multipart_app(parts, [503]))
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        with path.open("rb") as file:
            data: Any = {"note": "hi", "file": file} if shape == "mapping" else [("file", file)]
            resp = await engine.request("PUT", "svc", "/f", data=data, recover=True)
    assert resp.status == 200
    assert len(parts) == 2
    assert parts[1] == parts[0]
    assert parts[0][-1][1] == b"payload-123"


async def test_recover_sends_a_url_encoded_form_data_again(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A url-encoded FormData is encoded from its fields on every build (aiohttp keeps them):
    sent again as it is, not read into a multipart form."""
    parts: list[list[Part]] = []
    bodies: list[bytes] = []
    host = await serve(_multipart_app(parts, [503], bodies))
    form = aiohttp.FormData({"a": "1", "b": "Zoë"})
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=ONCE) as engine:
        resp = await engine.request("PUT", "svc", "/f", data=form, recover=True)
    assert resp.status == 200
    assert parts == []
    assert bodies == [b"a=1&b=Zo%C3%AB"] * 2


async def _chunks() -> AsyncIterator[bytes]:
    yield b"x"


def _closed_file_field(tmp_path: Path) -> aiohttp.FormData:
    file = io.BytesIO(b"x")
    file.close()
    form = aiohttp.FormData()
    form.add_field("upload", file, filename="x.bin")
    return form


def _stream_field(tmp_path: Path) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("upload", _chunks(), filename="x.bin")
    return form


def _payload_field(tmp_path: Path) -> aiohttp.FormData:
    path = tmp_path / "x.bin"
    path.write_bytes(b"x")
    form = aiohttp.FormData()
    form.add_field("upload", aiohttp.payload.get_payload(path.open("rb")), filename="x.bin")
    return form


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (_closed_file_field, "field 'upload' is a BytesIO that is closed"),
        (_stream_field, r"field 'upload' is an async iterable \(async_generator\)"),
        (_payload_field, r"field 'upload' is an aiohttp payload \(BufferedReaderPayload\)"),
    ],
)
async def test_recover_refuses_a_multipart_form_with_a_field_sent_only_once(
    serve: ServerFactory,
    clock: VirtualClock,
    tmp_path: Path,
    make: Callable[[Path], aiohttp.FormData],
    said: str,
) -> None:
    """Taken as it was, such a form went out on the first run and broke the next (or failed
    as a bare "invalid request"): refused before anything is sent, the field named."""
    parts: list[list[Part]] = []
    host = await serve(_multipart_app(parts, []))
    form = make(tmp_path)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match=f"the body is a multipart form whose {said}"):
            await engine.request("PUT", "svc", "/f", data=form, recover=True)
    for _, _, value in form._fields:  # what the test opened
        if isinstance(value, aiohttp.payload.Payload):
            await value.close()
        elif hasattr(value, "aclose"):
            await value.aclose()
    assert parts == []


async def test_recover_refuses_a_multipart_form_aiohttp_built_already(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """A FormData sent by an earlier call is empty of fields (aiohttp moved them into its
    writer, now closed): refused, not sent as the spent writer."""
    parts: list[list[Part]] = []
    host = await serve(_multipart_app(parts, []))
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("a", "1")
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        await engine.request("PUT", "svc", "/f", data=form)
        with pytest.raises(InvalidRequest, match="a multipart FormData that aiohttp has built"):
            await engine.request("PUT", "svc", "/f", data=form, recover=True)
    assert len(parts) == 1


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


async def test_recover_reads_the_files_of_a_form_within_the_calls_deadline(
    serve: ServerFactory,
) -> None:
    """A form's file is read into memory as a file body is: within the call's deadline."""
    parts: list[list[Part]] = []
    host = await serve(_multipart_app(parts, []))
    pipe = _SlowPipe()
    form = aiohttp.FormData()
    form.add_field("upload", io.BufferedReader(pipe), filename="late.bin")
    # Moved by hand: a VirtualClock's time waits for the read in the loop's thread pool.
    clock = VirtualClock(autojump=False)
    loop = asyncio.get_running_loop()
    try:
        async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
            call = asyncio.ensure_future(
                engine.request("PUT", "svc", "/f", data=form, deadline=1, recover=True)
            )
            assert await loop.run_in_executor(None, pipe.reading.wait, 5)
            clock.advance(1)  # the call's deadline passes while the read is blocked
            with pytest.raises(
                DeadlineExceeded, match="while the files of its multipart form were read"
            ):
                await call
            assert not pipe.ready.is_set()
    finally:
        pipe.ready.set()
    assert clock.now() == 1.0
    assert parts == []


# -- 2. a header value holding a lone surrogate -----------------------------------------------


async def test_a_header_value_with_a_lone_surrogate_is_refused_not_altered(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """aiohttp's writer skipped the character: 'agent-\\udcff7' went out as 'agent-7',
    another value than the one given, as a path or a query with one would have been (they
    are refused)."""
    seen: list[str | None] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-On-Behalf"))
        return web.Response(text="{}")

    app = web.Application()
    app.router.add_get("/f", record)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest) as caught:
            await engine.request("GET", "svc", "/f", headers={"X-On-Behalf": SURROGATE})
        # Text UTF-8 can encode goes out as before.
        await engine.request("GET", "svc", "/f", headers={"X-On-Behalf": "Zoë"})
    message = str(caught.value)
    assert "'X-On-Behalf' has a value holding a character UTF-8 cannot encode" in message
    assert "the value is not shown" in message
    assert "agent" not in message
    assert "\\udcff" not in message
    assert seen == ["Zoë"]


async def test_a_header_name_with_a_lone_surrogate_is_refused_unshown(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    parts: list[list[Part]] = []
    host = await serve(_multipart_app(parts, []))
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match="U\\+DCFF") as caught:
            await engine.request("GET", "svc", "/f", headers={SURROGATE: "x"})
    assert "agent" not in str(caught.value)
    assert parts == []


# -- 3. a body holding a lone surrogate -------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (os.fsdecode(b"secret-\xffbody"), "data (a str) holds a character UTF-8 cannot encode"),
        ({"note": SURROGATE}, "data['note'] holds a character UTF-8 cannot encode"),
        ([("a", "1"), ("note", SURROGATE)], "data['note'] holds a character UTF-8 cannot"),
        ({"tags": ["a", SURROGATE]}, "data['tags'] holds a character UTF-8 cannot encode"),
        ({SURROGATE: "x"}, "data[<1st field>] holds a character UTF-8 cannot encode"),
    ],
)
@pytest.mark.parametrize("recover", [False, True])
async def test_a_body_with_a_lone_surrogate_is_said_to_be_one(
    serve: ServerFactory, clock: VirtualClock, data: object, said: str, recover: bool
) -> None:
    """It was "data must be bytes, str, a form mapping or an async iterable of bytes, got a
    str": a str refused for being a str (aiohttp's UnicodeEncodeError, taken for a wrong
    type)."""
    bodies: list[bytes] = []
    host = await serve(_multipart_app([], [], bodies))
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest) as caught:
            await engine.request("POST", "svc", "/f", data=data, recover=recover)  # type: ignore[arg-type]
    message = str(caught.value)
    assert said in message
    assert "got a" not in message
    assert "secret" not in message
    assert "agent" not in message
    assert bodies == []


async def test_a_multipart_field_with_a_lone_surrogate_is_said_to_be_one(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    """It was "invalid request (TypeError)" and the list of what each argument may be."""
    bodies: list[bytes] = []
    host = await serve(_multipart_app([], [], bodies))
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("note", SURROGATE)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest) as caught:
            await engine.request("POST", "svc", "/f", data=form)
    message = str(caught.value)
    assert "data['note'] holds a character UTF-8 cannot encode" in message
    assert "agent" not in message
    assert bodies == []


@pytest.mark.parametrize("shape", ["file", "mapping", "form"])
async def test_the_files_a_call_sends_are_closed_once_it_is_over_as_aiohttp_closes_them(
    serve: ServerFactory, clock: VirtualClock, tmp_path: Path, shape: str
) -> None:
    """Read into memory under recover=True, a body's files were left open where aiohttp
    closes a file it sends (in a thread of its own, after the call: not checked here, as its
    timing is aiohttp's): a descriptor (and a ResourceWarning) per call of the usual
    ``data={"f": open(...)}``."""
    recover = True
    parts: list[list[Part]] = []
    bodies: list[bytes] = []
    host = await serve(_multipart_app(parts, [], bodies))
    (tmp_path / "r.json").write_bytes(b'{"a": 1}')
    file = (tmp_path / "r.json").open("rb")
    data: Any = file
    if shape == "mapping":
        data = {"report": file}
    elif shape == "form":
        data = aiohttp.FormData()
        data.add_field("report", file, filename="r.json")
    retry = RetryPolicy(pauses=(), attempt_timeout=None)
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=retry) as engine:
        resp = await engine.request("PUT", "svc", "/f", data=data, recover=recover)
    assert resp.status == 200
    assert file.closed
    assert bodies == [b'{"a": 1}'] if shape == "file" else len(parts) == 1


@pytest.mark.parametrize("recover", [False, True])
@pytest.mark.parametrize("shape", ["body", "mapping"])
@pytest.mark.parametrize("kind", [io.BytesIO, io.StringIO])
async def test_an_in_memory_buffer_stays_open_as_aiohttp_leaves_it(
    serve: ServerFactory,
    clock: VirtualClock,
    recover: bool,
    shape: str,
    kind: type[io.BytesIO] | type[io.StringIO],
) -> None:
    """d85e31c closed every file a recovering call read, a caller's BytesIO too, which
    aiohttp leaves open: building a report in one, sending it, then reading getvalue() failed
    with 'I/O operation on closed file'."""
    parts: list[list[Part]] = []
    bodies: list[bytes] = []
    host = await serve(_multipart_app(parts, [], bodies))
    buf = io.BytesIO(b"report") if kind is io.BytesIO else io.StringIO("report")
    data: Any = buf if shape == "body" else {"report": buf}
    retry = RetryPolicy(pauses=(), attempt_timeout=None)
    async with Engine({"svc": host}, scheme="http", clock=clock, retry=retry) as engine:
        resp = await engine.request("PUT", "svc", "/f", data=data, recover=recover)
    assert resp.status == 200
    assert not buf.closed
    assert buf.getvalue() in (b"report", "report")
