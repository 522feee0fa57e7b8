"""An answer a handler streams itself, cut by the simulator's ``TruncatedBody`` or
``MalformedBody``.

The simulator applies those two by running the handler and reworking its answer. An answer the
handler prepares itself (a ``web.StreamResponse`` it writes to) is on its way before the
handler returns: it cannot be replaced after the fact, and returning it as it is would count a
fault that was never delivered. So, while such a fault is in force, the simulator's
``on_response_prepare`` signal hands the first answer the handler prepares to :class:`BodyCut`
(the handler's code is unchanged), which cuts it on the wire:

- an answer with a body keeps its status and headers; a ``TruncatedBody`` passes the handler's
  first ``keep_bytes`` bytes, a ``MalformedBody`` every byte the handler writes, then the
  connection is closed before the body is complete (a ``Content-Length`` announces at least one
  byte more than is sent), so the client meets the payload error;
- an answer with no body (to a ``HEAD``, a 1xx, 204 or 304) has nothing to cut after its
  headers: the connection is closed before them (as ``EmptyResponse`` does), and the handler's
  ``prepare`` raises :class:`AnswerCut`;
- an answer of unknown length to an HTTP/1.0 request has no chunked framing whose missing end
  would show the cut: its body ends where the connection does, so the client would take the
  cut one as whole. A ``TruncatedBody`` announces ``keep_bytes + 1`` (at most ``keep_bytes``
  are sent, as the client-side injector announces one byte more than it keeps); where no
  length can be announced (a ``MalformedBody``, which sends every byte the handler writes, or
  an answer compressed as it is written, whose bytes on the wire no one counts beforehand;
  one whose handler enabled compression for a client that accepts none goes out uncompressed,
  its bytes counted as any) it is cut before its headers, as an answer with no body is.

A ``web.FileResponse`` the handler prepares itself sends its file past ``write``
(``loop.sendfile``): it is made to write it through its payload writer, whose ``write`` the cut
(or the pace) takes over.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11
from aiohttp.http_writer import StreamWriter
from aiohttp.payload import Payload

_log = logging.getLogger("le_transport.simulator")


class AnswerCut(Exception):
    """Raised from a handler's ``prepare`` when its answer is cut before its headers."""


def bodiless(method: str, status: int) -> bool:
    """Whether an answer to ``method`` with ``status`` has no body on the wire (RFC 9112
    6.3): a cut after its headers would leave it whole."""
    return method.upper() == "HEAD" or 100 <= status < 200 or status in (204, 304)


class _Ended(Exception):
    """Raised into a payload writing itself once its shaped answer wants no more of it."""


class _Sink:
    """What a payload writes itself to (``Payload.write(writer)`` calls ``writer.write``):
    ``write``, a shaped write, until ``ended()`` says the answer wants no more."""

    def __init__(
        self,
        write: Callable[[bytes | bytearray | memoryview], Awaitable[None]],
        ended: Callable[[], bool],
    ) -> None:
        self._write = write
        self._ended = ended

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._ended():
            raise _Ended
        await self._write(chunk)
        if self._ended():
            raise _Ended


def _held_body(
    request: web.Request, response: web.StreamResponse
) -> bytes | bytearray | Payload | None:
    """The body ``response`` holds if it is a ``web.Response`` (its handler prepared it):
    aiohttp's ``Response.write_eof`` writes it straight to the connection, not through
    ``write``, so a shaped ``write`` never saw it. Compressed if the answer compresses it
    (aiohttp did so as it prepared it, and announced that length); None if it has none."""
    if not isinstance(response, web.Response) or bodiless(request.method, response.status):
        return None
    compressed = getattr(response, "_compressed_body", None)  # aiohttp's, once compressed
    body = compressed if compressed is not None else response.body
    return body if isinstance(body, Payload) or body else None


async def _write_held(
    body: bytes | bytearray | Payload,
    write: Callable[[bytes | bytearray | memoryview], Awaitable[None]],
    ended: Callable[[], bool],
) -> None:
    """Write ``body`` (:func:`_held_body`) through ``write``, a shaped write, until ``ended()``
    (a payload as it comes, never read whole first: it may not end); a payload is closed."""
    if not isinstance(body, Payload):
        await write(body)
        return
    try:
        await body.write(cast("AbstractStreamWriter", _Sink(write, ended)))
    except _Ended:
        pass  # cut, or the simulator stopping: no more of it is wanted
    finally:
        await body.close()


def _file_write(
    response: web.FileResponse,
) -> Callable[[bytes | bytearray | memoryview], Awaitable[None]] | None:
    """For a ``web.FileResponse`` its handler is preparing (its headers made, not sent): once
    ``prepare`` returns, aiohttp sends its file past ``write`` (``loop.sendfile``, or its
    payload writer's ``write`` when it compresses). It is made to take the second way (the
    compression flag it reads then: its headers are made, and the flag changes nothing else),
    and the payload writer's own ``write`` is returned, for the shaper to route it through its
    shaped ``write`` (:func:`_route_file`). None if this aiohttp keeps these elsewhere and
    would send the file past the shaped ``write``: logged at WARNING, and the caller leaves
    the answer alone (it goes out unshaped, as aiohttp sends it, never a broken answer)."""
    writer = getattr(response, "_payload_writer", None)  # aiohttp's, set as it prepares it
    write = getattr(writer, "write", None)
    if callable(write):
        response._compression = True  # aiohttp's: past the headers, only picks the writer's way
        if response.compression:
            return cast("Callable[[bytes | bytearray | memoryview], Awaitable[None]]", write)
    _log.warning(
        "a web.FileResponse its handler prepared itself goes out unshaped: this aiohttp "
        "cannot be made to send its file through its payload writer"
    )
    return None


_Write = Callable[[bytes | bytearray | memoryview], Awaitable[None]]


def _write_to_shape(
    response: web.StreamResponse, file_through_write: bool
) -> tuple[_Write, bool] | None:
    """The write a shaper wraps for ``response``, and whether it is a prepared file's (its
    payload writer's, :func:`_file_write`; put back by :func:`_install_write`). None: a file
    this aiohttp sends past any write (logged), to be left unshaped."""
    if isinstance(response, web.FileResponse) and not file_through_write:
        file_write = _file_write(response)
        return None if file_write is None else (file_write, True)
    return response.write, False


def _install_write(response: web.StreamResponse, shaped: _Write, is_file: bool) -> None:
    """Send what ``response`` writes through ``shaped``: its ``write``, or for a prepared
    file (``is_file``) its file and the handler's own writes alike (:func:`_route_file`)."""
    if is_file:
        _route_file(response, shaped)  # its file, sent past response.write
    else:
        response.write = shaped  # type: ignore[method-assign, assignment]


def _route_file(
    response: web.StreamResponse,
    shaped: Callable[[bytes | bytearray | memoryview], Awaitable[None]],
) -> None:
    """Route what ``response`` (a ``web.FileResponse``, :func:`_file_write`) writes, its file
    and the handler's own writes alike, through ``shaped``; and send its file once: aiohttp
    prepares the answer a handler returns once more, and a ``FileResponse``'s ``prepare``
    opens and writes its file again (paced a second time, it held the connection, and the
    next request on it, as long again)."""

    async def write(chunk: bytes | bytearray | memoryview, **_: object) -> None:
        await shaped(chunk)

    writer = response._payload_writer
    assert writer is not None
    writer.write = write  # type: ignore[method-assign]
    # Its file sent, it is prepared as any answer is: a second prepare returns its writer.
    response.prepare = functools.partial(web.StreamResponse.prepare, response)  # type: ignore[method-assign]


class BodyCut:
    """A ``TruncatedBody`` (``keep``: its ``keep_bytes``) or ``MalformedBody`` (``keep``:
    None) in force on one request while its handler runs: the answer the handler prepares
    itself, if it does, is cut (see the module's text)."""

    def __init__(self, request: web.Request, keep: int | None) -> None:
        self._request = request
        self._keep = keep
        #: Whether the handler's prepared answer is still to be cut (False once the handler
        #: has returned, so that the simulator's own answer is not).
        self.armed = True
        #: Whether the handler prepared an answer, which this cut.
        self.attached = False
        #: Whether a ``web.FileResponse``'s file comes through ``write`` (the simulator sends
        #: the one a handler returned so), not past it as aiohttp sends it (:func:`_file_write`).
        self.file_through_write = False
        self._sent = 0
        self._closed = False
        self._response: web.StreamResponse | None = None

    @property
    def ended(self) -> bool:
        """Whether the cut was made: nothing more the handler writes is sent."""
        return self._closed

    async def finish(self) -> None:
        """Make the cut, if not made yet, once the handler has returned: an answer it prepared
        and did not end (a ``web.Response`` holds its body until then) is ended through the
        cut, its bytes as the fault keeps them, then the connection closed."""
        if self._response is not None and not self._closed:
            with contextlib.suppress(ConnectionError):
                await self._response.write_eof()
        self._close()

    def attach(self, response: web.StreamResponse) -> None:
        """Cut ``response``, being prepared: its headers are not on the wire yet."""
        self.armed = False
        self.attached = True
        if bodiless(self._request.method, response.status):
            self._close()
            raise AnswerCut("the answer was cut before its headers (injected fault)")
        self._response = response
        if hdrs.CONTENT_LENGTH in response.headers:
            length = int(response.headers[hdrs.CONTENT_LENGTH])
            keep = length if self._keep is None else min(self._keep, length)
            # At least one byte more than is sent, so that the client sees the body end short:
            # the whole body's length, or one byte more when all of it is kept (as the
            # client-side injector announces it), never keep_bytes + 1 (up to a terabyte).
            response.headers[hdrs.CONTENT_LENGTH] = str(max(length, keep + 1))
        elif self._request.version < HttpVersion11:
            # No chunked framing (HTTP/1.0): the body would end where the connection does, and
            # the cut one look whole. A length longer than what is sent, or no answer at all.
            if self._keep is None or _compresses(response):
                self._close()
                raise AnswerCut(
                    "an HTTP/1.0 answer of unknown length was cut before its headers "
                    "(injected fault)"
                )
            response.headers[hdrs.CONTENT_LENGTH] = str(self._keep + 1)
        # Else chunked: the last chunk is never sent, which the client sees as the cut.
        picked = _write_to_shape(response, self.file_through_write)
        if picked is None:
            return  # its file goes past any write (logged): sent as aiohttp sends it
        write, is_file = picked

        async def cut_write(data: bytes | bytearray | memoryview) -> None:
            if self._closed:
                return  # the handler goes on; its bytes go nowhere
            if self._keep is None or self._sent + len(data) < self._keep:
                self._sent += len(data)
                await write(data)
                return
            piece = data[: self._keep - self._sent]
            self._sent += len(piece)
            await write(piece)
            # A body compressed as it is written: the kept bytes out of the compressor, which
            # would hold them past the close (the client got none of them).
            await _flush_compressed(response, write)
            self._close()

        async def cut_write_eof(data: bytes = b"") -> None:
            if data:
                await cut_write(data)
            elif not self._closed and (held := _held_body(self._request, response)) is not None:
                # A web.Response it prepared: aiohttp's write_eof would write its body past
                # cut_write, and closing first sent nothing, its status and headers included.
                await _write_held(held, cut_write, lambda: self._closed)
            if not self._closed:
                await write(b"")  # its headers, if held back until its body (a web.Response's)
                await _flush_compressed(response, write)  # what the compressor holds of it
            self._close()

        _install_write(response, cut_write, is_file)
        response.write_eof = cut_write_eof  # type: ignore[method-assign]

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            transport = self._request.transport
            if transport is not None:
                transport.close()


def _compresses(response: web.StreamResponse) -> bool:
    """Whether ``response`` (prepared: its headers made) has its body compressed as it is
    written: its ``enable_compression()`` took (the client accepts the coding, or it was
    forced), not merely asked for, for a client that sent no ``Accept-Encoding`` gets it
    whole. An aiohttp that keeps its compressor elsewhere: as asked for."""
    writer = getattr(response, "_payload_writer", None)  # aiohttp's, once prepared
    compressor = getattr(writer, "_compress", _UNKNOWN)  # aiohttp's: None when not compressing
    if compressor is _UNKNOWN:
        return response.compression
    return compressor is not None


#: What :func:`_compresses` reads when aiohttp's compressor is not where it looks.
_UNKNOWN = object()


async def _flush_compressed(
    response: web.StreamResponse,
    write: Callable[[bytes | bytearray | memoryview], Awaitable[None]],
) -> None:
    """Send what ``response``'s compressor holds of the body written so far, if its body is
    compressed as it is written (a ``StreamResponse``'s, or a payload's, ``enable_compression``):
    zlib keeps what it is given until it has enough or the body ends, so a paced piece would
    reach the wire only with the last one. A sync flush (valid mid-stream in a deflate or gzip
    body) sends it now, written past the compressor (``write``: the one the pace wraps)."""
    writer = getattr(response, "_payload_writer", None)  # aiohttp's, once it is prepared
    if not isinstance(writer, StreamWriter):
        return
    compressor = getattr(writer, "_compress", None)  # aiohttp's: None when not compressing
    if compressor is None:
        return
    flushed = compressor.flush(zlib.Z_SYNC_FLUSH)
    if not flushed:
        return
    writer._compress = None  # these bytes are compressed already
    try:
        await write(flushed)
    finally:
        writer._compress = compressor


class BodyPace:
    """A ``SlowBody`` in force on one request while its handler runs: the answer the handler
    prepares itself, if it does, goes out as the fault says, its status and headers at once
    and its body in ``chunk_bytes`` pieces, ``pause`` seconds apart (``wait(pause)`` on the
    simulator's clock, False once it is stopping: the rest is dropped and the connection of
    ``request`` closed, the body cut short, never ended as if whole), as a returned answer's
    body is dribbled; bytes it hands ``write_eof`` too, and the body of a ``web.Response`` it
    prepared (which aiohttp's ``Response.write_eof`` writes itself). A body compressed as it
    is written is flushed out of the compressor after each piece, so that each reaches the
    wire as it is paced."""

    def __init__(
        self,
        chunk_bytes: int,
        pause: float,
        wait: Callable[[float], Awaitable[bool]],
        *,
        request: web.Request,
    ) -> None:
        self._request = request
        self._chunk = chunk_bytes
        self._pause = pause
        self._wait = wait
        #: Whether the handler's prepared answer is still to be paced (see BodyCut.armed).
        self.armed = True
        #: Whether the handler prepared an answer, which this paced.
        self.attached = False
        #: Whether the writes continue one another's pieces: the body of a payload or a file,
        #: which aiohttp (or the simulator) writes in the pieces it reads it in, not the
        #: handler: a pause only every ``chunk_bytes`` of the body, as a returned answer's
        #: (``ceil(len / chunk_bytes) - 1`` of them). Else each write starts a piece of its own.
        self.whole_pieces = False
        #: As :attr:`BodyCut.file_through_write`.
        self.file_through_write = False
        self._sent_any = False
        self._in_piece = 0  # bytes sent of the current piece
        self._stopped = False

    @property
    def ended(self) -> bool:
        """Whether the pace stopped (the simulator stopping): nothing more is sent."""
        return self._stopped

    def attach(self, response: web.StreamResponse) -> None:
        """Pace ``response``'s body, being prepared."""
        self.armed = False
        self.attached = True
        picked = _write_to_shape(response, self.file_through_write)
        if picked is None:
            return  # its file goes past any write (logged): sent as aiohttp sends it
        write, is_file = picked
        if is_file:
            self.whole_pieces = True  # a file: paced by its bytes, as a returned one's
        write_eof = response.write_eof

        async def paced_write(data: bytes | bytearray | memoryview) -> None:
            data = bytes(data)
            if not self.whole_pieces:
                # A piece of its own: after a pause, unless it is the answer's first.
                self._in_piece = self._chunk if self._sent_any else 0
            i = 0
            while i < len(data):
                if self._stopped:
                    return
                if self._in_piece >= self._chunk:
                    if not await self._wait(self._pause):
                        self._stop()
                        return
                    self._in_piece = 0
                piece = data[i : i + self._chunk - self._in_piece]
                self._sent_any = True
                await write(piece)
                await _flush_compressed(response, write)
                self._in_piece += len(piece)
                i += len(piece)

        finished = False

        async def paced_write_eof(data: bytes = b"") -> None:
            # aiohttp's write_eof writes its data straight to the connection, not through
            # write: a handler ending its answer with ``write_eof(body)`` sent it all at once,
            # and a web.Response it prepared its body.
            nonlocal finished
            if finished:
                return
            finished = True
            held = None if data else _held_body(self._request, response)
            if data:
                await paced_write(data)
            elif held is not None:
                self.whole_pieces = True  # its body, in the pieces aiohttp reads a payload in
                await _write_held(held, paced_write, lambda: self._stopped)
            if self._stopped:
                return  # the body is cut: its end (a chunked one's) not sent
            if held is not None:
                await web.StreamResponse.write_eof(response)  # its body is sent: only the end
            else:
                await write_eof()

        _install_write(response, paced_write, is_file)
        response.write_eof = paced_write_eof  # type: ignore[method-assign]

    def _stop(self) -> None:
        """The simulator is stopping: the rest is dropped, and the connection closed, so that
        the client sees the body cut short (a chunked body's end is never sent)."""
        self._stopped = True
        transport = self._request.transport
        if transport is not None:
            transport.close()


BODY_CUT_KEY: web.RequestKey[BodyCut] = web.RequestKey("le_transport_simulator_body_cut", BodyCut)
BODY_PACE_KEY: web.RequestKey[BodyPace] = web.RequestKey(
    "le_transport_simulator_body_pace", BodyPace
)

__all__ = ["BODY_CUT_KEY", "BODY_PACE_KEY", "AnswerCut", "BodyCut", "BodyPace", "bodiless"]
