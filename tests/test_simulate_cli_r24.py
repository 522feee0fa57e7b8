"""``le-transport simulate`` with an empty ``--cert=`` or ``--key=`` (an unset shell variable).

Both empty were taken as "no certificate" and the simulator served plain HTTP where TLS was
asked for; each is now refused with a usage error naming the options, before anything listens.
"""

from __future__ import annotations

import pytest

from le_transport import cli


@pytest.mark.parametrize(
    "args",
    [
        ["--cert=", "--key="],
        ["--tls", "--cert=", "--key="],
        ["--cert=", "--key=/some/key.pem"],
        ["--cert=/some/cert.pem", "--key="],
    ],
)
def test_an_empty_cert_or_key_is_refused_not_served_as_plain_http(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["simulate", "--port", "0", *args]) == 2
    err = capsys.readouterr().err
    assert "--cert and --key name files; got an empty value" in err
    assert "Traceback" not in err
