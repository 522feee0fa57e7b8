"""A closed auth provider is final: no token, no session, no event, no request after close.

Token providers (``providers/_token.py``) and Login Service auth (``providers/login.py``)
racing their own close: a fetch answering as the provider closes, two closes at once, a refresh
asked for during or after close.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from le_transport.errors import EngineClosed
from le_transport.events import StateEvent
from le_transport.providers._http import ProviderHttp, ProviderResponse
from le_transport.providers._token import TokenProvider
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.test_providers import sim, sim_engine

__all__ = ["sim"]


class _GatedTokens(TokenProvider):
    """A token provider whose token service answers the first request at once and every later
    one when ``gate`` is set."""

    _kind = "gated"

    def __init__(self) -> None:
        super().__init__(margin=60.0)
        self.gate = asyncio.Event()
        self.sent = 0

    async def _request_token(
        self, http: ProviderHttp, retry: Any, *, fallback: str | None = None
    ) -> tuple[ProviderResponse, str]:
        self.sent += 1
        if self.sent > 1:
            await self.gate.wait()
        body = json.dumps({"access_token": f"tok{self.sent}", "expires_in": 120}).encode()
        return ProviderResponse(status=200, body=body), "access_token"


async def test_a_token_answered_as_the_provider_closes_is_discarded(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The early fetch's answer arrives while close() stops it: close used to stop only the
    background task's wait, so the shared fetch went on, stored the new token after close and
    said ``logged_in``; credentials() then served a live bearer from a closed provider."""
    events: list[StateEvent] = []
    auth = _GatedTokens()
    async with sim_engine(sim, clock, auth=auth, events=events):
        await auth.credentials()  # tok1, due at +60 s
        await clock.sleep(61)
        await auth.credentials()  # due: the early fetch starts in the background
        for _ in range(100):
            if auth.sent == 2:
                break
            await asyncio.sleep(0)
        assert auth.sent == 2, "the early fetch is out"
        auth.gate.set()  # the token service answers ...
        await auth.close()  # ... as the provider closes
        assert auth.token is None
        with pytest.raises(EngineClosed):
            await auth.credentials()
        with pytest.raises(EngineClosed):
            await auth.fetch()
        assert auth.token is None
    assert [e.name for e in events if e.name == "logged_in"] == ["logged_in"], (
        "only the first token is announced; none after close"
    )
