"""Compressed answers: decoded for the caller, and held to the body limit by what they inflate to.

``Content-Length`` counts the bytes on the wire. For a gzip or deflate answer that is the
compressed size, and a few kilobytes can inflate to gigabytes (a decompression bomb): the body
limit must apply to the decoded bytes, with a typed error, not to the header.
"""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from aiohttp import web

from le_transport import BodyTooLarge, Engine
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

LIMIT = 1024 * 1024


def gzip_of_zeros(size: int) -> bytes:
    """A gzip member of ``size`` zero bytes, built without holding them all."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * 65536
    out = [squeeze.compress(block) for _ in range(size // len(block))]
    out.append(squeeze.flush())
    return b"".join(out)


def app_answering(body: bytes, encoding: str) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            body=body,
            headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
        )

    app = web.Application()
    app.router.add_get("/x", handle)
    return app


async def test_a_gzip_bomb_is_refused_by_what_it_inflates_to_not_by_its_content_length(
    serve: ServerFactory, clock: VirtualClock
) -> None:
    bomb = gzip_of_zeros(16 * LIMIT)
    assert len(bomb) < LIMIT // 10  # the header alone would have let it through
    host = await serve(app_answering(bomb, "gzip"))
    async with Engine({"svc": host}, scheme="http", clock=clock, max_body_bytes=LIMIT) as engine:
        with pytest.raises(BodyTooLarge) as refused:
            await engine.request("GET", "svc", "/x")
    assert refused.value.limit == LIMIT
    assert len(refused.value.attempts) == 1  # the same answer would come again: not retried


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_answer_within_the_limit_reaches_the_caller_decoded(
    serve: ServerFactory, clock: VirtualClock, encoding: str
) -> None:
    value = {"users": [{"id": n, "name": f"agent {n}"} for n in range(2000)]}
    raw = json.dumps(value).encode()
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    host = await serve(app_answering(body, encoding))
    async with Engine({"svc": host}, scheme="http", clock=clock, max_body_bytes=LIMIT) as engine:
        resp = await engine.request("GET", "svc", "/x")
    assert resp.body == raw
    assert resp.json() == value
