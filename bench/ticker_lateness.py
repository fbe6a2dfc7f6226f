"""Tick lateness of the ticker beside APScheduler 3's interval trigger, in the same run.

    .venv/bin/python bench/ticker_lateness.py            # 300 ticks each (about 5 minutes)
    .venv/bin/python bench/ticker_lateness.py --ticks 60

Lateness = the time the publish was acknowledged by JetStream minus the slot time.
Both schedulers publish the same `JobRequest` with `publish_request` (Nats-Msg-Id =
run_id) to a private nats-server started for the run, on a 1-second schedule:

- marketpulse: the real `Ticker` (claim by compare-and-set in the `ticker` KV bucket,
  publish, then confirm: two more KV round trips than APScheduler does; the confirm is
  after the lateness is measured, the claim before);
- baseline: APScheduler 3 `AsyncIOScheduler` + `IntervalTrigger(seconds=1)`, whose job
  only publishes.

Both share one event loop and run at the same time, half a second out of phase (the
ticker's slots are whole seconds, APScheduler's start at .5 s), so neither delays the
other and both see the same machine load. Target: p99 < 20 ms and not behind APScheduler.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

from services.ticker.ticker import Fired, Ticker
from shared.bus import connect_nats, ensure_topology
from shared.localstack import start_nats
from shared.names import JOBS
from shared.requests import publish_request
from shared.schemas import JobRequest, Trigger, scheduled_run_id, utcnow
from shared.settings import JobPolicies, load_settings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def measure(ticks: int, nats_url: str) -> tuple[list[float], list[float]]:
    defaults = JobPolicies()
    policies = {
        job: defaults.for_job(job).model_copy(update={"schedule": "every 1s", "enabled": job == "whale_sync"})
        for job in JOBS
    }
    settings = load_settings(nats_url=nats_url, namespace="bench", jobs=JobPolicies(**policies))
    client = await connect_nats(settings, name="bench")
    js = client.jetstream()
    await ensure_topology(js, settings, jobs=())
    names = settings.names

    ours: list[float] = []
    theirs: list[float] = []
    done = asyncio.Event()

    def on_fired(fired: Fired) -> None:
        if not fired.catch_up:  # the start-up slot is a catch-up, late by design
            ours.append(fired.lateness_s)
        if len(ours) >= ticks and len(theirs) >= ticks:
            done.set()

    async def aps_publish() -> None:
        now = utcnow()
        slot = now.replace(microsecond=500_000) if now.microsecond >= 500_000 else (
            now.replace(microsecond=500_000) - timedelta(seconds=1))  # fmt: skip
        request = JobRequest(
            run_id=scheduled_run_id("stats", slot.replace(microsecond=0)) + ".5",
            job="stats",
            trigger=Trigger.SCHEDULE,
            scheduled_for=slot,
            requested_by="apscheduler",
        )
        await publish_request(js, names, request)
        if len(theirs) < ticks:
            theirs.append((utcnow() - slot).total_seconds())
        if len(ours) >= ticks and len(theirs) >= ticks:
            done.set()

    ticker = Ticker(settings, js, on_fired=on_fired)
    await ticker.start()
    ticker_task = asyncio.create_task(ticker.run())
    start = datetime.now(UTC).replace(microsecond=500_000) + timedelta(seconds=1)
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(aps_publish, IntervalTrigger(seconds=1, start_date=start, timezone=UTC),
                      max_instances=1, misfire_grace_time=None, coalesce=True)  # fmt: skip
    scheduler.start()
    try:
        await asyncio.wait_for(done.wait(), timeout=ticks * 1.5 + 30)
    finally:
        scheduler.shutdown(wait=False)
        await ticker.stop()
        await asyncio.wait_for(ticker_task, timeout=5)
        await client.close()
    return ours[:ticks], theirs[:ticks]


def row(name: str, values: list[float], baseline: list[float]) -> str:
    cells = [name, str(len(values))]
    for q in (50, 90, 99):
        cells.append(f"{percentile(values, q) * 1000:8.2f}")
    cells.append(f"{max(values) * 1000:8.2f}")
    cells.append(f"{statistics.mean(values) * 1000:8.2f}")
    cells.append(f"{percentile(values, 99) / percentile(baseline, 99):6.2f}x")
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=300, help="ticks measured per scheduler (default 300)")
    parser.add_argument("--nats-url", default=None, help="use this server instead of starting one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ticker-") as folder:
        server = None
        url = args.nats_url
        if url is None:
            server, port = start_nats(Path(folder))
            url = f"nats://127.0.0.1:{port}"
        try:
            ours, theirs = asyncio.run(measure(args.ticks, url))
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=10)

    print(f"tick lateness, 1-second schedule, {args.ticks} ticks each (ms; ratio = p99 / APScheduler p99)")
    print("scheduler                 | n   |   p50    |   p90    |   p99    |   max    |   mean   | p99 ratio")
    print(row("APScheduler 3 (baseline)", theirs, theirs))
    print(row("marketpulse ticker      ", ours, theirs))
    p99 = percentile(ours, 99) * 1000
    verdict = "meets" if p99 < 20 and percentile(ours, 99) <= percentile(theirs, 99) else "MISSES"
    print(f"target p99 < 20 ms and not behind APScheduler: {verdict} (ticker p99 {p99:.2f} ms)")


if __name__ == "__main__":
    main()
