"""The fault vocabulary and the client-side injector: plans that could never fire are refused,
and faults do what their docs say."""

from __future__ import annotations

import pytest

from le_transport.chaos import (
    FaultPlan,
    FaultRule,
    Match,
    Status,
    WsClose,
)
from le_transport.errors import ConfigurationError

# -- a path glob no URL path can match ----------------------------------------------------------


@pytest.mark.parametrize("unit", ["request", "ws_session"])
def test_an_empty_path_glob_is_refused_on_a_unit_matched_on_the_url_path(unit: str) -> None:
    # Before: accepted, and never fired (a URL path is at least "/"): a chaos test passed
    # having injected nothing.
    fault = Status(503) if unit == "request" else WsClose(4401)
    with pytest.raises(ConfigurationError, match=r"Match\(path=''\).*starts with '/'"):
        FaultRule("r", fault, unit=unit, match=Match(path=""))
    given: object = 503 if unit == "request" else {"kind": "ws_close", "code": 4401}
    plan = {"rules": [{"id": "r", "unit": unit, "match": {"path": ""}, "fault": given}]}
    with pytest.raises(ConfigurationError, match=r"Match\(path=''\)"):
        FaultPlan.from_dict(plan)
    # A message is matched on its type, which may be empty.
    FaultRule("r", Status(503), unit="ws_message", match=Match(path=""))
