"""The demo's ``--seed`` as argparse reads it: never echoed whole, whatever its length."""

from __future__ import annotations

import pytest

from le_transport import cli


@pytest.mark.parametrize(
    "seed",
    [
        "9" * 5000,
        "-" + "9" * 5000,
        "1_" * 3000 + "1",
        # int() reads any decimal digit (Arabic-Indic, full-width): a shorter such seed is an
        # int, so a longer one is as far past 64 bits as 5,000 nines, not "not an int".
        "\u0669" * 5000,
        "-" + "\u0669" * 5000,
        " " + "\uff19" * 5000,
    ],
)
def test_a_seed_past_pythons_int_digit_limit_is_the_64_bit_usage_error(
    seed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # int() refuses more than 4,300 digits: argparse said "invalid int value" with the whole
    # text. Such a seed is as far past 64 bits as a shorter one: the same usage error.
    assert cli.main(["demo", "--seed", seed]) == 2
    err = capsys.readouterr().err
    assert err.startswith("le-transport demo: --seed must be an int of 64 bits, between ")
    assert len(err) < 200


@pytest.mark.parametrize(
    "seed",
    [
        "x" * 5000,
        "1" * 5000 + "x",
        "seven",
        # A misplaced "_" or a second sign: int() refuses it at any length, so it is no int,
        # not a seed past 64 bits.
        "9" * 5000 + "_",
        "_" + "9" * 5000,
        "1__" + "1" * 5000,
        "+-" + "9" * 5000,
    ],
)
def test_a_seed_that_is_no_int_is_refused_without_its_whole_text(
    seed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        cli.main(["demo", "--seed", seed])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "argument --seed: not an int" in err
    assert seed not in err or len(seed) <= 20
    assert len(err.splitlines()[-1]) < 120
