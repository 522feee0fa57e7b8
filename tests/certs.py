"""Self-signed TLS certificates for loopback test servers (made with the openssl command line)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed_loopback(where: Path) -> tuple[Path, Path]:
    """Write an EC certificate and key for 127.0.0.1 (valid two days) into ``where``.

    Returns ``(cert, key)``: PEM files for a server's ``load_cert_chain`` or ``tls-*-file``.
    """
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
