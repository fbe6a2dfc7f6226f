"""Real processes for the fault suite and the soak: restartable servers and the services.

`ServerStack` owns one nats-server and one embedded store on fixed ports and one data
folder, so either can be stopped for a while and started again where it was (the
services reconnect to the same address). `System` starts the services of one namespace
as `python -m services.<name>` processes (or test workers), with logs in a folder, and
kills what is left at the end. Neither is pytest-specific: `bench/soak.py` uses both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.localstack import free_port, start_embedded_mongo, start_nats
from shared.names import JOBS

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServerStack:
    """nats-server and the embedded store on fixed ports, each stoppable and restartable."""

    data_dir: Path
    nats_port: int = 0
    mongo_port: int = 0
    nats: subprocess.Popen[bytes] | None = None
    store: subprocess.Popen[bytes] | None = None

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def mongo_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/"

    def start(self) -> ServerStack:
        self.nats_port = self.nats_port or free_port()
        self.mongo_port = self.mongo_port or free_port()
        self.start_nats()
        self.start_store()
        return self

    def start_nats(self) -> None:
        self.nats, self.nats_port = start_nats(self.data_dir, self.nats_port)

    def start_store(self) -> None:
        self.store, self.mongo_port = start_embedded_mongo(self.data_dir, self.mongo_port)

    def stop_nats(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.nats, sig)
        self.nats = None

    def stop_store(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.store, sig)
        self.store = None

    def stop(self) -> None:
        self.stop_nats()
        self.stop_store()


def _stop(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def job_env(schedules: Mapping[str, str], **policy: object) -> dict[str, str]:
    """PULSE_JOBS__* for a run: only `schedules`' jobs enabled (with those schedules), and
    `policy` (e.g. alert_after_failures=1, retry__max_attempts=3) applied to each of them.

    Chains are off (no `on_complete` follow-ups, no market refreshes from whale_sync): they
    would request jobs no scenario serves, and those requests would stay in JOBS.
    """
    env: dict[str, str] = {"PULSE_WHALE_MARKET_REFRESH": "false"}
    for job in JOBS:
        prefix = f"PULSE_JOBS__{job.upper()}__"
        env[prefix + "ENABLED"] = "true" if job in schedules else "false"
        env[prefix + "ON_COMPLETE"] = "[]"
        if job in schedules:
            env[prefix + "SCHEDULE"] = schedules[job]
            for key, value in policy.items():
                env[prefix + key.upper()] = str(value)
    return env


@dataclass
class Proc:
    """One service process and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_lines(self) -> list[dict[str, object]]:
        """Its JSON log lines (other lines, e.g. a traceback, are left out)."""
        if not self.log.exists():
            return []
        out: list[dict[str, object]] = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def started(self) -> bool:
        """Connected and consuming (a service) or ticking (a ticker)."""
        return any(line.get("event") in ("worker.started", "ticker.started") for line in self.log_lines())

    def rss_kib(self) -> int:
        """Resident memory now (0 once gone)."""
        return _status_kib(self.pid, "VmRSS")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        if self.alive():
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class System:
    """The processes of one namespace: services, tickers and test workers."""

    env: dict[str, str]
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, service: str, *, module: str | None = None, env: Mapping[str, str] | None = None) -> Proc:
        """Start `python -m services.<service>` (or `module`) with this system's environment."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = f"{service}-{sum(p.name.startswith(service) for p in self.procs)}"
        log = self.log_dir / f"{name}.log"
        full_env = {key: value for key, value in os.environ.items() if not key.startswith("PULSE_")}
        full_env.update(self.env)
        full_env.update(env or {})
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", module or f"services.{service}"],
                cwd=ROOT,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append(Proc(name, process, log))
        return self.procs[-1]

    def running(self, prefix: str) -> list[Proc]:
        return [p for p in self.procs if p.name.startswith(prefix) and p.alive()]

    def fired(self) -> dict[str, float]:
        """run_id → lateness in seconds of every request a ticker logged as published."""
        out: dict[str, float] = {}
        for proc in self.procs:
            for line in proc.log_lines():
                if line.get("event") == "ticker.fired" and isinstance(line.get("run_id"), str):
                    out[str(line["run_id"])] = float(str(line.get("duration_ms", 0))) / 1000
        return out

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.alive():
                proc.process.terminate()
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()


@contextlib.contextmanager
def running_system(env: dict[str, str], log_dir: Path) -> Iterator[System]:
    system = System(env, log_dir)
    try:
        yield system
    finally:
        system.stop_all()
