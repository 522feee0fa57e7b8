"""The happy path's shortcuts (benchmarks/README.md) give what the long way gives."""

from __future__ import annotations

import copy
import pickle

import attrs
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from le_transport import Engine, Response
from le_transport.engine import _answer
from le_transport.errors import InvalidRequest, UnknownServiceError
from tests.conftest import ServerFactory


def test_answer_is_the_response_its_constructor_makes() -> None:
    headers = CIMultiDictProxy(CIMultiDict([("A", "1"), ("a", "2")]))
    fields = (200, headers, b"{}", "GET", "http://h/p", "svc", ())
    made = _answer(*fields)
    built = Response(*fields)
    assert type(made) is Response
    assert made == built
    assert hash(made) == hash(built)
    assert attrs.astuple(made, recurse=False) == attrs.astuple(built, recurse=False)
    assert repr(made) == repr(built)
    assert pickle.loads(pickle.dumps(made)) == built
    assert copy.deepcopy(made) == built
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        made.status = 500  # type: ignore[misc]


def test_answer_covers_every_field_in_order() -> None:
    # The setters are taken by field at import: a field added to Response must be added there.
    names = [field.name for field in attrs.fields(Response)]
    assert names == ["status", "headers", "body", "method", "url", "service", "attempts"]


async def test_static_map_read_in_place_answers_and_refuses_as_resolve_does(
    serve: ServerFactory,
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"host": request.host})

    app = web.Application()
    app.router.add_get("/ok", ok)
    host = await serve(app)
    async with Engine({"svc": host}, scheme="http") as engine:
        resp = await engine.request("GET", "svc", "/ok")
        assert resp.status == 200
        assert resp.service == "svc"
        assert resp.url == f"http://{host}/ok"
        assert len(resp.attempts) == 1
        with pytest.raises(UnknownServiceError, match="unknown service 'nope'"):
            await engine.request("GET", "nope", "/ok")
        with pytest.raises(InvalidRequest):
            await engine.request("GET", ["unhashable"], "/ok")  # type: ignore[arg-type]
