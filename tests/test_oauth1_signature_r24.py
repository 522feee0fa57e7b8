"""``OAuth1Signer.signature()`` checks what it signs as ``header()`` does.

It skipped the checks: a lone surrogate in a body parameter, the nonce or the timestamp raised
``UnicodeEncodeError``, whose message quotes the value (which may be a credential), and a
method that is no str failed inside the base string. Each is now a ConfigurationError that
names only a type.
"""

from __future__ import annotations

from typing import Any

import pytest
from yarl import URL

from le_transport.errors import ConfigurationError
from le_transport.providers.oauth1 import OAuth1Signer

SECRET_PART = "s3cr3t\ud800"


def _signer() -> OAuth1Signer:
    return OAuth1Signer("key", "secret", "token", "token-secret")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nonce": SECRET_PART, "timestamp": "1"},
        {"nonce": "n", "timestamp": SECRET_PART},
        {"nonce": "n", "timestamp": "1", "body_params": [("a", SECRET_PART)]},
        {"nonce": "n", "timestamp": "1", "body_params": [("a", 1)]},
    ],
)
def test_a_value_it_cannot_sign_is_a_configuration_error_that_does_not_show_it(
    kwargs: dict[str, Any],
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        _signer().signature("POST", URL("https://h.example/p"), **kwargs)
    assert "s3cr3t" not in str(caught.value)


def test_a_method_that_is_no_str_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        _signer().signature(b"GET", URL("https://h.example/p"), nonce="n", timestamp="1")  # type: ignore[arg-type]


def test_the_signature_of_good_arguments_is_unchanged() -> None:
    signer = _signer()
    url = URL("https://h.example/p?b=2")
    sig = signer.signature("POST", url, nonce="n", timestamp="1", body_params=[("a", "1")])
    header = signer.header("POST", url, nonce="n", timestamp="1", body_params=[("a", "1")])
    from urllib.parse import quote

    assert f'oauth_signature="{quote(sig, safe="")}"' in header
