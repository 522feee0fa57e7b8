"""The library's own error texts stay readable through redaction: a log line or a shown error
runs them through :func:`redact_text`, which reads ``name: value`` with a secret-like name as a
credential and hides the value after it (since an unquoted value runs past its blanks, the
whole rest of the sentence). Our messages must not put such a label before their words."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from le_transport._redact import redact_text
from le_transport.errors import ConfigurationError
from le_transport.providers import Credentials, OAuth1Signer, StaticBearer
from le_transport.providers._http import require_attached
from le_transport.providers.auth import InvalidCredentials
from le_transport.testing.simulator import SimRoute


async def _never(request: web.Request) -> web.StreamResponse:
    raise AssertionError("not called")


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


def test_our_refusals_that_name_an_auth_argument_read_the_same_redacted() -> None:
    """``auth=`` and ``headers:`` in our own words read as credentials: the rest of the
    sentence was hidden (``pass auth= ***``, ``Credentials.headers: ***``)."""
    with pytest.raises(ConfigurationError) as unattached:
        require_attached(None, StaticBearer("tok"))
    with pytest.raises(InvalidCredentials) as bad_header:
        Credentials(headers={"X-Trace": 7})
    with pytest.raises(ConfigurationError) as no_account:
        SimRoute("GET", "/x", handler=_never, auth=True)
    for info in (unattached, bad_header, no_account):
        text = str(info.value)
        assert redact_text(text) == text, text
    assert "the value is not shown" in str(bad_header.value)
