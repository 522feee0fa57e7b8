"""Every fuzz target, briefly, from a fixed seed: what CI runs of ``python -m fuzz``.

A failure here is a finding: an input on which a parser of outside input let an undocumented
exception escape, hung, or broke its invariant (a secret shown, a hostile host accepted).
Hypothesis prints the shrunk input; ``python -m fuzz --target NAME --long`` explores further.
"""

from __future__ import annotations

import signal

import pytest
from hypothesis import strategies as st

from fuzz import (
    CI_EXAMPLES,
    CI_SEED,
    FuzzHang,
    Target,
    all_targets,
    hang_guard,
    hypothesis_runner,
)
from fuzz.__main__ import main as fuzz_main

TARGETS = all_targets()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_keeps_its_invariant_on_every_input(name: str) -> None:
    """For each target: only documented exceptions escape, no call hangs, and the target's
    own invariant (its check's docstring) holds on every generated input."""
    hypothesis_runner(TARGETS[name], examples=CI_EXAMPLES, seed=CI_SEED)()


def test_every_parser_of_outside_input_has_a_target() -> None:
    """The issue's list: Domain API answers, login and refresh answers, WebSocket frames,
    Retry-After, Domain API hosts, the OAuth1 signer, redaction and Response.json."""
    core = {
        "retry_after",
        "date_header",
        "validate_host",
        "hostile_host",
        "redact_url",
        "redact_text",
        "body_excerpt",
        "response_json",
    }
    providers = {
        "csds_parse",
        "csds_answer",
        "login_answer",
        "refresh_answer",
        "token_answer",
        "jwt_expiry",
        "oauth1_signer",
    }
    sockets = {"socket_frames", "close_code"}
    assert core | providers | sockets <= set(TARGETS)


def _spin_forever() -> None:
    with hang_guard(0.2):
        while True:
            pass


def test_hang_guard_turns_an_endless_loop_into_a_finding() -> None:
    with pytest.raises(FuzzHang):
        _spin_forever()


def test_hang_guard_gives_back_the_timer_and_handler_it_found() -> None:
    # In an atheris child, libFuzzer's -timeout is a periodic SIGALRM timer with a handler of
    # its own: the guard zeroed the timer after every input, so a hang in C code stalled the
    # child for ever.
    def theirs(signum: int, frame: object) -> None:
        raise AssertionError("the guard's timer should not have fired theirs")

    previous = signal.signal(signal.SIGALRM, theirs)
    try:
        signal.setitimer(signal.ITIMER_REAL, 600, 600)
        with hang_guard(5):
            pass
        delay, interval = signal.getitimer(signal.ITIMER_REAL)
        assert signal.getsignal(signal.SIGALRM) is theirs
        assert interval == 600
        assert 500 < delay <= 600
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_the_atheris_child_instruments_what_is_already_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # le_transport is imported before the child runs (the runner's own imports bring it), and
    # instrument_imports() instruments only what is imported inside it: libFuzzer got no
    # coverage at all. A stand-in atheris records what the child asks of it.
    import sys
    import types

    from fuzz.__main__ import _atheris_child

    calls: list[str] = []
    fake = types.ModuleType("atheris")
    fake.instrument_all = lambda: calls.append("instrument_all")  # type: ignore[attr-defined]
    fake.Setup = lambda argv, fn: calls.append("Setup")  # type: ignore[attr-defined]
    fake.Fuzz = lambda: calls.append("Fuzz")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "atheris", fake)
    assert "le_transport" in sys.modules
    _atheris_child(sorted(TARGETS)[0], [])
    assert calls == ["instrument_all", "Setup", "Fuzz"]


def test_a_target_that_hangs_fails_its_fuzz_run() -> None:
    def check_spins_on_zero(n: int) -> None:
        """Spins forever on 0."""
        while n == 0:
            pass

    spinning = Target("spins", st.just(0), check_spins_on_zero, bound=0.2)
    with pytest.raises(FuzzHang):
        hypothesis_runner(spinning, examples=1, seed=1)()


def test_a_target_whose_invariant_breaks_fails_its_fuzz_run() -> None:
    def check_small(n: int) -> None:
        """Every number is below 10."""
        assert n < 10

    with pytest.raises(AssertionError):
        hypothesis_runner(Target("small", st.integers(), check_small), examples=200, seed=1)()


def test_runner_lists_targets_and_refuses_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz_main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in TARGETS)
    assert fuzz_main(["--target", "no_such_target"]) == 2


def test_runner_runs_one_target_from_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz_main(["--target", "retry_after", "--examples", "20", "--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith("ok   retry_after      20 inputs")


@pytest.mark.parametrize(
    "argv",
    [
        ["--examples", "0"],  # ran the default 300: 0 is falsy
        ["--examples", "-5"],  # reported every target as a finding
        ["--seconds", "0"],  # libFuzzer's -max_total_time=0 is "no limit"
        ["--seconds", "-1"],
    ],
)
def test_runner_refuses_a_count_or_time_that_is_not_positive(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        fuzz_main(["--target", "retry_after", *argv])
    assert exited.value.code == 2
    assert "must be 1 or more" in capsys.readouterr().err


def test_the_fuzz_docs_say_what_ci_runs_and_how_to_reproduce_a_finding() -> None:
    import fuzz
    from fuzz.__main__ import _parser

    doc = fuzz.__doc__ or ""
    assert f"seed :data:`CI_SEED` ({CI_SEED})" in doc
    assert f":data:`CI_EXAMPLES`\n({CI_EXAMPLES}) inputs" in doc
    command = next(line.split() for line in doc.splitlines() if "python -m fuzz --target" in line)
    args = _parser().parse_args(command[3:])
    # The documented command runs CI's very inputs: CI's seed and count.
    assert (args.seed, args.examples) == (CI_SEED, CI_EXAMPLES)
    assert args.target == ["retry_after"]
    assert "tests/test_fuzz.py -k retry_after" in doc
