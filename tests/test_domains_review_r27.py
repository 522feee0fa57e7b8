"""A Domain API refresh's fallback and the fleet's map it adopts after a failed fetch.

1. A call's ``fallback`` may be a callable asked when the call gives up: one that raised (or
   answered no str) turned the give-up into its own exception, escaping the retry middleware
   in place of the call's typed error, with no give-up event; it now counts as not handled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp
import pytest
from yarl import URL

from le_transport import EventHooks, RetriesExhausted, RetryPolicy
from le_transport.events import GiveUpEvent
from le_transport.middleware import RetryMiddleware
from le_transport.providers import ProviderHttp
from le_transport.testing import VirtualClock
from tests.conftest import ServerFactory
from tests.test_providers import sim
from tests.test_retry_middleware import Script

__all__ = ["sim"]

_SECRET = "s3cret-in-a-fallback-error"

# -- 1. a callable fallback that fails never replaces the call's own give-up --------------------


def _raises() -> str | None:
    raise RuntimeError(_SECRET)


def _not_words() -> str | None:
    return 42  # type: ignore[return-value]


@pytest.mark.parametrize("fallback", [_raises, _not_words], ids=["raises", "not-a-str"])
async def test_a_fallback_that_fails_when_asked_leaves_the_give_up_as_any_calls(
    serve: ServerFactory,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    fallback: Callable[[], str | None],
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport")
    giveups: list[GiveUpEvent] = []
    host = await serve(Script(503).app())
    mw = RetryMiddleware(clock=clock, hooks=EventHooks(on_giveup=[giveups.append]))
    async with aiohttp.ClientSession() as session:
        http = ProviderHttp(session=lambda: session, retry_middleware=mw, clock=clock)
        with pytest.raises(RetriesExhausted):
            await http.request(
                "GET",
                URL(f"http://{host}/x"),
                service="sentinel",
                retry=RetryPolicy(pauses=()),
                fallback=fallback,
            )
    assert [g.handled_by_caller for g in giveups] == [False]
    [final] = [r for r in caplog.records if "failed after" in r.getMessage()]
    assert final.levelno == logging.ERROR
    assert "handled" not in final.getMessage()
    assert all(_SECRET not in r.getMessage() for r in caplog.records)
