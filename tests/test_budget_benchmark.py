"""The overload benchmark's amplification part still runs, and still shows what it is for.

Virtual time only (no process fleet, no timing asserted): under a full outage the bare schedule
and the tenacity/stamina loops send 4 requests per call; the budget sends far fewer.
"""

from __future__ import annotations

import pytest

from benchmarks import overload


def test_under_a_full_outage_the_budget_cuts_amplification_from_four_to_near_one() -> None:
    with overload.quiet():
        data, text = overload.amplification(overload.SIZES["tiny"])
    full = {variant: data[variant]["100%"]["amplification"] for variant in data}
    assert full["bare schedule"] == pytest.approx(4.0)
    assert full["tenacity"] == pytest.approx(4.0)
    assert full["stamina"] == pytest.approx(4.0)
    assert full["+ budget"] < 1.5
    assert full["+ budget + breaker"] <= full["+ budget"]
    assert "sent/call" in text
