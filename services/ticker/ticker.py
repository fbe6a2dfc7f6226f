"""The ticker loop: turn each job's effective schedule into exactly one request per slot.

How "exactly one" holds across replicas and restarts:

1. Every replica computes the same latest due slot of a job (`shared.schedules`) and
   the same `run_id` (`scheduled_run_id(job, slot)`).
2. A replica *claims* the slot with a compare-and-set on the job's key in the `ticker`
   bucket (state `published: false`). Of replicas racing with the same revision exactly
   one wins; the others see the conflict, re-read, and stand down. The loop claims each
   slot `lead_s` (250 ms) *before* it is due (`prepare`), so that at the slot itself only
   the publish remains: tick lateness is one publish round trip, as for a plain
   scheduler. A slot not claimed ahead (start-up, catch-up, schedule change) is claimed
   at the slot.
3. The winner publishes the request with `Nats-Msg-Id: <run_id>` (a second guard:
   JetStream drops a repeat within `duplicate_window_s`), then confirms the claim
   (`published: true`) with another compare-and-set.
4. A crash between claim and confirm leaves an unconfirmed claim. Once it is older than
   `claim_grace_s`, and while it is still the job's latest slot, any replica (or the
   restarted ticker) publishes it again; the msg-id dedupe makes that harmless when the
   first publish did get through. Beyond the duplicate window the repeat could enqueue a
   second copy; the runtime's run record, keyed by `run_id`, still runs it once.

After downtime the job's catch-up policy decides (`plan_slot`): `latest` (the default)
fires the latest missed slot once, `skip` fires none, `all` fires each missed slot oldest
first (at most `catch_up_max_slots`, the newest). A job without state (first deployment,
new job) fires its latest slot at start-up.

The slot ledger (`ledger.py`, when the ticker is given one) records each slot it
requests, and each slot that gets no request with the reason: missed while no ticker ran,
beyond the catch-up bound, or while the job was paused (recorded as the ticker sees
them). Missed slots are recorded only by the replica whose claim won, so they follow the
one state every replica agrees on. Ledger writes never delay a request (see ledger.py).

Runtime changes: the `schedules` bucket is watched; an override (new schedule, pause,
resume) is applied as soon as its update arrives (milliseconds), and the loop is woken
to re-plan. A schedule change fires the new schedule's latest slot at once only if that
slot is newer than the job's last fired slot. Pausing stops firing; resuming writes a
`resumed_at` fence, so slots that fell while paused never fire and the next slot after
the resume fires as usual. Disabled jobs (`PULSE_JOBS__<JOB>__ENABLED=false`) never fire,
whatever the override says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from services.ticker.ledger import SlotLedger
from services.ticker.metrics import TickerMetrics
from services.ticker.slots import (
    MAX_GAP_SLOTS,
    Action,
    CatchUpRule,
    Missed,
    MissReason,
    SlotPlan,
    SlotState,
    gap_slots,
    plan_slot,
)
from services.ticker.state import SlotStore, Stored
from shared.names import JOBS
from shared.overrides import OverrideChange, OverrideWatch, resolve
from shared.requests import publish_request
from shared.schedules import EffectiveSchedule, ScheduleOverride, slots_between
from shared.schemas import CatchUp, JobRequest, Trigger, scheduled_run_id, utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)

#: Races lost in a row before a job's evaluation gives up until the next wake.
_MAX_CLAIM_TRIES = 3


class Clock(Protocol):
    """Where the ticker reads the time (a fake one in tests)."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        return utcnow()


@dataclass(frozen=True)
class Fired:
    """One request this replica published for a slot."""

    job: str
    slot: datetime
    run_id: str
    lateness_s: float
    catch_up: bool
    republished: bool
    duplicate: bool


def default_replica_id() -> str:
    """`<host>-<pid>`: unique per process, readable in the `ticker` bucket."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class TickerTiming:
    """The ticker's time constants (defaults suit production; tests shorten them)."""

    #: Age of an unconfirmed claim before it is published again.
    claim_grace_s: float = 2.0
    #: Longest sleep between evaluations (bounds the reaction to lost wake-ups).
    max_idle_s: float = 1.0
    #: How long before a slot `run()` claims it (`prepare`).
    lead_s: float = 0.25


class Ticker:
    """Publishes one request per schedule slot of every enabled, unpaused job.

    Drive it with `run()` (the service loop) or call `tick()` directly (tests): `tick()`
    evaluates every job once at `clock.now()`, never sleeps, and returns what it fired.

    Args:
        settings: job policies (default schedules, enabled), names, duplicate window.
        js: JetStream context; the streams and buckets must exist (`ensure_topology`).
        clock: time source.
        metrics: where lateness and counts go; a private registry when None.
        replica: this replica's name in claims.
        timing: grace, idle and lead times (`TickerTiming`).
        on_fired: called with each published slot (benchmarks, tests); must not block.
        ledger: where requested and missed slots are recorded (None: not recorded).
    """

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        *,
        clock: Clock | None = None,
        metrics: TickerMetrics | None = None,
        replica: str | None = None,
        timing: TickerTiming | None = None,
        on_fired: Callable[[Fired], None] | None = None,
        ledger: SlotLedger | None = None,
    ) -> None:
        timing = timing or TickerTiming()
        self._settings = settings
        self._names = settings.names
        self._js = js
        self._clock: Clock = clock or SystemClock()
        self.metrics = metrics or TickerMetrics()
        self.replica = replica or default_replica_id()
        self._claim_grace_s = timing.claim_grace_s
        self._max_idle_s = timing.max_idle_s
        self._on_fired = on_fired
        self.ledger = ledger
        #: Per paused job, the newest slot already recorded missed (reason paused).
        self._paused_upto: dict[str, datetime] = {}
        self._lead_s = timing.lead_s
        self._overrides: dict[str, ScheduleOverride] = {}
        self._effective: dict[str, EffectiveSchedule] = {job: self._resolve(job) for job in JOBS}
        self._cache: dict[str, Stored] = {}
        self._store: SlotStore | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watcher: OverrideWatch | None = None
        self._watch_timeout_s = 10.0
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self.ticks = 0
        self.fired_count = 0
        self.errors = 0
        self.started = False
        self._last_tick_ok = True

    def __repr__(self) -> str:
        return f"<Ticker replica={self.replica!r} ticks={self.ticks} fired={self.fired_count} errors={self.errors}>"

    # -- life cycle ----------------------------------------------------------------
    async def start(self, *, watch_timeout_s: float = 10.0) -> None:
        """Bind the buckets and load the current overrides before the first tick.

        Loading overrides first matters: a job paused at runtime must not fire at start-up
        just because the default schedule says so.
        """
        self._store = SlotStore(await self._js.key_value(self._names.ticker_bucket))
        self._watch_timeout_s = watch_timeout_s
        await self._start_watch()
        if self.ledger is not None:
            self.ledger.start()
        self.started = True
        log.info("ticker.started", extra={"event": "ticker.started", "worker": self.replica})

    async def stop(self) -> None:
        """Stop the loop and the watcher (a tick in progress finishes its publishes)."""
        self._stopping.set()
        self._changed.set()
        await self._stop_watch()
        if self.ledger is not None:
            await self.ledger.stop()

    async def run(self) -> None:
        """Tick at every slot until `stop()`; errors are logged and retried, never fatal."""
        if not self.started:
            await self.start()
        while not self._stopping.is_set():
            self._changed.clear()  # before the tick: a change during it wakes the next wait
            try:
                if self._watch_task is None or self._watch_task.done():
                    await self._start_watch()  # the watch died (e.g. NATS restarted): resume it
                await self.tick()
            except Exception:
                # Never die on one bad evaluation: the next one re-reads everything it needs.
                self._last_tick_ok = False
                self.errors += 1
                log.exception("ticker.tick_failed", extra={"event": "ticker.tick_failed"})
            await self._wait_and_prepare()

    async def _wait_and_prepare(self) -> None:
        """Sleep until the next slot, claiming it `lead_s` ahead; return early on a schedule change."""
        now = self._clock.now()
        upcoming = self._next_fire_time(now)
        if upcoming is None or (upcoming - now).total_seconds() - self._lead_s > self._max_idle_s:
            await self._sleep_until(now + timedelta(seconds=self._max_idle_s))
            return
        if await self._sleep_until(upcoming - timedelta(seconds=self._lead_s)):
            return  # the schedules changed: plan again
        try:
            await self.prepare(upcoming)
        except Exception:
            log.exception("ticker.prepare_failed", extra={"event": "ticker.prepare_failed"})
        await self._sleep_until(upcoming)

    async def _sleep_until(self, moment: datetime) -> bool:
        """Sleep until `moment` (clock time); True when woken early by a change or stop()."""
        delay = (moment - self._clock.now()).total_seconds()
        if delay <= 0:
            return self._changed.is_set()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    @property
    def running(self) -> bool:
        """Started, not stopping, and the last evaluation reached NATS (for /readyz)."""
        return self.started and not self._stopping.is_set() and self._last_tick_ok

    # -- schedules -------------------------------------------------------------------
    def schedule_of(self, job: str) -> EffectiveSchedule:
        """The schedule the ticker currently obeys for `job`."""
        return self._effective[job]

    def _resolve(self, job: str) -> EffectiveSchedule:
        return resolve(job, self._settings.jobs.for_job(job), self._overrides.get(job))

    def _apply(self, change: OverrideChange) -> None:
        job = change.job
        if job not in self._effective:
            log.warning("ticker.unknown_job_override", extra={"event": "ticker.unknown_job_override", "job": job})
            return
        if change.unreadable is not None:
            # Keep obeying what we had: a bad write must not stop or unleash a job.
            log.error("ticker.bad_override %s", change.unreadable, extra={"event": "ticker.bad_override", "job": job})
            return
        if change.override is None:
            self._overrides.pop(job, None)
        else:
            self._overrides[job] = change.override
        self._effective[job] = self._resolve(job)
        self._paused_upto.pop(job, None)  # a new pause records from the job's last slot again
        log.info(
            "ticker.schedule_changed %s", self._describe(job), extra={"event": "ticker.schedule_changed", "job": job}
        )
        self._changed.set()

    def _describe(self, job: str) -> str:
        eff = self._effective[job]
        state = "disabled" if not eff.enabled else "paused" if eff.paused else "active"
        return f"{eff.schedule.text!r} ({eff.source}, {state})"

    async def _start_watch(self) -> None:
        """Watch `schedules`: load every current override (replacing what we had), then follow changes."""
        await self._stop_watch()
        watch = await OverrideWatch.open(self._js, self._names, timeout_s=self._watch_timeout_s)
        # Rebuild from scratch: an override deleted while we were not watching must go too.
        self._overrides.clear()
        self._effective = {job: self._resolve(job) for job in JOBS}
        for change in watch.initial.values():
            self._apply(change)
        self._watcher = watch
        self._watch_task = asyncio.create_task(self._watch(watch), name="ticker-watch")

    async def _stop_watch(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch_task
            self._watch_task = None
        if self._watcher is not None:
            with contextlib.suppress(Exception):  # the subscription may already be gone with the connection
                await self._watcher.stop()
            self._watcher = None

    async def _watch(self, watch: OverrideWatch) -> None:
        try:
            async for change in watch.changes():
                self._apply(change)
        except Exception:
            log.exception("ticker.watch_failed", extra={"event": "ticker.watch_failed"})
            raise

    def _next_fire_time(self, now: datetime) -> datetime | None:
        fires = [when for eff in self._effective.values() if (when := eff.next_fire(now)) is not None]
        return min(fires, default=None)

    async def prepare(self, slot: datetime) -> int:
        """Claim `slot` ahead of time for every job whose next slot it is; returns how many were claimed.

        Called `lead_s` before the slot, so that at the slot only the publish remains. A
        claim lost to another replica is fine: that replica publishes. A claim whose
        claimer dies is published by the others after `claim_grace_s` (see `plan_slot`).
        """
        if self._store is None:
            raise RuntimeError("Ticker.start() must run before prepare()")
        now = self._clock.now()
        jobs = [job for job, eff in self._effective.items() if eff.next_fire(now) == slot]
        claimed = await asyncio.gather(*(self._claim_ahead(job, slot, now) for job in jobs))
        return sum(claimed)

    async def _claim_ahead(self, job: str, slot: datetime, now: datetime) -> bool:
        assert self._store is not None
        stored = self._cache.get(job) or await self._store.read(job)
        if stored.state is not None and (stored.state.slot >= slot or not stored.state.published):
            # Never claim over an unconfirmed claim: that slot is published first (plan_slot).
            return False
        eff = self._effective[job]
        if stored.state is not None and gap_slots(eff.schedule, stored.state.slot, slot, eff.resumed_at):
            # Slots before this one are not settled yet (a catch-up under way, here or in
            # another replica): claiming ahead would move the job's state past them, and
            # they would be neither requested nor recorded missed. The tick plans them.
            return False
        claim = SlotState(
            slot=slot, run_id=scheduled_run_id(job, slot), published=False, claimed_at=now, claimed_by=self.replica
        )
        revision = await self._store.write(job, claim, stored.revision)
        if revision is None:
            self._cache.pop(job, None)  # someone else's claim: read it at the slot
            return False
        self._cache[job] = Stored(claim, revision)
        return True

    # -- one evaluation ----------------------------------------------------------------
    async def tick(self) -> list[Fired]:
        """Evaluate every job once at `clock.now()` and publish what is due."""
        if self._store is None:
            raise RuntimeError("Ticker.start() must run before tick()")
        now = self._clock.now()
        self.ticks += 1
        errors_before = self.errors
        results = await asyncio.gather(*(self._tick_job(job, now) for job in self._effective))
        self._last_tick_ok = self.errors == errors_before
        fired = [item for batch in results for item in batch]
        if self.ledger is not None:
            self.metrics.ledger_pending.set(self.ledger.pending)
        self.fired_count += len(fired)
        if self._on_fired is not None:
            for item in fired:
                self._on_fired(item)
        return fired

    async def _tick_job(self, job: str, now: datetime) -> list[Fired]:
        eff = self._effective[job]
        due = eff.due_slot(now)
        fired: list[Fired] = []
        try:
            if due is None:
                await self._record_paused(job, eff, now)
                return fired
            # One slot per plan; catch-up `all` (or an older unconfirmed claim) leaves the
            # due slot for the next plan, so plan again until the due slot is settled.
            for _ in range(self._settings.catch_up_max_slots + 1):
                one = await self._fire_due(job, eff, due, now)
                if one is None:
                    break
                fired.append(one)
                if one.slot >= due:
                    break
        except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as exc:
            self._cache.pop(job, None)  # re-read the truth next time
            self.errors += 1
            self.metrics.errors.labels(job=job).inc()
            log.warning("ticker.error %s: %s", type(exc).__name__, exc, extra={"event": "ticker.error", "job": job})
        return fired

    async def _record_paused(self, job: str, eff: EffectiveSchedule, now: datetime) -> None:
        """Record the slots of a paused job as missed (reason paused), each once, as they pass."""
        if self.ledger is None or not eff.enabled or not eff.paused:
            return
        assert self._store is not None
        latest = eff.schedule.previous_slot(now)
        after = self._paused_upto.get(job)
        if after is not None and latest <= after:
            return
        if after is None:
            stored = self._cache.get(job) or await self._store.read(job)
            # From the job's last settled slot; a job that never fired: its latest slot only.
            after = stored.state.slot if stored.state is not None else latest - timedelta(microseconds=1)
        slots = slots_between(eff.schedule, after, now, limit=MAX_GAP_SLOTS)
        missed = [Missed(slot, MissReason.PAUSED) for slot in slots]
        self.ledger.missed(job, missed, at=now, policy=eff.catch_up)
        self._paused_upto[job] = latest

    async def _fire_due(self, job: str, eff: EffectiveSchedule, due: datetime, now: datetime) -> Fired | None:
        assert self._store is not None
        stored = self._cache.get(job)
        if stored is None:
            stored = await self._store.read(job)
        for _ in range(_MAX_CLAIM_TRIES):
            plan = plan_slot(
                eff.schedule,
                due,
                stored.state,
                now,
                claim_grace_s=self._claim_grace_s,
                replica=self.replica,
                catch_up=CatchUpRule(eff.catch_up, self._settings.catch_up_max_slots, eff.resumed_at),
            )
            if plan.action is Action.IDLE:
                self._cache[job] = stored
                return None
            if plan.action is Action.REPUBLISH and stored is self._cache.get(job):
                # Our cached view may be stale (the claimer may have confirmed since): re-read once.
                stored = await self._store.read(job)
                continue
            if plan.action is Action.SKIP:
                if await self._settle_missed(job, plan, stored, now, eff.catch_up):
                    return None
            else:
                fired = await self._claim_and_publish(job, plan, stored, now, eff.catch_up)
                if fired is not None:
                    return fired
            stored = await self._store.read(job)  # lost the race or stale cache: look again
            self.metrics.lost_claims.labels(job=job).inc()
        self._cache[job] = stored
        return None

    async def _settle_missed(self, job: str, plan: SlotPlan, stored: Stored, now: datetime, policy: CatchUp) -> bool:
        """Catch-up policy skip: claim the due slot as settled without a request; False when the claim was lost."""
        assert self._store is not None
        assert plan.slot is not None
        settled = SlotState(
            slot=plan.slot,
            run_id=scheduled_run_id(job, plan.slot),
            published=True,
            missed=True,
            claimed_at=now,
            claimed_by=self.replica,
        )
        revision = await self._store.write(job, settled, stored.revision)
        if revision is None:
            return False
        self._cache[job] = Stored(settled, revision)
        self._record_missed(job, plan, now, policy)
        self.metrics.missed.labels(job=job).inc(len(plan.missed))
        log.info(
            "ticker.missed %s: %d slots left unrequested (catch-up policy skip)",
            job,
            len(plan.missed),
            extra={"event": "ticker.missed", "job": job},
        )
        return True

    def _record_missed(self, job: str, plan: SlotPlan, now: datetime, policy: CatchUp) -> None:
        if self.ledger is not None and plan.missed:
            self.ledger.missed(job, plan.missed, at=now, policy=policy)

    async def _claim_and_publish(
        self, job: str, plan: SlotPlan, stored: Stored, now: datetime, policy: CatchUp
    ) -> Fired | None:
        assert self._store is not None
        assert plan.slot is not None
        slot = plan.slot
        run_id = scheduled_run_id(job, slot)
        republish = plan.action is Action.REPUBLISH
        if plan.action is Action.PUBLISH and stored.state is not None:
            claim, revision = stored.state, stored.revision  # claimed ahead by `prepare`
        else:
            claim = SlotState(slot=slot, run_id=run_id, published=False, claimed_at=now, claimed_by=self.replica)
            if republish and stored.state is not None:
                claim = stored.state.model_copy(update={"claimed_at": now, "claimed_by": self.replica})
            # Re-claiming an unconfirmed slot is a CAS too, so two replicas never both repeat it.
            revision = await self._store.write(job, claim, stored.revision)
        if revision is None:
            return None
        # The claim is won: this replica's plan is the one that counts; record its gap.
        self._record_missed(job, plan, now, policy)
        if plan.missed:
            self.metrics.missed.labels(job=job).inc(len(plan.missed))
        request = JobRequest(
            run_id=run_id,
            job=job,
            trigger=Trigger.SCHEDULE,
            scheduled_for=slot,
            requested_by=f"ticker/{self.replica}",
        )
        ack = await publish_request(self._js, self._names, request)
        published_at = self._clock.now()
        lateness_s = (published_at - slot).total_seconds()
        confirmed = claim.model_copy(update={"published": True})
        new_revision = await self._store.write(job, confirmed, revision)
        self._cache[job] = Stored(confirmed, new_revision) if new_revision is not None else Stored(claim, revision)
        kind = "catch_up" if plan.catch_up else "slot"
        self.metrics.lateness.labels(job=job, kind=kind).observe(max(0.0, lateness_s))
        if not ack.duplicate:  # a repeat JetStream dropped is not a second request
            self.metrics.fired.labels(job=job, kind=kind).inc()
        self.metrics.last_slot.labels(job=job).set(slot.timestamp())
        if republish:
            self.metrics.republished.labels(job=job).inc()
        if self.ledger is not None:
            self.ledger.requested(job, slot, at=published_at, catch_up=plan.catch_up)
        log.info(
            "ticker.fired %s late %.1f ms%s",
            run_id,
            lateness_s * 1000,
            " (catch-up)" if plan.catch_up else "",
            extra={"event": "ticker.fired", "job": job, "run_id": run_id, "duration_ms": round(lateness_s * 1000)},
        )
        return Fired(
            job=job,
            slot=slot,
            run_id=run_id,
            lateness_s=lateness_s,
            catch_up=plan.catch_up,
            republished=republish,
            duplicate=bool(ack.duplicate),
        )
