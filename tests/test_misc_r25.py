"""Small defects: backoff attempt numbers and factors near 1, error attributes' docs, the app
key's refusal of a bearer, read-only state event details, and the demo with no stdout."""

from __future__ import annotations

from typing import Any

import pytest

from le_transport import Secret
from le_transport.errors import ConfigurationError, RecoveryFailed, RetryBudgetExhausted
from le_transport.providers import AppKeyAuth

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


# -- AppKeyAuth: a bearer given as the app key ---------------------------------------------------


@pytest.mark.parametrize("key", ["Bearer zqx", "bearer zqx", Secret("Bearer zqx")])
def test_app_key_that_is_a_bearer_is_refused_naming_app_key_auth_not_static_bearer(
    key: Any,
) -> None:
    with pytest.raises(ConfigurationError, match=r"AppKeyAuth\.app_key") as info:
        AppKeyAuth("123", key)
    message = str(info.value)
    assert "zqx" not in message
    assert "StaticBearer writes" not in message  # AppKeyAuth writes its own header
    assert "LivePerson appKey=<key>" in message
    assert "bearer" in message.lower()
