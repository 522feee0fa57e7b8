"""The benchmarks: reconnect attempts counted on every allowed websockets, a run without the peer
libraries, memory per socket as a slope, and the overload and profile parts CI never ran.

Nothing here times anything: each test proves a part does what it says, at its smallest size.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import http_calls, overload, reconnect_storm, ws_scale
from benchmarks.__main__ import main

from .redis_server import RedisServer, redis_server

__all__ = ["redis_server"]

ROOT = Path(__file__).resolve().parent.parent
HINT = "not installed (pip install -e '.[bench]')"
PEER_MODULES = ("tenacity", "backoff", "stamina", "aiohttp_retry", "websockets")

# -- 1. the storm counts python-websockets' attempts on 13 to 17 ------------------------------


class _Connect16:
    """python-websockets 13 to 16's ``connect``: an attempt is ``create_connection``, which
    ``__await_impl__`` calls (there is no ``connect`` method to hook)."""

    async def create_connection(self) -> str:
        return "connection"

    async def __await_impl__(self) -> str:
        return await self.create_connection()


class _Connect17:
    """python-websockets 17's ``connect``: an attempt is its ``connect`` method."""

    async def connect(self) -> str:
        return "connection"


async def test_the_storm_counts_an_attempt_on_websockets_16_as_on_17() -> None:
    # The hook overrode `connect` alone: on 13-16 nothing called it, the storm counted 0
    # attempts and the table showed 0.0% worst windows.
    before = len(reconnect_storm.ATTEMPTS)
    counted16: Any = reconnect_storm.counting(_Connect16)
    assert await counted16().__await_impl__() == "connection"
    assert len(reconnect_storm.ATTEMPTS) == before + 1
    counted17: Any = reconnect_storm.counting(_Connect17)
    assert await counted17().connect() == "connection"
    assert len(reconnect_storm.ATTEMPTS) == before + 2
    assert issubclass(counted16, _Connect16)
    assert issubclass(counted17, _Connect17)


def test_a_websockets_with_no_attempt_to_count_is_refused_not_counted_as_zero() -> None:
    class Unknown:
        async def open(self) -> None: ...

    with pytest.raises(RuntimeError, match="cannot count reconnect attempts"):
        reconnect_storm.counting(Unknown)


def test_the_installed_websockets_has_an_attempt_the_storm_counts() -> None:
    client = pytest.importorskip("websockets.asyncio.client")
    counted = reconnect_storm.counting(client.connect)
    assert any(name in vars(counted) for name in reconnect_storm.ATTEMPT_METHODS)


def _storm(back: int, attempts: int, n: int = 10) -> dict[str, Any]:
    drop = 100.0
    record = {
        "arrivals": [drop + 0.01 * i for i in range(back)],
        "opened": [drop + 0.02 + 0.01 * i for i in range(back)],
    }
    times = [drop + 0.01 * i for i in range(attempts)]
    return reconnect_storm.summarise("websockets reconnect loop", n, 0.5, drop, times, record)


def test_a_storm_whose_attempts_were_not_counted_shows_no_shares() -> None:
    fleet = _storm(back=10, attempts=0)
    assert fleet["attempts_counted"] is False
    assert fleet["worst_100ms"] is None
    assert fleet["worst_1s"] is None
    assert "attempts not counted" in fleet["note"]
    rows, notes = reconnect_storm.rows_of({"v": {"fleet": fleet, "lone": _storm(1, 0, n=1)}})
    assert rows[0][2] == "attempts not counted"
    assert not any(str(cell).endswith("%") for cell in rows[0]), rows  # no share at all
    assert any("attempts not counted" in note for note in notes)
    # Counted: the shares are there.
    counted = _storm(back=10, attempts=10)
    assert counted["attempts_counted"] is True
    assert counted["worst_1s"] == 10
    rows, notes = reconnect_storm.rows_of({"v": {"fleet": counted, "lone": _storm(1, 1, n=1)}})
    assert rows[0][2:4] == ["100.0%", "100.0%"]
    assert notes == []


# -- 2. a run without the peer libraries --------------------------------------------------------

_BLOCKER = """
import importlib.abc
import sys

BLOCK = {blocked!r}


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _Block())
"""


def _without_peers(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks <argv>`` on a machine without the bench extra (simulated: a
    sitecustomize that refuses to import any peer library)."""
    site = tmp_path / "nopeers"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_BLOCKER.format(blocked=set(PEER_MODULES)))
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_run_without_the_peer_libraries_measures_the_rest_and_says_what_it_left_out(
    tmp_path: Path,
) -> None:
    # It died with ModuleNotFoundError (tenacity) before measuring anything or writing JSON.
    out = tmp_path / "nopeers.json"
    proc = _without_peers(tmp_path, "run", "--tiny", "--only", "http", "--out", str(out))
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stdout[-2000:]
    for name in http_calls.PEERS:
        assert f"{name}: {HINT}; not measured" in proc.stdout
    written = json.loads(out.read_text())
    happy = written["results"]["http"]["happy"]
    for concurrency in http_calls.SIZES["tiny"]["concurrency"]:
        by_client = happy[str(concurrency)]
        assert set(by_client) == set(http_calls.CLIENTS)  # every client has an entry
        for name in http_calls.PEERS:
            assert by_client[name] == {"error": HINT}
        assert by_client["raw aiohttp"]["rps"]["median"] > 0
        assert by_client["le_transport engine"]["failed_share"] == 0
    assert written["results"]["http"]["not_measured"] == {
        n: {"error": HINT} for n in http_calls.PEERS
    }
    # The table holds figures only: no row carries the sentence.
    assert not any(
        line.startswith("|") and "not installed" in line for line in proc.stdout.splitlines()
    )


def test_profiling_a_client_whose_peer_is_missing_says_so_in_one_line(tmp_path: Path) -> None:
    proc = _without_peers(tmp_path, "profile", "--client", "tenacity", "--seconds", "0.01")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"tenacity: {HINT}; not profiled" in proc.stderr


def _block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import <module>`` fail in this process, as if it were not installed."""
    for module in modules:
        for name in [m for m in sys.modules if m == module or m.startswith(f"{module}.")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, module, None)


def test_the_overload_amplification_runs_without_tenacity_and_stamina(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every variant, the engine's too, imported stamina (for its test mode) and died.
    _block(monkeypatch, "tenacity", "stamina")
    with overload.quiet():
        data, text = overload.amplification(overload.SIZES["tiny"])
    assert data["tenacity"] == data["stamina"] == {"error": HINT}
    assert data["bare schedule"]["100%"]["amplification"] == pytest.approx(4.0)
    assert data["+ budget"]["100%"]["amplification"] < 1.5
    assert f"tenacity: {HINT}; not measured" in text
    assert f"stamina: {HINT}; not measured" in text


def _fake_child(errors: dict[str, str]) -> Any:
    """A ``_spawn`` that answers at once: a canned measurement, or the child's error."""

    def spawn(name: str, port: int, n: int, *rest: float) -> dict[str, Any]:
        if name in errors:
            return {"kind": name, "variant": name, "error": errors[name]}
        if name in ws_scale.KINDS:
            return {
                "kind": name,
                "sockets": n,
                "asked": n,
                "interval": rest[0],
                "connect_seconds": 0.1,
                "bytes_per_socket": 15_000.0,
                "cpu_share": 0.01,
                "window": rest[1],
            }
        return {  # a storm child's figures: every socket back, one attempt each
            "variant": name,
            "sockets": n,
            "fleet_opened_seconds": 0.1,
            "attempts": n,
            "server_arrivals": n,
            "back": n,
            "all_back_seconds": 1.0,
            "first_back_seconds": 0.9,
            "worst_100ms": n,
            "worst_1s": n,
            "server_worst_100ms": n,
            "server_worst_1s": n,
            "server_peak_handshakes_per_s": n,
        }

    return spawn


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


#: What a child without websockets said (the ws and storm children ran and died of it).
NO_WEBSOCKETS = {
    name: "ModuleNotFoundError: No module named 'websockets'"
    for name in (*ws_scale.KINDS, *reconnect_storm.VARIANTS)
    if "websockets" in name
}


def test_the_ws_table_names_what_it_did_not_measure_under_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A failed kind's error went into the table's last column, "CPU at 30 s keepalive".
    errors = {**NO_WEBSOCKETS, "le_transport": "timed out"}  # a child that failed
    monkeypatch.setattr(ws_scale, "_spawn", _fake_child(errors))
    _block(monkeypatch, "websockets")
    ws = ws_scale.run("tiny")
    rows = _table_rows(ws["text"])
    assert not any("not installed" in r or "timed out" in r or "Error" in r for r in rows), rows
    assert f"websockets (deflate): {HINT}; not measured" in ws["text"]
    assert f"websockets (no compression): {HINT}; not measured" in ws["text"]
    assert "le_transport: timed out; not measured" in ws["text"]
    assert ws["data"]["kinds"]["websockets (deflate)"]["idle"]["error"] == HINT
    assert ws["data"]["kinds"]["le_transport"]["idle"]["error"] == "timed out"


def test_the_storm_table_names_what_it_did_not_measure_under_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A failed variant's error went into the table's last column, "server peak/s".
    errors = {**NO_WEBSOCKETS, "le_transport (pacing off)": "timed out"}
    monkeypatch.setattr(reconnect_storm, "_spawn", _fake_child(errors))
    _block(monkeypatch, "websockets")
    storm = reconnect_storm.run("tiny")
    rows = _table_rows(storm["text"])
    assert not any("not installed" in r or "timed out" in r or "Error" in r for r in rows), rows
    assert any(r.startswith("| le_transport (defaults)") for r in rows)
    assert f"websockets reconnect loop: {HINT}; not measured" in storm["text"]
    assert "le_transport (pacing off): timed out; not measured" in storm["text"]
    assert storm["data"]["variants"]["websockets reconnect loop"]["fleet"]["error"] == HINT


# -- 4. memory per socket: a slope, not a delta over a baseline the fleet's first sockets reuse --


async def test_memory_per_socket_is_the_slope_past_the_allocators_slack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A process whose allocator still holds 150 KB it freed while warming up: the first ten
    # 15 KB sockets fit in it, and the RSS grows only after. Over the baseline, 20 sockets
    # came out at half their cost (at 0.6 of 14 KiB in the reviewer's run).
    per_socket, slack = 15_000, 150_000
    opened = 0

    async def opener(url: str, n: int, interval: float) -> int:
        nonlocal opened
        opened += n
        return n

    def rss() -> int:
        return 10_000_000 + max(0, opened * per_socket - slack)

    monkeypatch.setitem(ws_scale.KINDS, "raw aiohttp", opener)
    monkeypatch.setattr(ws_scale, "settle_memory", rss)
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    result = await ws_scale._child("raw aiohttp", "ws://unused", 20, 3600.0, 0.0)
    assert result["sockets"] == 20
    assert result["bytes_per_socket"] == per_socket
    assert result["bytes_per_socket_from_baseline"] < per_socket  # the old figure, kept


async def test_a_second_half_that_did_not_open_gives_no_memory_figure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fleet's second half refused (EMFILE, the server): 20 failed connects' leftovers over
    # "1 socket" read as 200 KiB a socket, printed for the sockets that did open.
    opened = 0

    async def opener(url: str, n: int, interval: float) -> int:
        nonlocal opened
        if opened >= 11:  # the warm-up socket and the first half open; the second, none
            return 0
        opened += n
        return n

    grown = iter(range(10_000_000, 20_000_000, 200_000))
    monkeypatch.setitem(ws_scale.KINDS, "raw aiohttp", opener)
    monkeypatch.setattr(ws_scale, "settle_memory", lambda: next(grown))
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    result = await ws_scale._child("raw aiohttp", "ws://unused", 20, 3600.0, 0.0)
    assert result["sockets"] == 10
    assert result["bytes_per_socket"] is None
    assert "not measured" in result["memory_method"]
    assert result["memory_noise"]


_real_sleep = asyncio.sleep


async def _no_sleep(delay: float, result: Any = None) -> Any:
    return await _real_sleep(0, result)


def test_a_small_fleet_says_its_memory_figure_is_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_scale, "_spawn", _fake_child({}))
    text = ws_scale.run("tiny")["text"]
    assert "KiB/socket from 20 sockets is noise" in text
    assert "is noise" not in ws_scale.run("tiny", sockets=ws_scale.MEMORY_MIN_SOCKETS)["text"]


# -- 5. the parts CI never ran: the overload fleet and Redis cost, and profile ------------------


def test_the_overload_fleet_shares_one_login_through_redis(redis_server: RedisServer) -> None:
    size = {**overload.SIZES["tiny"], "fleet": (2,)}
    with overload.quiet():
        data, text = overload.fleet(size, redis_url=redis_server.url)
    alone, shared = data["2"]["without_redis"], data["2"]["with_redis"]
    assert alone["finished"] == shared["finished"] == 2
    assert alone["logins"] == 2  # each process its own
    assert shared["logins"] == 1  # one for the fleet, through Redis
    assert "logins shared" in text


def test_the_overload_cost_measures_every_variant_on_redis(redis_server: RedisServer) -> None:
    with overload.quiet():
        data, text = overload.cost(overload.SIZES["tiny"], redis_url=redis_server.url)
    assert list(data) == list(overload.COST_VARIANTS)
    for variant, figures in data.items():
        assert figures is not None, variant  # the Redis rows too: measured, not "n/a"
        assert figures["calls"] == overload.SIZES["tiny"]["cost_calls"]
        assert 0 < figures["p50_us"] <= figures["p99_us"], variant
    assert "n/a" not in text


def test_profile_prints_the_engines_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--concurrency", "4", "--seconds", "0.05"]) == 0
    printed = capsys.readouterr().out
    # pyinstrument's tree (the bench extra), or cProfile's table without it.
    assert "Duration" in printed or "function calls" in printed
    assert "_measure" in printed or "run_once" in printed
