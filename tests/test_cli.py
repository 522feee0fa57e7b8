"""The ``le-transport`` command refuses bad arguments with a usage error, not a traceback."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from le_transport import cli
from le_transport.chaos import FaultPlan, FaultRule, Reset, Status
from le_transport.testing.simulator import SimulatorConfig, serve
from le_transport.testing.simulator.config import DEFAULT_ACCOUNT, DEFAULT_MAX_RECORDS
from le_transport.testing.simulator.server import SimFaults


@pytest.mark.parametrize("port", ["-5", "65536", "x"])
def test_simulate_refuses_a_port_out_of_range_with_a_usage_error(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["simulate", "--port", port])
    assert exited.value.code == 2
    assert "argument --port" in capsys.readouterr().err


def test_simulate_on_a_port_in_use_says_so_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["simulate", "--port", str(port)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_simulate_with_a_certificate_that_cannot_be_read_says_so_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(["simulate", "--tls", "--cert", "/nonexistent.pem", "--key", "/nope.pem"])
    assert code == 2
    assert "cannot load --cert/--key" in capsys.readouterr().err


@pytest.mark.parametrize("scale", ["-1", "0", "nan", "inf", "1e-5", "1e-300", "1e308", "11"])
def test_demo_refuses_a_time_scale_it_cannot_run_at(
    scale: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # 1e-5 made a 30 s keepalive 0.3 ms (the demo failed an invariant on noise); 1e-300 spun
    # for minutes; 1e308 failed inside a provider with an infinite TTL.
    assert cli.main(["demo", "--time-scale", scale]) == 2
    assert "--time-scale must be between 0.001 and 10" in capsys.readouterr().err


@pytest.mark.parametrize("seed", [str(2**64), str(-(2**63) - 1), "9" * 4000])
def test_demo_refuses_a_seed_past_64_bits_with_a_usage_error(
    seed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The plan refuses such a seed: the demo started, then failed with exit 1 mid-run.
    assert cli.main(["demo", "--seed", seed]) == 2
    err = capsys.readouterr().err
    assert err.startswith("le-transport demo: --seed must be an int of 64 bits, between ")
    assert len(err) < 200  # the seed given is not echoed
    assert "Traceback" not in err


@pytest.mark.parametrize("bound", ["0", "-3", "1.5", "many"])
def test_simulate_refuses_a_record_bound_that_is_not_a_positive_whole_number(
    bound: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["simulate", "--max-records", bound])
    assert exited.value.code == 2
    assert "argument --max-records" in capsys.readouterr().err


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port in use: should a test's simulator get as far as serving, it stops at once (exit
    2, "cannot listen") instead of serving until Ctrl-C."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("bound", [str(sys.maxsize + 1), "99999999999999999999"])
def test_simulate_refuses_a_record_bound_no_record_can_hold_with_a_usage_error(
    bound: str, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # Accepted, it failed with an OverflowError traceback at the simulator's first request.
    with pytest.raises(SystemExit) as exited:
        cli.main(["simulate", "--port", str(taken_port), "--max-records", bound])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --max-records: must be at most" in err
    assert "Traceback" not in err


def test_serving_with_a_record_bound_no_record_can_hold_says_so_and_exits_2(
    taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve.serve_forever(port=taken_port, max_records=2**63) == 2
    err = capsys.readouterr().err
    assert "SimulatorConfig.max_records must be at most sys.maxsize" in err


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            '{"seed": 1, "rules": [{"id": "a", "fault": {"kind": "slow_body", "chunk_bytes": 1, '
            '"chunk_delay_ms": 1' + "0" * 400 + "}}]}",
            "SlowBody.chunk_delay_ms",
        ),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"seed": 1, "rule": [{"id": "a", "fault": 503}]}', "unknown field"),
        (
            '{"seed": 1, "rules": [{"id": "a", '
            '"fault": {"kind": "status", "code": 503, "body": 5}}]}',
            "Status.body",
        ),
        ("not json", "Expecting value"),
        (
            '{"seed": 1, "rules": [{"id": "drops", "fault": {"kind": "ws_drop"}}]}',
            "rule 'drops': a 'ws_drop' fault never fires on unit 'request' (the default): it "
            "works on unit 'ws_session' or 'ws_message'",
        ),
    ],
    ids=["huge-int", "deeply-nested", "misspelt-rules", "int-body", "not-json", "wrong-unit"],
)
def test_simulate_with_a_plan_it_cannot_use_says_so_and_exits_2(
    text: str, says: str, taken_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(text)
    assert cli.main(["simulate", "--port", str(taken_port), "--plan", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "cannot read the fault plan" in err
    assert says in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("given", "kept"), [([], DEFAULT_MAX_RECORDS), (["--max-records", "50"], 50)]
)
def test_simulate_serves_with_bounded_records_by_default_or_the_bound_given(
    given: list[str], kept: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[SimulatorConfig] = []

    def recording_config(**fields: Any) -> SimulatorConfig:
        made.append(SimulatorConfig(**fields))
        return made[-1]

    monkeypatch.setattr(serve, "SimulatorConfig", recording_config)
    with socket.socket() as taken:  # a port in use: it stops right after building its config
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["simulate", "--port", str(port), *given]) == 2
    assert [config.max_records for config in made] == [kept]


def test_simulate_tls_with_no_writable_temporary_directory_says_so_and_exits_2(
    taken_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It crashed with a FileNotFoundError traceback writing the certificate.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    assert serve.serve_forever(port=taken_port, tls=True) == 2
    err = capsys.readouterr().err
    assert "le-transport simulate: cannot write the self-signed certificate" in err
    assert "Traceback" not in err


def test_simulate_without_tls_needs_no_temporary_directory(
    taken_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    # It gets as far as listening (and stops there: the port is taken).
    assert serve.serve_forever(port=taken_port) == 2
    assert f"cannot listen on 127.0.0.1:{taken_port}" in capsys.readouterr().err


def _ipv6_port_in_use() -> socket.socket | None:
    sock = socket.socket(socket.AF_INET6)
    try:
        sock.bind(("::1", 0))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


def test_simulate_on_an_ipv6_port_in_use_names_the_address_bracketed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    taken = _ipv6_port_in_use()
    if taken is None:
        pytest.skip("IPv6 loopback is not available here")
    with taken:
        port = taken.getsockname()[1]
        assert cli.main(["simulate", "--host", "::1", "--port", str(port)]) == 2
    assert f"cannot listen on [::1]:{port}" in capsys.readouterr().err


def test_simulate_on_ipv6_prints_urls_with_the_address_bracketed() -> None:
    probe = _ipv6_port_in_use()
    if probe is None:
        pytest.skip("IPv6 loopback is not available here")
    probe.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "le_transport.cli", "simulate", "--host", "::1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        domain_api = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert re.search(r" on http://\[::1\]:\d+ \(sockets on ws://\[::1\]:\d+\)", banner), banner
    assert "Domain API: http://[::1]:" in domain_api


def test_python_dash_m_le_transport_is_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "le_transport", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert "{demo,simulate}" in done.stdout


# -- what a chaos run injected --------------------------------------------------------------


#: A plan whose every rule says something in the summary: one injects, one is shadowed by the
#: rule before it every time, one matches a bearer's path, one matches nothing.
SUMMARY_PLAN = {
    "seed": 5,
    "rules": [
        {
            "id": "latency",
            "match": {"method": "GET", "path": "*/le-users/users"},
            "fault": {"kind": "delay", "delay_ms": 1},
            "schedule": {"fail_next": 1},
        },
        {
            "id": "burst503",
            "match": {"method": "GET", "path": "*/le-users/users"},
            "fault": 503,
            "schedule": {"fail_next": 1},
        },
        {"id": "brand", "match": {"path": "/ws_api/*"}, "fault": 503},
        {"id": "drops", "unit": "ws_session", "fault": {"kind": "ws_drop"}},
    ],
}
SUMMARY = [
    "stopped",
    "faults injected, by rule (plan seed 5):",
    "  latency (request): injected 1 (matched 1)",
    "  burst503 (request): injected 0 (matched 1, shadowed 1); never injected: an earlier rule "
    "fired first every time it was due",
    "  brand (request): injected 1 (matched 1)",
    "  drops (ws_session): injected 0 (matched 0); matched nothing",
]
BEARER = "cli-summary-bearer-8c2f"


def _simulate_with_a_plan(tmp_path: Path, *flags: str) -> str:
    """Run ``le-transport simulate --plan`` in a process of its own, send it two requests the
    plan strikes, stop it with Ctrl-C and return what it printed."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(SUMMARY_PLAN))
    proc = subprocess.Popen(
        [sys.executable, "-m", "le_transport.cli", "simulate", "--plan", str(plan), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        found = re.search(r" on (http://127\.0\.0\.1:\d+) ", banner)
        assert found, banner
        while "Ctrl-C to stop" not in proc.stdout.readline():
            pass
        base = found.group(1)
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy
        for path in (
            f"/api/account/{DEFAULT_ACCOUNT}/configuration/le-users/users",
            f"/ws_api/account/{DEFAULT_ACCOUNT}/messaging/brand/{BEARER}",
        ):
            with contextlib.suppress(urllib.error.HTTPError):
                direct.open(base + path, timeout=30).close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out


def test_simulate_prints_what_each_rule_of_its_plan_did_when_it_stops(tmp_path: Path) -> None:
    # Before: nothing about the faults, not even a summary: a chaos run from the command line
    # could not be checked (nor a rule that another shadowed found).
    out = _simulate_with_a_plan(tmp_path)
    assert out.splitlines()[-len(SUMMARY) :] == SUMMARY
    assert "fault: " not in out


def test_simulate_verbose_prints_each_fault_as_it_is_injected_with_its_path_redacted(
    tmp_path: Path,
) -> None:
    out = _simulate_with_a_plan(tmp_path, "--verbose")
    lines = out.splitlines()
    faults = [line for line in lines if line.startswith("fault: ")]
    assert len(faults) == 2, out
    assert faults[0].startswith(
        "fault: injected delay (rule latency, request #0) on GET "
        f"/api/account/{DEFAULT_ACCOUNT}/configuration/le-users/users at +"
    )
    assert faults[1].startswith(
        f"fault: injected status (rule brand, request #0) on GET /ws_api/account/{DEFAULT_ACCOUNT}/"
    )
    assert BEARER not in out
    assert lines[-len(SUMMARY) :] == SUMMARY


class _GoneReader:
    """An output whose reader went away (``| head -1``): every write is a broken pipe."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_fault_lines_stop_quietly_once_their_reader_is_gone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # With -v, every injected fault after the reader left printed a "--- Logging error ---"
    # traceback of some 45 lines on stderr, for as long as the simulator served.
    gone = _GoneReader()
    log = logging.getLogger("le_transport.chaos.faults")
    shown = cli._shown("le_transport.chaos.faults", gone, "fault: %(message)s", logging.DEBUG)  # type: ignore[arg-type]
    with shown:
        for n in range(3):
            log.debug("injected status (rule burst, request #%d)", n)
    assert gone.writes == 1, "nothing written after the first broken pipe"
    assert "Logging error" not in capsys.readouterr().err


def test_the_fault_summary_of_a_simulator_without_rules_is_empty() -> None:
    assert serve.fault_summary(SimFaults()) == []
    faults = SimFaults(FaultPlan(seed=2, rules=(FaultRule("f", Reset()),)))
    faults.run.force("f", unit="request", method="GET", path="/x")
    assert serve.fault_summary(faults) == [
        "faults injected, by rule (plan seed 2):",
        "  f (request): injected 1 (matched 0, forced 1)",
    ]


def test_simulate_help_shows_the_plan_format_with_an_example_that_loads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before, --plan said "a fault plan (JSON file)" and nothing of its format.
    with pytest.raises(SystemExit) as done:
        cli.main(["simulate", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "examples/fault_plan.json" in text
    assert '"Fault plan files"' in text
    start = text.index("The format is FaultPlan.to_dict()'s: ") + len(
        "The format is FaultPlan.to_dict()'s: "
    )
    example = text[start : text.index(", fields left out")]
    plan = FaultPlan.from_dict(json.loads(example))
    assert [(r.id, r.fault, r.schedule.fail_next) for r in plan.rules] == [
        ("burst", Status(503), 2)
    ]


# -- the surface review: hosts, plans, addresses, real-account options, Ctrl-C, closed pipes ------

ROOT = Path(__file__).resolve().parent.parent


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "le_transport.cli", *args]


def _no_le_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LE_")}


@pytest.fixture
def no_le_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LE_* variable in this process's environment."""
    for name in [n for n in os.environ if n.startswith("LE_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("host", ["a" * 64, "a..b", "."], ids=["label-64", "empty-label", "dot"])
def test_simulate_refuses_a_host_that_is_no_name_with_a_usage_error(
    host: str, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # It failed with a UnicodeError traceback ("label empty or too long") when binding.
    assert cli.main(["simulate", "--host", host, "--port", str(taken_port)]) == 2
    err = capsys.readouterr().err
    assert "le-transport simulate: --host" in err
    assert "is not a host name" in err
    assert "Traceback" not in err


def test_simulate_blames_listening_only_for_the_bind_not_for_a_closed_stdout() -> None:
    # Its stdout closed before the banner: it said "cannot listen on 127.0.0.1:0: Broken
    # pipe" and exited 2. Now: the usual quiet exit of a command whose reader went away.
    proc = subprocess.Popen(
        _command("simulate"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    proc.stdout.close()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "cannot listen" not in err
    assert "Traceback" not in err
    assert "Exception ignored" not in err


def test_a_plan_that_is_a_fifo_is_refused_at_once(taken_port: int, tmp_path: Path) -> None:
    # Reading a FIFO waited for a writer for ever.
    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    done = subprocess.run(
        _command("simulate", "--port", str(taken_port), "--plan", str(fifo)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "cannot read the fault plan" in done.stderr
    assert "is not a regular file (a FIFO)" in done.stderr


def _limit_memory() -> None:  # pragma: no cover - runs in the child
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_a_plan_that_is_a_device_is_refused_without_reading_it(taken_port: int) -> None:
    # /dev/zero was read until memory ran out (bounded here, should that come back).
    done = subprocess.run(
        _command("simulate", "--port", str(taken_port), "--plan", "/dev/zero"),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,
    )
    assert done.returncode == 2, done.stderr
    assert "is not a regular file (a character device)" in done.stderr


def test_a_plan_larger_than_the_bound_or_a_directory_is_refused(
    taken_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(serve.MAX_PLAN_BYTES + 1)  # sparse: costs nothing
    assert cli.main(["simulate", "--port", str(taken_port), "--plan", str(big)]) == 2
    assert f"is larger than {serve.MAX_PLAN_BYTES:,} bytes" in capsys.readouterr().err
    assert cli.main(["simulate", "--port", str(taken_port), "--plan", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a regular file (a directory)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("address", ["h:99999", "h:-1", "a:b:c", "h:0", "h:"])
def test_simulate_refuses_a_public_address_that_is_no_host_and_port(
    address: str, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["simulate", "--port", str(taken_port), "--public-address", address])
    assert code == 2
    err = capsys.readouterr().err
    assert "SimulatorConfig.public_address must be None or 'host' or 'host:port'" in err


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (
            ["--username", "bot", "--password", "pw-flag-9", "--csds-host", "evil.example"],
            "--username, --password and --csds-host given without --account (or LE_ACCOUNT)",
        ),
        (["--app-key", "k"], "--app-key given without --account (or LE_ACCOUNT)"),
    ],
)
@pytest.mark.usefixtures("no_le_variables")
def test_demo_refuses_a_real_accounts_option_without_the_account(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # It ignored them and ran against the simulator, passing: the user believed the real
    # account had been exercised.
    assert cli.main(["demo", *flags]) == 2
    captured = capsys.readouterr()
    assert named in captured.err
    assert "pw-flag-9" not in captured.out + captured.err
    assert captured.out == ""  # nothing ran


@pytest.mark.usefixtures("no_le_variables")
def test_demo_refuses_an_le_variable_without_an_account(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LE_PASSWORD", "pw-env-3")
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "LE_PASSWORD given without --account (or LE_ACCOUNT)" in err
    assert "pw-env-3" not in err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (
            ["--username", "bot"],
            "--password (or LE_PASSWORD) is needed for a user login; or, for an application "
            "login, --app-key (or LE_APP_KEY), --app-secret (or LE_APP_SECRET), --access-token "
            "(or LE_ACCESS_TOKEN) and --access-token-secret (or LE_ACCESS_TOKEN_SECRET)",
        ),
        (
            ["--username", "bot", "--app-key", "k", "--access-token", "t"],
            "an application login needs --app-secret (or LE_APP_SECRET) and "
            "--access-token-secret (or LE_ACCESS_TOKEN_SECRET) too",
        ),
        (["--password", "pw"], "--username (or LE_USERNAME) is needed with --account"),
    ],
    ids=["no-password", "half-an-api-key", "no-username"],
)
@pytest.mark.usefixtures("no_le_variables")
def test_demo_with_an_account_names_the_credentials_it_lacks(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # "--account 123 --username bot" failed with "AppLogin.app_key ...": a password was what
    # was missing.
    assert cli.main(["demo", "--account", "123", *flags]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "AppLogin" not in err


def test_demo_whose_reader_goes_away_exits_quietly() -> None:
    # `le-transport demo | head -1` printed a BrokenPipeError traceback.
    proc = subprocess.Popen(
        _command("demo"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_no_le_variables(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("[")
        proc.stdout.close()  # the reader goes away after one line
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "Exception ignored" not in err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["demo", "simulate"])
def test_an_output_that_cannot_be_written_ends_either_command_in_one_line(command: str) -> None:
    # A full disk under a redirected output printed a traceback ("No space left on device").
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            _command(command),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_no_le_variables(),
            timeout=120,
        )
    assert proc.returncode == 1, proc.stderr
    assert "le-transport: cannot write the output: No space left on device" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Exception ignored" not in proc.stderr


def _hear_ctrl_c() -> None:
    # A suite started in the background by a shell without job control (``cmd &`` in a
    # script) inherits SIGINT ignored, and Python keeps it so: the demo ran to its end.
    # One started under nohup inherits SIGHUP ignored, which the demo and the simulator
    # rightly leave so (test_simulate_started_under_nohup_outlives_a_hangup): the tests of
    # their hangup ran them to their end, or to the test's timeout.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_demo_interrupted_with_ctrl_c_cleans_up_and_exits_130_quietly() -> None:
    # It printed a KeyboardInterrupt traceback.
    proc = subprocess.Popen(
        _command("demo"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_no_le_variables(),
        preexec_fn=_hear_ctrl_c,  # as a terminal's Ctrl-C finds it, however the suite started
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("[")  # running: the loop's handler is set
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err + out


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs SIGHUP")
@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_demo_stopped_by_sigterm_or_a_hangup_cleans_up_and_exits_quietly(name: str) -> None:
    """Either killed the demo by default: no close, no logout (a real account's session left
    logged in by a cancelled CI job or a lost ssh session), no output of the cleanup."""
    sig = getattr(signal, name)
    proc = subprocess.Popen(
        _command("demo"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_no_le_variables(),
        preexec_fn=_hear_ctrl_c,  # a hangup heard, however the suite started
    )
    try:
        assert proc.stdout is not None
        while "logged in" not in proc.stdout.readline():  # a session to log out
            assert proc.poll() is None
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert "logged out" in out


@pytest.mark.skipif(
    shutil.which("openssl") is None or not hasattr(signal, "SIGHUP"),
    reason="needs openssl and SIGHUP",
)
def test_simulate_tls_stopped_by_a_hangup_removes_its_key_and_certificate(tmp_path: Path) -> None:
    # A closed terminal (SIGHUP) killed it by default: the key and certificate it made stayed
    # in the temporary directory, and the plan's summary was never printed.
    env = {**_no_le_variables(), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "le_transport.cli", "simulate", "--tls", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=_hear_ctrl_c,  # a hangup heard, however the suite started
    )
    try:
        assert proc.stdout is not None
        while "Ctrl-C to stop" not in proc.stdout.readline():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert list(tmp_path.iterdir()), "it made its certificate there"
    finally:
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs SIGHUP")
def test_simulate_started_under_nohup_outlives_a_hangup() -> None:
    # nohup (setsid, daemon wrappers) ignores SIGHUP so that the process outlives the
    # terminal: a handler of its own must not replace that.
    def ignore_hangups() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = subprocess.Popen(
        [sys.executable, "-m", "le_transport.cli", "simulate", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_no_le_variables(),
        cwd=ROOT,
        preexec_fn=ignore_hangups,  # what nohup does, before exec
    )
    try:
        assert proc.stdout is not None
        while "Ctrl-C to stop" not in proc.stdout.readline():
            assert proc.poll() is None
        proc.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
