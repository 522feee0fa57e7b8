"""Odd cases of small fixes: an error's text cut while redacted within a bound, ..."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from le_transport import Engine, StaticDomains, _redact
from le_transport._shown import SHOWN_LIMIT, error_text
from le_transport.errors import InvalidRequest
from le_transport.sockets import EngineDialer
from le_transport.testing import VirtualClock


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer " + "A" * (_redact.CUT_MARGIN + 500) + " tail",
        "password=" + "A" * (_redact.CUT_MARGIN + 500) + " and the rest of the message",
    ],
)
def test_an_error_text_cut_before_redaction_is_marked_as_cut(text: str) -> None:
    # Redacted over what is shown plus a margin, a long secret shrank to its marker and the
    # text after the margin was never read: what was shown was short, and came without "…",
    # as if it were the whole text (its tail, which the whole text's redaction showed, gone).
    shown = error_text(RuntimeError(text))
    assert "AAAA" not in shown
    assert len(shown) <= SHOWN_LIMIT + 1
    assert shown.endswith("…")


def test_an_error_text_shown_whole_has_no_mark() -> None:
    assert error_text(RuntimeError("x" * SHOWN_LIMIT)) == "x" * SHOWN_LIMIT
    assert error_text(RuntimeError("x" * (SHOWN_LIMIT + 1))) == "x" * SHOWN_LIMIT + "…"
    text = "password=" + "A" * 100 + " end"
    assert error_text(RuntimeError(text)) == _redact.redact_text(text)


@pytest.mark.parametrize(
    "params",
    [
        MultiDict([("tag", "a"), ("tag", "b")]),
        MultiDict([("v", "1"), ("x", "2"), ("v", "3")]),
    ],
)
async def test_a_socket_query_mapping_that_repeats_a_name_is_refused(
    clock: VirtualClock, params: MultiDict[str]
) -> None:
    # A MultiDict is a Mapping: its repeated name was taken, and the dialer's query (by name)
    # kept its first value alone, dropping the others silently, where pairs that repeat a
    # name are refused. Refused at the call, before the host is resolved.
    resolved: list[str] = []

    class _Domains(StaticDomains):
        async def resolve(self, service: str) -> str:
            resolved.append(service)
            return await super().resolve(service)

    domains = _Domains({"svc": "127.0.0.1:1"})
    async with Engine(domains, scheme="http", clock=clock) as engine:
        with pytest.raises(InvalidRequest, match="repeats a name"):
            await engine.websocket("svc", "/ws", params=params)
        with pytest.raises(InvalidRequest, match="repeats a name"):
            EngineDialer(engine, "svc", "/ws", params=params)
    assert resolved == []


async def test_a_socket_query_mapping_of_distinct_names_is_kept(clock: VirtualClock) -> None:
    async with Engine(StaticDomains({"svc": "127.0.0.1:1"}), scheme="http", clock=clock) as engine:
        dialer = EngineDialer(engine, "svc", "/ws", params=MultiDict([("a", "1"), ("b", "2")]))
        assert dialer._params == {"a": "1", "b": "2"}
