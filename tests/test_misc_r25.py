"""Small defects: backoff attempt numbers and factors near 1, error attributes' docs, the app
key's refusal of a bearer, read-only state event details, and the demo with no stdout."""

from __future__ import annotations

from le_transport.errors import RecoveryFailed, RetryBudgetExhausted

# -- what ``last`` holds -----------------------------------------------------------------------


def test_retry_budget_exhausted_says_its_last_is_the_error_not_an_outcome() -> None:
    doc = RetryBudgetExhausted.__doc__ or ""
    assert "``last`` is the outcome" not in doc
    assert "RequestError" in doc
    assert "__cause__" in doc


def test_recovery_failed_says_what_its_last_may_be() -> None:
    doc = RecoveryFailed.__doc__ or ""
    assert "re-login" in doc
    assert "None" in doc
