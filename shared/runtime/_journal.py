"""The only code that writes `steps`, the step journal of workflow runs, and its one reader.

One document per step, `_id` = `<run_id>:<step name>`. A step is written `running`
when it starts and `completed` (with its result) or `failed` when it ends, and the end
is written before the workflow asks for its next step, so a resumed attempt finds every
finished step. Each write is a single-document update by `_id` (atomic on MongoDB).

`read_steps` is the read model the CLI and the dashboard share.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.errors import bounded
from shared.names import Collections
from shared.schemas import StepRecord, StepStatus, utcnow
from shared.store import Database

#: Longest error text kept per step.
_STEP_ERROR_CHARS = 500


def step_id(run_id: str, name: str) -> str:
    """The journal key of step `name` of run `run_id`."""
    return f"{run_id}:{name}"


async def read_steps(db: Database, run_id: str) -> list[StepRecord]:
    """The recorded steps of `run_id`, in the order the workflow asked for them."""
    docs = await db[Collections.STEPS].find({"run_id": run_id}).sort("index", 1).to_list(None)
    return [StepRecord.model_validate(doc) for doc in docs]


async def record_step_started(db: Database, run_id: str, name: str, index: int) -> datetime:
    """Mark step `name` (place `index` in the run's order) as running now; return the start time."""
    started_at = utcnow()
    await db[Collections.STEPS].update_one(
        {"_id": step_id(run_id, name)},
        {
            "$set": {"status": StepStatus.RUNNING.value, "started_at": started_at, "ended_at": None},
            "$setOnInsert": {"run_id": run_id, "name": name, "index": index, "tries": 0, "result_bytes": 0},
        },
        upsert=True,
    )
    return started_at


async def record_step_completed(
    db: Database, run_id: str, name: str, *, tries: int, result_json: str, result_bytes: int
) -> None:
    """Step `name` succeeded after `tries` tries in this attempt; keep its result."""
    await db[Collections.STEPS].update_one(
        {"_id": step_id(run_id, name)},
        {
            "$set": {
                "status": StepStatus.COMPLETED.value,
                "ended_at": utcnow(),
                "error": None,
                "result_json": result_json,
                "result_bytes": result_bytes,
            },
            "$inc": {"tries": tries},
        },
    )


async def record_step_failed(db: Database, run_id: str, name: str, *, tries: int, error: str) -> None:
    """Step `name` failed for this attempt after `tries` tries."""
    update: dict[str, Any] = {
        "$set": {"status": StepStatus.FAILED.value, "ended_at": utcnow(), "error": bounded(error, _STEP_ERROR_CHARS)},
        "$inc": {"tries": tries},
    }
    await db[Collections.STEPS].update_one({"_id": step_id(run_id, name)}, update)


async def record_run_ended(db: Database, run_id: str, ended_at: datetime) -> None:
    """Stamp the steps of a run that reached its terminal status: the janitor's retention starts here.

    Steps carry no age of their own that is safe to expire: a workflow asleep for weeks
    still needs the journal of its first steps.
    """
    await db[Collections.STEPS].update_many({"run_id": run_id}, {"$set": {"run_ended_at": ended_at}})


async def record_step_suspended(
    db: Database, run_id: str, name: str, index: int, status: StepStatus, wake_at: datetime | None
) -> None:
    """Step `name` is a sleep or a wait that has begun: the run is suspended until `wake_at` (or a signal)."""
    await db[Collections.STEPS].update_one(
        {"_id": step_id(run_id, name)},
        {
            "$set": {"status": status.value, "wake_at": wake_at},
            "$setOnInsert": {
                "run_id": run_id,
                "name": name,
                "index": index,
                "tries": 0,
                "result_bytes": 0,
                "started_at": utcnow(),
            },
        },
        upsert=True,
    )


async def end_suspension(
    db: Database,
    run_id: str,
    name: str,
    status: StepStatus,
    *,
    result_json: str,
    result_bytes: int,
    timed_out: bool = False,
) -> bool:
    """End the sleep or wait `name` (now in `status`) with its result; False when it is not (any more).

    Conditional on the step's status, so a signal and a wait's timeout racing to end one
    wait produce one outcome (single-document atomicity).
    """
    ended = await db[Collections.STEPS].find_one_and_update(
        {"_id": step_id(run_id, name), "status": status.value},
        {
            "$set": {
                "status": StepStatus.COMPLETED.value,
                "ended_at": utcnow(),
                "result_json": result_json,
                "result_bytes": result_bytes,
                "timed_out": timed_out,
            },
        },
    )
    return ended is not None


async def get_step(db: Database, run_id: str, name: str) -> StepRecord | None:
    """The journal's record of step `name` of `run_id`, or None."""
    doc = await db[Collections.STEPS].find_one({"_id": step_id(run_id, name)})
    return StepRecord.model_validate(doc) if doc else None
