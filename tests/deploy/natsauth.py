"""A real nats-server running the deployment's generated authorization block.

The permission tests start their own server (not the shared session one) because the
session server has no users: here every client must log in as a service and is held to
`deploy/k8s/base/nats/auth.conf`, exactly as in the cluster.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.localstack import find_nats_server, free_port
from shared.permissions import USERS, password_variable
from tests.helpers import stop_process

AUTH_CONF = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "nats" / "auth.conf"


@dataclass(frozen=True)
class AuthServer:
    """A running nats-server with one password per user."""

    url: str
    passwords: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    async def listening(self) -> bool:
        """True once the server accepts TCP connections (a `wait_for` probe)."""
        if self.process.poll() is not None:
            raise AssertionError(f"nats-server exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
        port = int(self.url.rsplit(":", 1)[1])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False


def write_config(folder: Path, port: int) -> Path:
    """A nats.conf that includes the committed auth.conf, as the cluster's ConfigMap does."""
    (folder / "auth.conf").write_text(AUTH_CONF.read_text())
    config = folder / "nats.conf"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{folder / "js"}" }}\ninclude ./auth.conf\n'
    )
    return config


@contextmanager
def auth_server(folder: Path, *, passwords: dict[str, str] | None = None) -> Iterator[AuthServer]:
    """Start nats-server with the generated users; stop it on exit."""
    port = free_port()
    config = write_config(folder, port)
    chosen = passwords if passwords is not None else {user: secrets.token_urlsafe(12) for user in USERS}
    # nats-server parses a variable's value as config, so "2026-..." would be a date and
    # "1234" a number: the manifests quote it (`"$(..._RAW)"`), and so do we.
    env = {**os.environ, **{password_variable(user): f'"{value}"' for user, value in chosen.items()}}
    log = folder / "nats.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(find_nats_server()), "-c", str(config)], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        yield AuthServer(f"nats://127.0.0.1:{port}", chosen, process, log)
    finally:
        stop_process(process)
