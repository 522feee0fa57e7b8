"""The library's own error texts stay readable through redaction: a log line or a shown error
runs them through :func:`redact_text`, which reads ``name: value`` with a secret-like name as a
credential and hides the value after it (since an unquoted value runs past its blanks, the
whole rest of the sentence). Our messages must not put such a label before their words."""

from __future__ import annotations

from typing import Any

import pytest
from yarl import URL

from le_transport._redact import redact_text
from le_transport.errors import ConfigurationError
from le_transport.providers import OAuth1Signer


def _signer() -> OAuth1Signer:
    return OAuth1Signer("app-key", "app-secret", "token", "token-secret")


@pytest.mark.parametrize(
    ("method", "url", "words"),
    [
        ("GET", "https://h/x", "the url must be a yarl.URL, got str"),
        ("G ET", URL("https://h/x"), "the method must be an HTTP method token"),
        (7, URL("https://h/x"), "the method must be a non-empty str, got int"),
    ],
)
def test_a_signers_refusal_reads_the_same_redacted(method: Any, url: Any, words: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        _signer().header(method, url)
    text = str(info.value)
    assert words in text, text
    assert redact_text(text) == text  # it read "OAuth1Signer.header: ***"
