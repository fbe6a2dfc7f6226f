"""Certificates made for a test with `openssl` (a CA, a server and a client certificate),
and a nats-server started from a config file the test writes.

`openssl` rather than the `cryptography` package, which the environment does not ship.
Keys are PKCS#8 PEM (OpenSSL 3's default), which the embedded store's launcher reads.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.localstack import find_nats_server, free_port
from tests.helpers import stop_process


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "these tests need the openssl command"
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(folder: Path, name: str, subject: str, extensions: str) -> None:
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-out", f"{name}.crt", "-extfile", f"{name}.ext",
        cwd=folder,
    )  # fmt: skip


def make_certificates(folder: Path) -> Certificates:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=marketpulse test CA",
        cwd=folder,
    )  # fmt: skip
    _signed(
        folder,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    _signed(folder, "client", "/CN=marketpulse-client", "extendedKeyUsage=clientAuth\n")
    return Certificates(
        ca=folder / "ca.crt",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
    )


@dataclass
class ConfiguredNats:
    """A nats-server run from `config` (rewrite it and call `reload`)."""

    process: subprocess.Popen[bytes]
    port: int
    config: Path
    log: Path

    def reload(self) -> None:
        """Make the server re-read its config file (as `nats-server --signal reload` does)."""
        self.process.send_signal(signal.SIGHUP)


@contextmanager
def configured_nats(folder: Path, body: str) -> Iterator[ConfiguredNats]:
    """Start nats-server with `listen` and JetStream set and `body` as the rest of its config."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "nats.conf"
    config.write_text(f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{folder / "js"}" }}\n{body}\n')
    log = folder / "nats.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([str(find_nats_server()), "-c", str(config)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise AssertionError(f"nats-server exited: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"nats-server did not listen: {log.read_text()[-2000:]}") from None
                time.sleep(0.05)
        yield ConfiguredNats(process, port, config, log)
    finally:
        stop_process(process)
