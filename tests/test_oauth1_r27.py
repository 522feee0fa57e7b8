"""OAuth 1.0 HMAC-SHA1 signing against RFC 5849 3.4 read literally: a small signer written in
this file from the RFC's text (not from urllib or yarl), compared with the library's signer and
the simulator's verifier over the wire form of a URL, query escapes and methods included."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator, Iterable

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from le_transport.errors import ConfigurationError
from le_transport.providers import OAuth1Auth, OAuth1Signer, StaticDomains
from le_transport.providers.oauth1 import signature_base_string
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_ACCOUNT, DEFAULT_APP_KEY, Simulator
from le_transport.testing.simulator import oauth1 as verifier
from tests.known_secrets import ACCESS_TOKEN, ACCESS_TOKEN_SECRET, APP_SECRET
from tests.test_providers import ACCOUNT, APP_KEY, make_sim, sim_engine

KEY, SECRET, TOKEN, TOKEN_SECRET = "ck-r27", "cs r27&+", "tk-r27", "ts/r27="

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _encode(text: str) -> str:
    """RFC 5849 3.6: UTF-8, then each byte outside the unreserved set as %XX, upper-case hex."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode("utf-8"))


def _form_decode(text: str) -> str:
    """W3C HTML 4.01 17.13.4 decoding (RFC 5849 3.4.1.3.1): '+' is a space, %XX a byte."""
    raw = text.replace("+", " ").encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25 and len(raw[i + 1 : i + 3]) == 2 and set(raw[i + 1 : i + 3]) <= _HEX:
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def _rfc_signature(
    method: str, wire: str, oauth: Iterable[tuple[str, str]], body: Iterable[tuple[str, str]] = ()
) -> str:
    """RFC 5849 3.4.1 and 3.4.2 over an absolute http(s) URL as it is sent (no IPv6 here)."""
    scheme, _, rest = wire.partition("://")
    rest = rest.partition("#")[0]
    authority, _, target = rest.partition("/")
    path, _, query = ("/" + target).partition("?")
    host, _, port = authority.partition(":")
    scheme, host = scheme.lower(), host.lower()
    if port and port != {"http": "80", "https": "443"}[scheme]:
        host = f"{host}:{port}"
    pairs = [
        (_form_decode(name), _form_decode(value))
        for name, _, value in (part.partition("=") for part in query.split("&") if part)
    ]
    normalised = "&".join(
        f"{k}={v}" for k, v in sorted((_encode(k), _encode(v)) for k, v in [*pairs, *oauth, *body])
    )
    # 3.4.1.1: the method in upper case, encoded ("a custom HTTP method MUST be encoded").
    base = f"{_encode(method.upper())}&{_encode(f'{scheme}://{host}{path}')}&{_encode(normalised)}"
    key = f"{_encode(SECRET)}&{_encode(TOKEN_SECRET)}"
    return base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha1).digest()).decode()


def _signer() -> OAuth1Signer:
    return OAuth1Signer(KEY, SECRET, TOKEN, TOKEN_SECRET)


def _verifies(method: str, url: URL, header: str) -> bool:
    return verifier.verify(
        method=method,
        url=url,
        oauth=verifier.parse_oauth_header(header),
        extra_params=list(url.query.items()),
        consumer_secret=SECRET,
        token_secret=TOKEN_SECRET,
    )


def test_the_rfcs_own_signer_here_reproduces_the_section_1_2_example() -> None:
    """The independent signer above is checked against RFC 5849 1.2's published signature."""
    oauth = [
        ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
        ("oauth_token", "nnch734d00sl2jdk"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "1191242096"),
        ("oauth_nonce", "kllo9940pd9333jh"),
        ("oauth_version", "1.0"),
    ]
    raw = "&".join(f"{k}={v}" for k, v in [*oauth, ("file", "vacation.jpg"), ("size", "original")])
    base = f"GET&{_encode('http://photos.example.net/photos')}&"
    assert base.startswith("GET&http%3A%2F%2Fphotos.example.net%2Fphotos&")
    # The RFC's keys are not this file's: recompute its example with them.
    key = f"{_encode('kd94hf93k423kf44')}&{_encode('pfkkdhi9sl3r4s00')}"
    normalised = "&".join(sorted(raw.split("&")))
    digest = hmac.new(key.encode(), (base + _encode(normalised)).encode(), hashlib.sha1)
    assert base64.b64encode(digest.digest()).decode() == "tR3+Ty81lMeYAr/Fid0kMTYa/WM="


_WIRE_QUERIES = [
    "q=a+b&r=a%2Bb&s=%2F&t&u=&=x",
    "x=%7e&y=~&z=%41&z=%61",
    "a=1;b=2&c=%3D%26",
    "a=%e2%82%ac&b=%E2%82%AC&c=%20+",
    "&&a=1&",
    "b5=%3D%253D&a3=a&c%40=&a2=r%20b&c2&a3=2+q",
]


@pytest.mark.parametrize("encoded", [True, False])
@pytest.mark.parametrize("query", _WIRE_QUERIES)
def test_an_already_encoded_query_is_signed_as_the_rfc_decodes_it(
    query: str, encoded: bool
) -> None:
    """A URL with escapes in its query (%2F, +, %2B, lower-case hex, names without '=') is
    signed over the parameters the server decodes from the query as sent: the library's
    signature equals the RFC's, and the simulator's verifier accepts it."""
    url = URL(f"http://H.Example.NET:80/a%2Fb/c%20d?{query}", encoded=encoded)
    signer = _signer()
    header = signer.header("GET", url, nonce="n-1", timestamp="137131201")
    oauth = signer.protocol_params(nonce="n-1", timestamp="137131201")
    ours = verifier.parse_oauth_header(header)["oauth_signature"]
    assert ours == _rfc_signature("GET", str(url), oauth)
    assert _verifies("GET", URL(str(url), encoded=True), header)


@pytest.mark.parametrize("method", ["M!SEARCH", "X*Y", "A+B", "GET'", "PATCH"])
def test_the_method_enters_the_base_string_percent_encoded(method: str) -> None:
    """RFC 5849 3.4.1.1: the base string starts with the method in upper case, and a custom
    method "MUST be encoded (Section 3.6)". A method holding a token character outside the
    unreserved set ('!', '*', '+', "'") is signed and verified encoded."""
    url = URL("https://va.example.net/api/x?v=1")
    signer = _signer()
    assert signature_base_string(method, url, []).startswith(f"{_encode(method)}&https%3A%2F%2F")
    header = signer.header(method.lower(), url, nonce="n-2", timestamp="1")
    oauth = signer.protocol_params(nonce="n-2", timestamp="1")
    assert verifier.parse_oauth_header(header)["oauth_signature"] == _rfc_signature(
        method, str(url), oauth
    )
    assert _verifies(method, url, header)


_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(st.tuples(_text, _text), max_size=5),
    body=st.lists(st.tuples(_text, _text), max_size=3),
    port=st.sampled_from(["", ":443", ":80", ":8443"]),
)
def test_any_query_and_form_agree_with_the_rfc_and_the_verifier(
    pairs: list[tuple[str, str]], body: list[tuple[str, str]], port: str
) -> None:
    """Property: for any parameters (sent through yarl, so escaped as aiohttp sends them) and
    any form, the library's signature is the RFC's and the simulator accepts it."""
    url = URL(f"https://va.example.net{port}/api/x").with_query(pairs)
    signer = _signer()
    header = signer.header("POST", url, nonce="n-3", timestamp="7", body_params=body)
    oauth = signer.protocol_params(nonce="n-3", timestamp="7")
    ours = verifier.parse_oauth_header(header)["oauth_signature"]
    assert ours == _rfc_signature("POST", str(url), oauth, body)
    wire = URL(str(url), encoded=True)
    assert verifier.verify(
        method="POST",
        url=wire,
        oauth=verifier.parse_oauth_header(header),
        extra_params=[*wire.query.items(), *body],
        consumer_secret=SECRET,
        token_secret=TOKEN_SECRET,
    )


@pytest.mark.parametrize("method", ["G\u00c9T", "GET POST", "GET\r\nX", "(GET)"])
def test_a_method_that_is_no_http_token_is_a_configuration_error_not_shown(method: str) -> None:
    """A method that is no RFC 9110 token (no request can be sent with it) is refused as
    bad input, never a UnicodeEncodeError quoting the base string (which holds the token)."""
    signer = _signer()
    url = URL("https://va.example.net/api/x")
    for kind in ("header", "signature"):
        with pytest.raises(ConfigurationError, match="HTTP method token") as caught:
            getattr(signer, kind)(method, url, nonce="n", timestamp="1")
        assert TOKEN not in str(caught.value)
        assert method not in str(caught.value)


USERS = f"/api/account/{DEFAULT_ACCOUNT}/configuration/le-users/users"
PROVIDER_USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock) as s:
        yield s


def _header_without(url: URL, nonce: str | None, version: str | None = "1.0") -> str:
    """A header signed correctly (by the verifier's own signer) whose nonce is ``nonce``, or
    absent when None, and whose ``oauth_version`` is ``version`` (absent when None)."""
    k = DEFAULT_APP_KEY
    params = {
        "oauth_consumer_key": k.key,
        "oauth_token": k.access_token,
        "oauth_signature_method": "HMAC-SHA1",
        "oauth_timestamp": "1700000000",
    }
    if version is not None:
        params["oauth_version"] = version
    if nonce is not None:
        params["oauth_nonce"] = nonce
    base = verifier.signature_base_string(
        "GET", url.with_query(None), [*params.items(), *url.query.items()]
    )
    params["oauth_signature"] = verifier.sign(base, k.secret, k.access_token_secret)
    return "OAuth " + ", ".join(f'{n}="{verifier.percent_encode(v)}"' for n, v in params.items())


@pytest.mark.parametrize("nonce", [None, ""])
async def test_the_simulator_refuses_a_signature_without_a_nonce(
    sim: Simulator, nonce: str | None
) -> None:
    """RFC 5849 3.1: ``oauth_nonce`` is REQUIRED with HMAC-SHA1, and 3.2/3.3 have the server
    refuse a nonce/timestamp/token it has seen: a header without one (or with an empty one)
    was accepted, so a client that never sent a nonce passed every test against the
    simulator and would be refused by LiveEngage's gateway. A good nonce still passes."""
    url = URL(f"{sim.url}{USERS}").with_query({"v": "4.0"})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(url, headers={"Authorization": _header_without(url, nonce)}) as r:
            assert r.status == 401
        async with http.get(url, headers={"Authorization": _header_without(url, "n-4")}) as r:
            assert r.status == 200


@pytest.mark.parametrize("host", ["Other.Example", "127.0.0.1", "other.example:8080"])
async def test_a_request_with_its_own_host_header_is_signed_over_that_host(
    clock: VirtualClock, host: str
) -> None:
    """RFC 5849 3.4.1.2: the base string URI's host and port are the Host header's, which is
    what the gateway verifies. A request given its own Host header was signed over the URL's
    host (even one that only dropped the port): refused twice, an AuthenticationError."""
    auth = OAuth1Auth(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET)
    async with (
        make_sim(clock) as simulator,
        sim_engine(simulator, clock, domains=StaticDomains(simulator.domains), auth=auth) as engine,
    ):
        resp = await engine.request(
            "GET", "accountConfigReadOnly", PROVIDER_USERS, headers={"Host": host}
        )
        assert resp.status == 200
        assert simulator.count("GET", PROVIDER_USERS) == 1


@pytest.mark.parametrize(
    ("version", "status"), [(None, 200), ("1.0", 200), ("2.0", 401), ("", 401)]
)
async def test_the_simulator_takes_oauth_version_only_as_1_0_or_absent(
    sim: Simulator, version: str | None, status: int
) -> None:
    """RFC 5849 3.1: ``oauth_version`` is OPTIONAL, and if present MUST be "1.0". A header
    naming another version was verified like a 1.0 one."""
    url = URL(f"{sim.url}{USERS}")
    header = _header_without(url, f"n-v-{version}", version)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
        http.get(url, headers={"Authorization": header}) as r,
    ):
        assert r.status == status
