"""The simulator over TLS (https and wss), in-process and from ``le-transport simulate --tls``."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
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


def test_simulate_refuses_an_unreadable_plan_or_half_a_key_pair(tmp_path: Path) -> None:
    from le_transport.cli import main

    assert main(["simulate", "--plan", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text('{"seed": 1, "rules": [{"id": "x", "fault": "boom"}]}')
    assert main(["simulate", "--plan", str(tmp_path / "bad.json")]) == 2
    assert main(["simulate", "--cert", str(tmp_path / "cert.pem")]) == 2
