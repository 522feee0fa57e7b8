"""A str body goes out in the charset its Content-Type header names.

aiohttp writes a str body as UTF-8 whatever the header says, so a server that decodes the
body in the named charset (as it must) read ``Ã©`` where the caller sent ``é``. The engine
encodes the text itself; text the charset cannot hold, or a charset Python does not know, is
refused before anything is sent, and the message shows neither the body nor a secret.
"""

from __future__ import annotations

import pytest
from aiohttp import web

from le_transport import Engine, InvalidRequest
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory

SECRET = "s3cr3t-in-a-body"


async def _recorder(serve: ServerFactory) -> tuple[str, list[tuple[str | None, bytes]]]:
    seen: list[tuple[str | None, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Content-Type"), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/x", record)
    return await serve(app), seen


@pytest.mark.parametrize(
    ("text", "content_type", "wire"),
    [
        ("café", "text/plain; charset=iso-8859-1", b"caf\xe9"),
        ("café", 'text/plain; charset="ISO-8859-1"', b"caf\xe9"),
        ("a=caf\u00e9", "application/x-www-form-urlencoded; charset=latin-1", b"a=caf\xe9"),
        ("привет", "text/plain; charset=koi8-r", "привет".encode("koi8-r")),
        ("café ☃", "text/plain; charset=UTF8", "café ☃".encode()),
        ("café ☃", "text/plain", "café ☃".encode()),
        ("café ☃", "text/plain; format=flowed", "café ☃".encode()),
    ],
    ids=["latin-1", "quoted-upper", "form-alias", "koi8-r", "utf8-alias", "none", "no-charset"],
)
async def test_a_str_body_is_written_in_the_charset_its_content_type_names(
    serve: ServerFactory, clock: VirtualClock, text: str, content_type: str, wire: bytes
) -> None:
    host, seen = await _recorder(serve)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        resp = await engine.request(
            "POST", "svc", "/x", data=text, headers={"content-TYPE": content_type}
        )
    assert resp.status == 200
    assert seen == [(content_type, wire)]
    assert wire.decode(_charset(content_type)) == text  # what the server reads


def _charset(content_type: str) -> str:
    _, _, charset = content_type.partition("charset=")
    return charset.strip('"') or "utf-8"


@pytest.mark.parametrize(
    ("text", "content_type", "expected"),
    [
        (f"{SECRET} ☃", "text/plain; charset=iso-8859-1", r"character 17 is not in it"),
        (SECRET, "text/plain; charset=no-such-charset", r"not a text encoding Python knows"),
        (SECRET, "text/plain; charset=rot13", r"not a text encoding Python knows"),
    ],
    ids=["cannot-hold", "unknown", "not-text"],
)
async def test_a_body_the_charset_cannot_carry_is_refused_before_anything_is_sent(
    serve: ServerFactory, clock: VirtualClock, text: str, content_type: str, expected: str
) -> None:
    host, seen = await _recorder(serve)
    async with Engine({"svc": host}, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match=expected) as caught:
            await engine.request(
                "POST", "svc", "/x", data=text, headers={"Content-Type": content_type}
            )
    assert seen == []
    assert SECRET not in str(caught.value)
    # Neither chained nor with a context: a UnicodeEncodeError holds the whole body.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert isinstance(caught.value, ValueError)
