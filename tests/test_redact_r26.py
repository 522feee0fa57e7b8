"""Redaction: a cookie's value in single quotes (``<SimpleCookie: sess='...'>``, as aiohttp's
``response.cookies`` prints), a header given as an object whose keys are not quoted (a Python
class's repr ``Header(name='Authorization', value='...')``, Node's ``{ name: 'Authorization',
value: '...' }``, YAML), and one whose name and value have a nested object or a brace in a
string between them.

The credentials are those of ``tests/known_secrets.py``.
"""

from __future__ import annotations

from http.cookies import SimpleCookie

import pytest

from le_transport._redact import redact_text
from tests.known_secrets import SESSION_ID

# -- a cookie's value in single quotes ----------------------------------------------------------


def _simple_cookie(**cookies: str) -> str:
    jar: SimpleCookie = SimpleCookie()
    for name, value in cookies.items():
        jar[name] = value
    return repr(jar)


@pytest.mark.parametrize(
    "text",
    [
        # aiohttp's response.cookies (and a cookie jar's) as a log line's %r prints it.
        _simple_cookie(sess=SESSION_ID),
        _simple_cookie(theme="dark", sess=SESSION_ID),
        f"Cookie: sess='{SESSION_ID}'",
        f"Set-Cookie: sess='{SESSION_ID}'; Path=/; HttpOnly",
        f"Cookie: a=1; sess='{SESSION_ID}'",
        # A single quote inside a cookie's value (a cookie-octet): no end of the header.
        f"Cookie: sess=it's{SESSION_ID}",
        f"cookie=sess='{SESSION_ID}'",
    ],
)
def test_a_cookie_value_in_single_quotes_is_hidden(text: str) -> None:
    # The cookie line stopped at the first single quote: "<SimpleCookie: ***'s3cr3t...'>".
    shown = redact_text(text)
    assert SESSION_ID not in shown, shown


def test_a_cookie_line_in_a_single_quoted_string_still_ends_at_its_quote() -> None:
    # Python's repr of a list of header lines: the quote after the value closes the string.
    assert redact_text("['Cookie: a=b', 'Host: h']") == "['Cookie: ***', 'Host: h']"
