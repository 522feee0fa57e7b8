"""OAuth 1.0 HMAC-SHA1 request signing: RFC 5849's own examples, an independent signer
(oauthlib), the guide's one-line header, and the simulator's verifying endpoints."""

from __future__ import annotations

import ipaddress
import itertools
import re
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oauthlib import oauth1 as independent  # type: ignore[import-untyped]
from yarl import URL

from le_transport.errors import AuthenticationError
from le_transport.providers import OAuth1Auth, OAuth1Signer, StaticDomains
from le_transport.providers.oauth1 import (
    base_string_uri,
    hmac_sha1_signature,
    percent_encode,
    signature_base_string,
)
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import ACCESS_TOKEN, ACCESS_TOKEN_SECRET, APP_SECRET
from tests.test_providers import ACCOUNT, APP_KEY, sim, sim_engine

__all__ = ["sim"]

USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"
SEARCH = f"/interaction_history/api/account/{ACCOUNT}/interactions/search"


def test_signature_matches_rfc_5849_section_1_2_example() -> None:
    """RFC 5849 1.2: the photos example, signature ``MdpQcU8iPSUjWoN/UDMsK2sui9I=``."""
    url = URL("http://photos.example.net/photos?file=vacation.jpg&size=original")
    params = [
        ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
        ("oauth_token", "nnch734d00sl2jdk"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "137131202"),
        ("oauth_nonce", "chapoH"),
    ]
    base = signature_base_string("GET", url, params)
    assert hmac_sha1_signature(base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00") == (
        "MdpQcU8iPSUjWoN/UDMsK2sui9I="
    )


def test_base_string_matches_rfc_5849_section_3_4_1_1_example() -> None:
    """RFC 5849 3.4.1.1: query with encoded values, a form body, and protocol parameters."""
    url = URL("http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b", encoded=True)
    params = [
        ("oauth_consumer_key", "9djdj82h48djs9d2"),
        ("oauth_token", "kkk9d7dh3k39sjv7"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "137131201"),
        ("oauth_nonce", "7d8f3e4a"),
        # The body "c2&a3=2+q", form-decoded.
        ("c2", ""),
        ("a3", "2 q"),
    ]
    assert signature_base_string("POST", url, params) == (
        "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q"
        "%26a3%3Da%26b5%3D%253D%25253D%26c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2"
        "%26oauth_nonce%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1"
        "%26oauth_timestamp%3D137131201%26oauth_token%3Dkkk9d7dh3k39sjv7"
    )


def test_percent_encoding_follows_rfc_5849_section_3_6() -> None:
    assert percent_encode("Ladies + Gentlemen") == "Ladies%20%2B%20Gentlemen"
    assert percent_encode("An encoded string!") == "An%20encoded%20string%21"
    assert percent_encode("Dogs, Cats & Mice") == "Dogs%2C%20Cats%20%26%20Mice"
    assert percent_encode("☃") == "%E2%98%83"
    assert percent_encode("-._~") == "-._~"


def _parse_header(header: str) -> dict[str, str]:
    assert header.startswith("OAuth ")
    return {k: unquote(v) for k, v in re.findall(r'(\w+)="([^"]*)"', header)}


def test_header_is_on_one_line_with_the_guides_seven_parameters() -> None:
    signer = OAuth1Signer(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET)
    header = signer.header("GET", URL("https://va.example/api/x?v=6.0"))
    assert "\n" not in header
    assert "\r" not in header
    assert set(_parse_header(header)) == {
        "oauth_consumer_key",
        "oauth_nonce",
        "oauth_signature",
        "oauth_signature_method",
        "oauth_timestamp",
        "oauth_token",
        "oauth_version",
    }


_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=0, max_size=12
)


@settings(max_examples=150)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    path=st.lists(st.text("abcXYZ09-._~ %", min_size=1, max_size=8), max_size=3),
    query=st.lists(st.tuples(st.text("abcdef_", min_size=1, max_size=6), _text), max_size=4),
    port=st.sampled_from([None, 443, 8443]),
    nonce=st.text("abcdef0123456789", min_size=1, max_size=16),
    timestamp=st.integers(min_value=0, max_value=2**31),
)
def test_signature_agrees_with_an_independent_signer(
    method: str,
    path: list[str],
    query: list[tuple[str, str]],
    port: int | None,
    nonce: str,
    timestamp: int,
) -> None:
    """Property: for any method, path, query and port, our signature equals oauthlib's.

    oauthlib logs its inputs at DEBUG, so this test signs with throwaway values rather than the
    test credentials that the secret check guards.
    """
    key, secret, token, token_secret = "ck-1", "cs-1 &x", "tk-1", "ts-1/=+"
    url = URL.build(
        scheme="https", host="va.example.net", port=port, path="/" + "/".join(path), query=query
    )
    signer = OAuth1Signer(key, secret, token, token_secret)
    ours = _parse_header(signer.header(method, url, nonce=nonce, timestamp=str(timestamp)))
    client = independent.Client(
        key,
        client_secret=secret,
        resource_owner_key=token,
        resource_owner_secret=token_secret,
        nonce=nonce,
        timestamp=str(timestamp),
    )
    _, headers, _ = client.sign(str(url), http_method=method)
    theirs = _parse_header(headers["Authorization"])
    assert ours == theirs


def test_the_base_string_uri_keeps_an_ipv6_literals_brackets() -> None:
    """RFC 5849 3.4.1.2: the authority as the Host header carries it. Without the brackets,
    ``http://::1:8080/x`` signed another string than the server checks: every request over an
    IPv6 literal (a host the Domain API may name) was refused."""
    assert base_string_uri(URL("http://[::1]:8080/api/x?a=1")) == "http://[::1]:8080/api/x"
    assert base_string_uri(URL("https://[2001:DB8::1]:443/x")) == "https://[2001:db8::1]/x"
    assert base_string_uri(URL("http://127.0.0.1:8080/x")) == "http://127.0.0.1:8080/x"


@settings(max_examples=100)
@given(
    address=st.ip_addresses(v=6),
    scheme=st.sampled_from(["http", "https"]),
    port=st.sampled_from([None, 80, 443, 8080]),
    query=st.lists(st.tuples(st.text("abcdef_", min_size=1, max_size=6), _text), max_size=3),
)
def test_a_signature_over_an_ipv6_host_agrees_with_an_independent_signer(
    address: ipaddress.IPv6Address, scheme: str, port: int | None, query: list[tuple[str, str]]
) -> None:
    """Property: over any IPv6 literal, scheme and port, our signature equals oauthlib's."""
    key, secret, token, token_secret = "ck-1", "cs-1 &x", "tk-1", "ts-1/=+"
    url = URL.build(scheme=scheme, host=str(address), port=port, path="/api/x", query=query)
    signer = OAuth1Signer(key, secret, token, token_secret)
    ours = _parse_header(signer.header("GET", url, nonce="n0nce", timestamp="1700000000"))
    client = independent.Client(
        key,
        client_secret=secret,
        resource_owner_key=token,
        resource_owner_secret=token_secret,
        nonce="n0nce",
        timestamp="1700000000",
    )
    _, headers, _ = client.sign(str(url), http_method="GET")
    assert ours == _parse_header(headers["Authorization"])


async def test_each_request_gets_a_fresh_nonce_and_the_current_timestamp() -> None:
    nonces = (f"n{i}" for i in itertools.count())
    auth = OAuth1Auth(
        APP_KEY,
        APP_SECRET,
        ACCESS_TOKEN,
        ACCESS_TOKEN_SECRET,
        wall_clock=lambda: 1_700_000_000.7,
        nonce=lambda: next(nonces),
    )
    url = URL("https://va.example.net/api/x")
    first = _parse_header((await auth.credentials("GET", url)).headers["Authorization"])
    second = _parse_header((await auth.credentials("GET", url)).headers["Authorization"])
    assert (first["oauth_nonce"], second["oauth_nonce"]) == ("n0", "n1")
    assert first["oauth_timestamp"] == "1700000000"
    assert first["oauth_signature"] != second["oauth_signature"]


async def test_signed_requests_are_accepted_by_the_simulators_verifier(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = OAuth1Auth(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET)
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        users = await engine.request_json(
            "GET", "accountConfigReadOnly", USERS, params={"v": "6.0", "select": "a b+c"}
        )
        assert isinstance(users, list)
        found = await engine.request_json(
            "POST", "engHistDomain", SEARCH, params={"offset": 0}, json={"start": {"from": 1}}
        )
        assert found["interactionHistoryRecords"] == []
    assert sim.count("POST") == 1  # no login: OAuth1 needs none


async def test_a_signature_with_the_wrong_secret_is_refused_twice_then_an_auth_error(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = OAuth1Auth(APP_KEY, APP_SECRET + "-wrong", ACCESS_TOKEN, ACCESS_TOKEN_SECRET)
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        with pytest.raises(AuthenticationError, match="401 again"):
            await engine.request("GET", "accountConfigReadOnly", USERS)
    assert sim.count("GET", USERS) == 2  # the request and its one replay, signed anew
