"""The watchdog: end `timed_out` the runs whose worker stopped heartbeating (runtime-owned).

A running handler refreshes `heartbeat_at` every `heartbeat_interval_s` (the runtime
does it, and at each `ctx.checkpoint`). A run still `running` whose last heartbeat is
older than `STALE_HEARTBEATS` intervals has lost its worker (killed, partitioned, hung
in a blocking call): the watchdog ends it through the one run-recording path
(`finish_run`) and publishes its RunEvent. A run that is slow but still heartbeating is
never touched, however long it has been running: only the heartbeat counts.

How long a run may stay silent depends on the runtime's heartbeat and on JetStream's
redelivery (the ack wait), so the rule and the run-ending live here: the janitor's
`watchdog` job calls `time_out_silent_runs(ctx)`. `time_out_dead_runs` takes its two
effects (`finish` and `publish`) as arguments, so tests can race it against a worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.names import Collections
from shared.runtime._context import JobContext
from shared.runtime._events import publish_run_event
from shared.runtime._journal import record_run_ended
from shared.runtime._records import finish_run
from shared.schemas import RunRecord, RunStatus, utcnow
from shared.store import Database, Document

#: A run is presumed dead after this many missed heartbeat intervals. Three leaves room
#: for a busy event loop or a slow database write without false alarms.
STALE_HEARTBEATS = 3
#: Runs ended per watchdog run; the rest wait for the next minute (bounded work per run).
MAX_RUNS_PER_PASS = 500
TIMEOUT_REASON = "no_heartbeat"

#: `finish_run(db, run_id, status, *, error=..., reason=...)` of shared.runtime._records.
Finish = Callable[..., Awaitable[RunRecord | None]]
#: Publishes the RunEvent of a record just ended.
Publish = Callable[[RunRecord], Awaitable[None]]


@dataclass(frozen=True)
class WatchdogResult:
    """What one pass did: runs ended `timed_out`, and stale runs someone else ended first."""

    timed_out: list[str]
    already_ended: int

    def summary(self) -> dict[str, int | list[str]]:
        """A small dict for the run record and the RunEvent (ids capped at 20)."""
        return {"timed_out": len(self.timed_out), "runs": self.timed_out[:20], "already_ended": self.already_ended}


def silence_limit_s(heartbeat_interval_s: float, redelivery_after_s: float | None = None) -> float:
    """How long a run may stay silent before the watchdog ends it.

    Three heartbeat intervals, but never less than the JetStream redelivery of the run's
    request (the ack wait) plus one interval: a dead worker's run is first resumed by
    another worker through redelivery (crash safety); the watchdog only ends runs that
    no worker picked up again.

    Args:
        heartbeat_interval_s: the configured heartbeat interval.
        redelivery_after_s: the consumers' ack wait; None when no redelivery can come.
    """
    if heartbeat_interval_s <= 0:
        raise ValueError(
            f"heartbeat_interval_s must be positive (got {heartbeat_interval_s}); set PULSE_HEARTBEAT_INTERVAL_S"
        )
    limit = STALE_HEARTBEATS * heartbeat_interval_s
    if redelivery_after_s is not None:
        limit = max(limit, redelivery_after_s + heartbeat_interval_s)
    return limit


def stale_cutoff(now: datetime, heartbeat_interval_s: float, redelivery_after_s: float | None = None) -> datetime:
    """Heartbeats strictly older than this mean the run's worker is gone."""
    return now - timedelta(seconds=silence_limit_s(heartbeat_interval_s, redelivery_after_s))


def stale_filter(cutoff: datetime) -> Document:
    """Runs still `running` whose heartbeat (or start, if none was ever recorded) is before `cutoff`."""
    return {
        "status": RunStatus.RUNNING.value,
        "$or": [
            {"heartbeat_at": {"$lt": cutoff}},
            # Defensive: a record that never got a heartbeat is judged by its start.
            {"heartbeat_at": None, "started_at": {"$lt": cutoff}},
        ],
    }


async def time_out_dead_runs(
    db: Database,
    *,
    now: datetime,
    heartbeat_interval_s: float,
    finish: Finish,
    publish: Publish,
    redelivery_after_s: float | None = None,
    limit: int = MAX_RUNS_PER_PASS,
) -> WatchdogResult:
    """End `timed_out` every running run whose heartbeat stopped, with a RunEvent each.

    Args:
        db: the marketpulse database.
        now: the reference time.
        heartbeat_interval_s: the configured heartbeat interval; runs silent for more
            than `STALE_HEARTBEATS` intervals are ended (see `silence_limit_s`).
        finish: `shared.runtime._records.finish_run`: the only writer of run outcomes;
            it returns None when the run was already terminal (someone else ended it).
        publish: publishes the RunEvent of a record `finish` just ended.
        redelivery_after_s: the consumers' ack wait: runs are left to JetStream's
            redelivery until it had its chance. None: do not wait for a redelivery.
        limit: at most this many runs are ended per call.

    Returns:
        The runs ended, and how many stale runs had been ended by someone else first.
    """
    silence_s = silence_limit_s(heartbeat_interval_s, redelivery_after_s)
    cutoff = now - timedelta(seconds=silence_s)
    cursor = db[Collections.RUNS].find(stale_filter(cutoff), {"_id": 1, "heartbeat_at": 1}).limit(limit)
    stale = [(str(doc["_id"]), doc.get("heartbeat_at")) async for doc in cursor]
    timed_out: list[str] = []
    already_ended = 0
    for run_id, last_beat in stale:
        since = last_beat.isoformat() if isinstance(last_beat, datetime) else "never"
        record = await finish(
            db,
            run_id,
            RunStatus.TIMED_OUT,
            error=(
                f"no heartbeat for more than {silence_s:g}s (last: {since}): the worker presumably died; "
                "the watchdog ended the run"
            ),
            reason=TIMEOUT_REASON,
        )
        if record is None:
            # The worker (or another watchdog replica) ended it first: that one owns the event.
            already_ended += 1
            continue
        await publish(record)
        timed_out.append(run_id)
    return WatchdogResult(timed_out=timed_out, already_ended=already_ended)


async def time_out_silent_runs(ctx: JobContext, *, limit: int = MAX_RUNS_PER_PASS) -> WatchdogResult:
    """End `timed_out` every run whose heartbeat stopped, with its RunEvent (the `watchdog` job).

    Runs are left to JetStream's redelivery first: only runs silent for longer than the
    ack wait plus a heartbeat (and at least `STALE_HEARTBEATS` heartbeats) are ended.
    """

    async def publish(record: RunRecord) -> None:
        await record_run_ended(ctx.db, record.run_id, record.ended_at or utcnow())  # a workflow's journal ages
        await publish_run_event(ctx.js, ctx.settings.names, record)

    return await time_out_dead_runs(
        ctx.db,
        now=utcnow(),
        heartbeat_interval_s=ctx.settings.heartbeat_interval_s,
        redelivery_after_s=ctx.settings.ack_wait_s,
        finish=finish_run,
        publish=publish,
        limit=limit,
    )
