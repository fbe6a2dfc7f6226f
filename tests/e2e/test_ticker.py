"""The ticker as real processes: two replicas, SIGKILL and restart, full-system restart with delayed runs.

JOBS is a work queue and no job consumer runs here: every request the tickers publish
stays in the stream, and the tests read them by sequence without consuming.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from shared.bus import connect_nats, ensure_topology
from shared.delayed import cancel_delayed, list_delayed, schedule_delayed
from shared.localstack import start_nats
from shared.names import JOBS
from shared.schemas import JobRequest, Trigger, new_run_id, utcnow
from shared.settings import Settings
from tests.conftest import settings_env
from tests.helpers import wait_for
from tests.integration.test_ticker import read_requests

ROOT = Path(__file__).resolve().parents[2]
SECOND = timedelta(seconds=1)


def ticker_env(settings: Settings, schedules: dict[str, str]) -> dict[str, str]:
    """Environment of a ticker process: the test's settings, only `schedules`' jobs enabled."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PULSE_")}
    env.update(settings_env(settings))
    env["PULSE_LOG_JSON"] = "true"
    for job in JOBS:
        env[f"PULSE_JOBS__{job.upper()}__ENABLED"] = "true" if job in schedules else "false"
        if job in schedules:
            env[f"PULSE_JOBS__{job.upper()}__SCHEDULE"] = schedules[job]
    return env


@dataclass
class TickerProcess:
    """A ticker subprocess and its log file."""

    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process and wait for it (SIGKILL after 10 s); returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    async def wait_serving(self) -> None:
        """Wait until it ticks and serves HTTP (from then on it handles SIGTERM itself)."""

        async def serving() -> bool:
            assert self.process.poll() is None, self.log_text()[-2000:]
            return "service.http" in self.log_text()

        await wait_for(serving, timeout_s=30, interval_s=0.1, what=f"the ticker to serve ({self.log})")

    @property
    def http_port(self) -> int:
        """The port its /healthz, /readyz and /metrics are served on (from its log)."""
        match = re.search(r"serving /healthz /readyz /metrics on port (\d+)", self.log_text())
        assert match, "the ticker has not logged its HTTP port yet"
        return int(match.group(1))


@pytest.fixture
def start_ticker(tmp_path: Path) -> Iterator[Callable[..., TickerProcess]]:
    """Factory of ticker processes; any still running at the end are stopped (then killed)."""
    started: list[TickerProcess] = []

    def _start(env: dict[str, str], name: str = "ticker") -> TickerProcess:
        path = tmp_path / f"{name}-{len(started)}.log"
        with path.open("ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "services.ticker"], cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        started.append(TickerProcess(process, path))
        return started[-1]

    yield _start
    for ticker in started:
        ticker.stop()


@pytest.fixture
async def bare_js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    """JetStream with streams and buckets but no job consumer (nothing consumes JOBS)."""
    client = await connect_nats(settings, name="tests")
    js = client.jetstream()
    await ensure_topology(js, settings, jobs=())
    yield js
    await client.close()


async def slots_of(js: JetStreamContext, settings: Settings, job: str) -> list[datetime]:
    return sorted(request.scheduled_for for request in await read_requests(js, settings, job))


def gaps(slots: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Pairs of neighbouring slots further apart than one second."""
    return [(a, b) for a, b in itertools.pairwise(slots) if b - a != SECOND]


async def test_two_replicas_publish_every_slot_exactly_once(
    settings: Settings, bare_js: JetStreamContext, start_ticker: Any
) -> None:
    env = ticker_env(settings, {"whale_sync": "every 1s"})
    replicas = [start_ticker(env, "a"), start_ticker(env, "b")]
    for replica in replicas:
        await replica.wait_serving()
    both_up = utcnow()

    async def twenty_seconds_of_slots() -> bool:
        slots = await slots_of(bare_js, settings, "whale_sync")
        return bool(slots) and slots[-1] - both_up >= timedelta(seconds=20)

    await wait_for(twenty_seconds_of_slots, timeout_s=60, interval_s=0.5, what="20 s of slots")
    scrape_started = utcnow()
    async with httpx.AsyncClient(timeout=5) as http:
        fired_total = 0.0
        lateness_samples = 0.0
        for replica in replicas:
            base = f"http://127.0.0.1:{replica.http_port}"
            assert (await http.get(f"{base}/readyz")).status_code == 200
            metrics = (await http.get(f"{base}/metrics")).text
            # Either replica may win every claim under load: each exposes the metric, and
            # between them they sampled the lateness of the slots they fired.
            assert "# TYPE pulse_ticker_lateness_seconds histogram" in metrics
            lateness_samples += sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith('pulse_ticker_lateness_seconds_count{job="whale_sync"')
            )
            fired_total += sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith('pulse_ticker_slots_fired_total{job="whale_sync"')
            )
    scrape_ended = utcnow()
    assert [replica.stop() for replica in replicas] == [0, 0]

    requests = await read_requests(bare_js, settings, "whale_sync")
    run_ids = [request.run_id for request in requests]
    assert len(run_ids) == len(set(run_ids)), "a slot was requested twice"
    slots = sorted(request.scheduled_for for request in requests)
    assert gaps(slots) == [], "a slot is missing"
    # The replicas' counters add up to the requests published while they were scraped: at
    # least those created before the scrape (less one in flight per replica, counted just
    # after its publish), at most those created before it ended. Replicas go on firing until
    # they are stopped, which takes a while under load, so the later requests do not count.
    before_scrape = sum(1 for request in requests if request.requested_at <= scrape_started)
    by_scrape_end = sum(1 for request in requests if request.requested_at <= scrape_ended)
    assert before_scrape - len(replicas) <= fired_total <= by_scrape_end
    assert lateness_samples >= fired_total - 2
    assert all(request.trigger is Trigger.SCHEDULE for request in requests)


async def test_killed_ticker_fires_one_catch_up_slot_on_restart(
    settings: Settings, bare_js: JetStreamContext, start_ticker: Any
) -> None:
    env = ticker_env(settings, {"whale_sync": "every 1s"})
    first = start_ticker(env)

    async def three_slots() -> bool:
        return len(await slots_of(bare_js, settings, "whale_sync")) >= 3

    await wait_for(three_slots, timeout_s=30, what="three slots before the kill")
    first.stop(signal.SIGKILL)
    killed_at = utcnow()
    before = await slots_of(bare_js, settings, "whale_sync")

    async def four_slots_passed() -> bool:  # the ticker is down: time is all there is to wait for
        return utcnow() >= killed_at + timedelta(seconds=4)

    await wait_for(four_slots_passed, timeout_s=10, what="four slots of downtime")
    restarted_at = utcnow()
    start_ticker(env)

    async def ticking_again() -> list[datetime]:
        after = [slot for slot in await slots_of(bare_js, settings, "whale_sync") if slot > before[-1]]
        return after if len(after) >= 4 else []

    after = await wait_for(ticking_again, timeout_s=30, what="ticks after the restart")
    assert gaps(before) == []
    # One catch-up request: the latest slot at restart; the slots missed while down never fire.
    assert after[0] >= restarted_at.replace(microsecond=0) - SECOND
    assert after[0] - before[-1] >= timedelta(seconds=4)
    assert gaps(after) == []  # then normal ticking


async def test_delayed_run_survives_a_restart_of_every_process(
    make_settings: Any, tmp_path: Path, start_ticker: Any
) -> None:
    nats_server, port = start_nats(tmp_path / "own")
    try:
        settings = make_settings(nats_url=f"nats://127.0.0.1:{port}")
        env = ticker_env(settings, {})
        ticker = start_ticker(env)
        await ticker.wait_serving()
        client = await connect_nats(settings, name="tests")
        js = client.jetstream()
        await ensure_topology(js, settings, jobs=())
        at = utcnow() + timedelta(seconds=8)
        kept, canceled = delayed("stats"), delayed("cleanup")
        await schedule_delayed(js, settings.names, kept, at)
        await schedule_delayed(js, settings.names, canceled, at)
        assert await cancel_delayed(js, settings.names, canceled.run_id)
        await client.close()

        # Every process goes down: the ticker, then nats-server; then both come back.
        assert ticker.stop() == 0
        nats_server.terminate()
        nats_server.wait(timeout=10)
        nats_server, _ = start_nats(tmp_path / "own", port)
        start_ticker(env)
        client = await connect_nats(settings, name="tests")
        js = client.jetstream()
        if utcnow() < at - SECOND:
            assert [r.run_id for r, _ in await list_delayed(js, settings.names)] == [kept.run_id]

        fired = await wait_for(lambda: read_requests(js, settings), timeout_s=20, what="the delayed run")
        assert utcnow() >= at.replace(microsecond=0)
        assert [request.run_id for request in fired] == [kept.run_id]  # once; the canceled one never
        assert await list_delayed(js, settings.names) == []
        await client.close()
    finally:
        nats_server.terminate()
        nats_server.wait(timeout=10)


def delayed(job: str) -> JobRequest:
    return JobRequest(run_id=new_run_id(job, Trigger.DELAYED), job=job, trigger=Trigger.DELAYED, scheduled_for=utcnow())


async def pulse(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`pulse ARGS` as a separate process, with the test's environment."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PULSE_")}
    env.update(settings_env(settings))
    return await asyncio.to_thread(
        subprocess.run, [str(Path(sys.executable).parent / "pulse"), *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


async def test_cli_changes_apply_to_a_running_ticker_process(
    settings: Settings, bare_js: JetStreamContext, start_ticker: Any
) -> None:
    ticker = start_ticker(ticker_env(settings, {"whale_sync": "daily at 02:00"}))
    await ticker.wait_serving()

    async def count() -> int:
        return len(await read_requests(bare_js, settings, "whale_sync"))

    await wait_for(count, timeout_s=10, what="the start-up request")  # first seen: today's 02:00 fires once
    changed = await pulse(settings, "schedule", "set", "whale_sync", "--every", "1s")
    assert changed.returncode == 0, changed.stderr
    assert "every 1s" in changed.stdout

    async def ticking(at_least: int) -> bool:
        return await count() >= at_least

    await wait_for(lambda: ticking(4), timeout_s=15, what="the new schedule applied")
    paused = await pulse(settings, "schedule", "pause", "whale_sync")
    assert paused.returncode == 0, paused.stderr
    settled = utcnow() + timedelta(seconds=1.5)  # a publish in flight at the pause may still land

    async def past(moment: datetime) -> bool:
        return utcnow() >= moment

    await wait_for(lambda: past(settled), timeout_s=5, what="the pause to settle")
    at_pause = await count()
    await wait_for(lambda: past(settled + timedelta(seconds=3)), timeout_s=10, what="three paused slots")
    assert await count() == at_pause, "a paused job fired"

    resumed = await pulse(settings, "schedule", "resume", "whale_sync")
    assert resumed.returncode == 0, resumed.stderr
    await wait_for(lambda: ticking(at_pause + 2), timeout_s=15, what="ticking after resume")
    assert ticker.process.poll() is None  # the same process throughout: no restart
