"""An OAuth 1.0 signer whose wall clock gives no positive epoch second is refused as such.

RFC 5849 3.3 makes ``oauth_timestamp`` a positive integer of seconds since 1970. A wall clock
answering 0, a negative number or a fraction of a second (a monotonic clock given by mistake
at start-up, a test's clock at 0) was signed as it was: the server refused it with a 401, and
the call ended in an AuthenticationError that blamed the credentials.
"""

from __future__ import annotations

import pytest
from yarl import URL

from le_transport.errors import ConfigurationError
from le_transport.providers.oauth1 import OAuth1Signer
from tests.known_secrets import CLIENT_SECRET


def _signer(now: float) -> OAuth1Signer:
    return OAuth1Signer(
        "app-key", CLIENT_SECRET, "access-token", CLIENT_SECRET, wall_clock=lambda: now
    )


@pytest.mark.parametrize("now", [0.0, 0.5, -1.0, -1e9])
def test_a_wall_clock_before_1970_is_refused_with_what_it_gave(now: float) -> None:
    with pytest.raises(ConfigurationError) as refused:
        _signer(now).header("GET", URL("https://h.example/p"))
    message = str(refused.value)
    assert "oauth_timestamp must be a positive number" in message
    assert f"{now:.6g}" in message
    assert CLIENT_SECRET not in message


def test_a_wall_clock_at_one_second_is_signed() -> None:
    header = _signer(1.0).header("GET", URL("https://h.example/p"))
    assert 'oauth_timestamp="1"' in header
