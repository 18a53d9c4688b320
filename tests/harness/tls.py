"""A throwaway certificate authority and a server certificate for 127.0.0.1, made with the
`openssl` command, for servers the tests run with TLS (Redis `rediss://`)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.harness.servers import MissingServerBinaryError


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the authority's certificate, which clients trust
    cert: Path  # the server's certificate, for IP 127.0.0.1 and localhost
    key: Path  # the server's private key


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise MissingServerBinaryError("openssl is not installed: apt-get install openssl")
    result = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def make_tls_files(folder: Path) -> TlsFiles:
    folder.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "rsa:2048", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Tenantry test CA", cwd=folder)  # fmt: skip
    _openssl("req", *key, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf",
             cwd=folder)  # fmt: skip
    return TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")


def redis_tls_options(port: int, files: TlsFiles) -> tuple[str, ...]:
    """`redis-server` options that serve TLS only, on `port`, to clients that need no
    certificate of their own."""
    return (
        "--port", "0",
        "--tls-port", str(port),
        "--tls-cert-file", str(files.cert),
        "--tls-key-file", str(files.key),
        "--tls-ca-cert-file", str(files.ca),
        "--tls-auth-clients", "no",
    )  # fmt: skip
