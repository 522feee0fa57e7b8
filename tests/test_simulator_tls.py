"""The simulator over TLS (https and wss), in-process and from ``le-transport simulate --tls``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import stat
import sys
from pathlib import Path

import aiohttp

from le_transport import Engine
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_ACCOUNT, DEFAULT_USER, Simulator
from le_transport.testing.simulator.serve import self_signed_certificate, server_tls_context

CSDS = f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"


async def test_an_engine_trusting_the_self_signed_certificate_speaks_https_and_wss(
    clock: VirtualClock, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    async with Simulator(clock=clock, ssl=server_tls_context(cert, key)) as sim:
        assert sim.url.startswith("https://")
        bearer = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600, "user").bearer
        async with Engine(sim.domains, scheme="https", clock=clock, tls=trust) as engine:
            body = await engine.request_json("GET", "agentVep", CSDS, expect=dict)
            assert {u["baseURI"] for u in body["baseURIs"]} == {sim.host}
            async with engine.session.ws_connect(sim.brand_socket_url(bearer)) as ws:
                await ws.send_json({"kind": "req", "id": "1", "type": ".GetClock", "body": {}})
                assert (await ws.receive_json())["code"] == 200


async def test_simulate_command_serves_until_interrupted(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "le_transport.cli",
        "simulate",
        "--tls",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        cert_line = (await proc.stdout.readline()).decode()
        assert cert_line.startswith("self-signed certificate"), cert_line
        cert = cert_line.rsplit(": ", 1)[1].strip()
        banner = (await proc.stdout.readline()).decode()
        url = banner.split(" on ", 1)[1].split(" ", 1)[0]
        assert url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=cert)
        async with (
            aiohttp.ClientSession() as http,
            http.get(url + CSDS, ssl=trust) as resp,
        ):
            assert resp.status == 200
            assert "baseURIs" in json.loads(await resp.text())
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert _gone(cert)  # removed when the simulator stopped


def _gone(path: str | Path) -> bool:
    return not Path(path).exists()


async def _start_tls_simulator(tmpdir: Path) -> tuple[asyncio.subprocess.Process, Path, str]:
    """``le-transport simulate --tls`` with ``TMPDIR=tmpdir``: the process, the certificate
    file it printed, its base URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "le_transport.cli",
        "simulate",
        "--tls",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmpdir)},
    )
    assert proc.stdout is not None
    cert_line = (await proc.stdout.readline()).decode()
    assert cert_line.startswith("self-signed certificate"), cert_line
    banner = (await proc.stdout.readline()).decode()
    url = banner.split(" on ", 1)[1].split(" ", 1)[0]
    return proc, Path(cert_line.rsplit(": ", 1)[1].strip()), url


async def _status(url: str, cert: Path) -> int:
    trust = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as http, http.get(url + CSDS, ssl=trust) as resp:
        return resp.status


async def test_two_tls_simulators_each_keep_their_own_certificate_file(tmp_path: Path) -> None:
    # Both wrote $TMPDIR/le-simulator-cert.pem: the second clobbered the first's certificate,
    # and a symlink planted there was followed. Now each writes a file of its own, created
    # new (never through a link), readable by its user only, and removed when it stops.
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "le-simulator-cert.pem").symlink_to(victim)
    procs: list[asyncio.subprocess.Process] = []
    try:
        a, cert_a, url_a = await _start_tls_simulator(tmp_path)
        procs.append(a)
        b, cert_b, url_b = await _start_tls_simulator(tmp_path)
        procs.append(b)
        assert cert_a != cert_b
        for cert in (cert_a, cert_b):
            assert cert.parent == tmp_path
            assert cert.name.startswith("le-simulator-cert-")
            assert cert.suffix == ".pem"
            assert stat.S_IMODE(cert.stat().st_mode) == 0o600
        assert await _status(url_a, cert_a) == 200  # A's certificate still trusts A
        assert await _status(url_b, cert_b) == 200
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        errs = [(await proc.communicate())[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errs
    assert victim.read_text() == "precious"
    assert _gone(cert_a)
    assert _gone(cert_b)


def test_simulate_refuses_an_unreadable_plan_or_half_a_key_pair(tmp_path: Path) -> None:
    from le_transport.cli import main

    assert main(["simulate", "--plan", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text('{"seed": 1, "rules": [{"id": "x", "fault": "boom"}]}')
    assert main(["simulate", "--plan", str(tmp_path / "bad.json")]) == 2
    assert main(["simulate", "--cert", str(tmp_path / "cert.pem")]) == 2
