"""OAuth 1.0 signing: the method as RFC 5849 3.4.1.1 puts it in the base string, and the URL a
signing provider is handed when the request carries its own Host header."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

import pytest
from yarl import URL

from le_transport.providers import OAuth1Signer
from le_transport.providers.oauth1 import signature_base_string
from le_transport.testing.simulator import oauth1 as verifier

KEY, SECRET, TOKEN, TOKEN_SECRET = "ck-rv27", "cs rv27", "tk-rv27", "ts/rv27"


def _enc(text: str) -> str:
    return quote(text.encode("utf-8"), safe="-._~")


@pytest.mark.parametrize("method", ["M!SEARCH", "X*Y", "a+b", "GET'", "patch"])
def test_a_custom_method_is_percent_encoded_in_the_base_string(method: str) -> None:
    """RFC 5849 3.4.1.1 (item 1): the method in upper case, and "if the request uses a custom
    HTTP method, it MUST be encoded (Section 3.6)" (OAuth Core 1.0 9.1.3, which LiveEngage's
    guide cites, encodes every item). A method with '!', '*', '+' or "'" was put in unencoded:
    a signature any RFC verifier (oauthlib, scribe) refuses. The simulator's verifier agrees."""
    url = URL("https://va.example.net/api/x?v=1")
    expected = f"{_enc(method.upper())}&{_enc('https://va.example.net/api/x')}&"
    assert signature_base_string(method, url, []).startswith(expected)
    signer = OAuth1Signer(KEY, SECRET, TOKEN, TOKEN_SECRET)
    header = signer.header(method, url, nonce="n-m", timestamp="1")
    oauth = verifier.parse_oauth_header(header)
    params = [(k, v) for k, v in oauth.items() if k != "oauth_signature"] + [("v", "1")]
    normalised = "&".join(f"{k}={v}" for k, v in sorted((_enc(k), _enc(v)) for k, v in params))
    base = f"{expected}{_enc(normalised)}"
    digest = hmac.new(f"{_enc(SECRET)}&{_enc(TOKEN_SECRET)}".encode(), base.encode(), hashlib.sha1)
    assert oauth["oauth_signature"] == base64.b64encode(digest.digest()).decode()
    assert verifier.verify(
        method=method,
        url=url,
        oauth=oauth,
        extra_params=list(url.query.items()),
        consumer_secret=SECRET,
        token_secret=TOKEN_SECRET,
    )
