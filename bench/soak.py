"""Soak: the whole system for N minutes under random faults; nothing may be lost or doubled.

    .venv/bin/python bench/soak.py [--minutes 10] [--seed 1]

Starts its own nats-server and embedded store, the provider simulator with random faults
(5xx, 429, slow answers, malformed bodies, bad records), two tickers and every service
(two replicas of market_sync and whale_sync) on short schedules. While it runs, a random
consumer is SIGKILLed and started again every 20-40 s, one ticker is SIGKILLed once
(and started again), and the store is stopped for 10 s once. Then the tickers stop, the
requests in flight settle (bounded), and it prints runs requested / terminal / lost /
doubled, the ticker's p99 lateness and each process's peak memory (RSS).

Exit status: 0, or 1 when any request was lost (no terminal record and no dead letter
after the settle time, whether it has no record or one stuck in a non-terminal status) or
any side effect doubled; the other problems the audit finds are printed too. Everything
it starts is stopped at the end; its logs are kept in a temporary folder it names.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.bus import connect_nats, ensure_topology  # noqa: E402
from shared.providers.simprocess import simulator_process  # noqa: E402
from shared.settings import Settings, load_settings  # noqa: E402
from shared.store import ensure_indexes, make_client  # noqa: E402
from tests.faults.audit import Audit, run_audit, settled  # noqa: E402
from tests.faults.system import Proc, ServerStack, System, job_env  # noqa: E402

SCHEDULES = {
    "whale_sync": "every 2s",
    "market_sync": "every 10s",
    "stats": "every 30s",
    "cleanup": "every 1m",
    "watchdog": "every 15s",
}
CONSUMERS = {"market_sync": 2, "whale_sync": 2, "stats": 1, "janitor": 1}
SIM_FAULTS = [
    "markets:5xx=0.03",
    "markets:slow=0.01",
    "markets:malformed=0.01",
    "markets:bad_records=0.01",
    "trades:5xx=0.05",
    "trades:429=0.03",
    "trades:malformed=0.01",
    "trades:bad_records=0.02",
]
SETTLE_S = 120.0


def service_env(settings: Settings, sim_url: str) -> dict[str, str]:
    env = {
        "PULSE_NATS_URL": settings.nats_url,
        "PULSE_MONGO_URL": settings.mongo_url.get_secret_value(),
        "PULSE_MONGO_DB": settings.mongo_db,
        "PULSE_NAMESPACE": settings.namespace,
        "PULSE_HEARTBEAT_INTERVAL_S": str(settings.heartbeat_interval_s),
        "PULSE_ACK_WAIT_S": str(settings.ack_wait_s),
        "PULSE_HTTP_PORT": "0",
        "PULSE_LOG_JSON": "true",
        "PULSE_HTTP_TIMEOUT_S": "3",
        "PULSE_POLYMARKET_GAMMA_URL": sim_url,
        "PULSE_POLYMARKET_DATA_URL": sim_url,
    }
    return env | job_env(SCHEDULES, alert_after_failures=1)


class MemoryWatch:
    """Peak resident memory of every process, sampled once a second (a killed one keeps its peak)."""

    def __init__(self) -> None:
        self.peak_kib: dict[str, int] = {}

    def sample(self, label: str, pid: int) -> None:
        kib = _rss_kib(pid)
        self.peak_kib[label] = max(self.peak_kib.get(label, 0), kib)

    def by_service(self) -> dict[str, int]:
        """Peak per service: the largest of its processes (replicas and restarts alike)."""
        out: dict[str, int] = {}
        for label, kib in self.peak_kib.items():
            service = label.rsplit("-", 1)[0]
            out[service] = max(out.get(service, 0), kib)
        return out


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Chaos:
    """The soak's faults, on a random but seeded plan."""

    def __init__(self, system: System, stack: ServerStack, env: dict[str, str], rng: random.Random) -> None:
        self.system, self.stack, self.env, self.rng = system, stack, env, rng
        self.kills: list[str] = []
        #: Processes that exited on their own and were started again.
        self.restarted: list[str] = []
        self.store_restarts = 0

    def start_consumer(self, service: str) -> Proc:
        return self.system.start(service, env=self.env)

    async def kill_consumer(self) -> None:
        candidates = [p for p in self.system.procs if p.alive() and not p.name.startswith("ticker")]
        if not candidates:
            return
        victim = self.rng.choice(candidates)
        victim.stop(signal.SIGKILL)
        self.kills.append(victim.name)
        await asyncio.sleep(2)  # down for a moment, as a crashed pod is
        self.start_consumer(victim.name.rsplit("-", 1)[0])

    def supervise(self) -> None:
        """Start again any process that exited on its own, as Kubernetes restarts a pod."""
        for proc in list(self.system.procs):
            if not proc.alive() and proc.name not in self.kills and proc.name not in self.restarted:
                self.restarted.append(proc.name)
                self.system.start(proc.name.rsplit("-", 1)[0], env=self.env)

    async def kill_ticker(self) -> None:
        tickers = self.system.running("ticker")
        if not tickers:
            return
        victim = self.rng.choice(tickers)
        victim.stop(signal.SIGKILL)
        self.kills.append(victim.name)
        await asyncio.sleep(5)
        self.system.start("ticker", env=self.env)

    async def run(self, seconds: float, memory: MemoryWatch) -> None:
        """The fault plan: a consumer killed every 20-40 s, a ticker at 40 %, the store at 60 %."""
        started = time.monotonic()
        end = started + seconds
        once = {started + seconds * 0.4: self.kill_ticker, started + seconds * 0.6: self.restart_store}
        next_kill = started + self.rng.uniform(20, 40)
        while time.monotonic() < end:
            self.sample(memory)
            self.supervise()
            if time.monotonic() >= next_kill:
                await self.kill_consumer()
                next_kill = time.monotonic() + self.rng.uniform(20, 40)
            for at in [at for at in once if time.monotonic() >= at]:
                await once.pop(at)()
            await asyncio.sleep(1)

    def sample(self, memory: MemoryWatch) -> None:
        for proc in self.system.procs:
            if proc.alive():
                memory.sample(proc.name, proc.pid)
        for label, server in (("nats_server", self.stack.nats), ("embedded_store", self.stack.store)):
            if server is not None:
                memory.sample(label, server.pid)

    async def restart_store(self) -> None:
        self.stack.stop_store()
        await asyncio.sleep(10)
        self.stack.start_store()
        self.store_restarts += 1


async def soak(minutes: float, seed: int, work: Path) -> int:
    rng = random.Random(seed)
    stack = ServerStack(work / "servers").start()
    memory = MemoryWatch()
    system: System | None = None
    try:
        settings = load_settings(
            nats_url=stack.nats_url,
            mongo_url=stack.mongo_url,
            mongo_db="soak",
            namespace="soak",
            heartbeat_interval_s=1.0,
            ack_wait_s=5.0,
            mongo_timeout_s=3.0,
        )
        client = await connect_nats(settings, name="soak")
        js = client.jetstream()
        await ensure_topology(js, settings)
        mongo = make_client(settings)
        db = mongo[settings.mongo_db]
        await ensure_indexes(db)
        with simulator_process(markets=2000, frozen=False, seed=seed, faults=SIM_FAULTS) as sim:
            env = service_env(settings, sim.url)
            system = System(env, work / "logs")
            chaos = Chaos(system, stack, env, rng)
            for service, replicas in CONSUMERS.items():  # one at a time: a 2-core machine starts them all slowly
                for _ in range(replicas):
                    await wait_started(chaos.start_consumer(service))
            for _ in range(2):
                await wait_started(system.start("ticker", env=env))

            print(f"soak: {minutes:g} min, seed {seed}, logs in {work}", flush=True)
            await chaos.run(minutes * 60, memory)

            for ticker in system.running("ticker"):
                ticker.stop()
            requested = set(system.fired())
            deadline = time.monotonic() + SETTLE_S
            audit: Audit | None = None
            while time.monotonic() < deadline and audit is None:
                audit = await settled(js, db, settings, requested)
                await asyncio.sleep(1)
            audit = audit or await run_audit(js, db, settings, requested)
            report(audit, system, memory, chaos, minutes)
        await client.close()
        await mongo.close()
        return 1 if audit.lost or audit.not_terminal or audit.doubled else 0
    finally:
        if system is not None:
            system.stop_all()
        stack.stop()


async def wait_started(proc: Proc, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not proc.started():
        if not proc.alive() or time.monotonic() > deadline:
            raise SystemExit(f"soak: {proc.name} did not start; its log ends:\n{proc.log.read_text()[-2000:]}")
        await asyncio.sleep(0.2)


def lateness_ms(system: System) -> tuple[list[float], int]:
    """Lateness of on-time slots (ms), and how many were catch-ups (late by design)."""
    on_time: list[float] = []
    catch_ups = 0
    for proc in system.procs:
        for line in proc.log_lines():
            if line.get("event") != "ticker.fired":
                continue
            if "(catch-up)" in str(line.get("msg", "")):
                catch_ups += 1
            else:
                on_time.append(float(str(line.get("duration_ms", 0))))
    return on_time, catch_ups


def report(audit: Audit, system: System, memory: MemoryWatch, chaos: Chaos, minutes: float) -> None:
    on_time, catch_ups = lateness_ms(system)
    p99 = statistics.quantiles(on_time, n=100)[98] if len(on_time) >= 2 else float("nan")
    print(f"\nsoak of {minutes:g} min: {len(chaos.kills)} SIGKILLs ({', '.join(chaos.kills)}), "
          f"{chaos.store_restarts} store restart(s), "
          f"{len(chaos.restarted)} exits restarted ({', '.join(chaos.restarted)})")  # fmt: skip
    print(f"runs requested   {len(audit.requested)}")
    print(f"runs terminal    {audit.terminal}")
    print(f"runs lost        {len(audit.lost) + len(audit.not_terminal)} "
          f"({len(audit.lost)} without a record, {len(audit.not_terminal)} stuck not terminal)")  # fmt: skip
    print(f"runs doubled     {len(audit.doubled)}")
    print(f"lateness p99     {p99:.1f} ms over {len(on_time)} on-time slots ({catch_ups} catch-ups)")
    print(f"audit            {audit.summary()}")
    for problem in audit.problems():
        print(f"problem          {problem}")
    print("peak memory (RSS)")
    for service, kib in sorted(memory.by_service().items()):
        print(f"  {service:<16} {kib / 1024:7.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the system runs under faults")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault plan and the simulator")
    args = parser.parse_args()
    if not 0.5 <= args.minutes <= 24 * 60:
        parser.error("--minutes must be from 0.5 to 1440")
    work = Path(tempfile.mkdtemp(prefix="marketpulse-soak-"))  # kept: the logs explain any problem
    sys.exit(asyncio.run(soak(args.minutes, args.seed, work)))


if __name__ == "__main__":
    main()
