"""Durable steps of a workflow run: `ctx.step.run(...)` and `ctx.step.all(...)`.

A workflow is a job whose handler calls its work through named steps. Each step's result
is recorded in the step journal (`journal.py`) before the next step starts, so a later
attempt of the same run (a redelivery after a crash, a retry) gets the recorded result
back instead of running the step again.

Rules the runtime enforces, each failing the run at once (a `PermanentError`, no retry):
- a step name is used once per run (`DuplicateStep`);
- the results of a run's steps stay under `step_results_max_bytes` in total
  (`StepResultTooLarge`);
- a resumed run asks for its steps in the order its journal holds (`StepOrderChanged`):
  the code outside steps must be deterministic.

Inside one attempt a failing step is tried again with its retry policy (the settings'
`step_retry` by default); a step out of tries raises `StepFailed`, a `RetryableError`,
so the attempt fails through the runtime's one retry decision.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticSerializationError

from shared.errors import (
    DuplicateStep,
    InvalidRequest,
    PermanentError,
    QuotaExhausted,
    RetryableError,
    RunCanceled,
    StepFailed,
    StepOrderChanged,
    StepResultTooLarge,
    WaitTimedOut,
    bounded,
)
from shared.logs import BoundLogger
from shared.runtime import _journal as journal
from shared.schemas import RunStatus, StepRecord, StepStatus, utcnow
from shared.settings import RetryPolicy
from shared.store import Database

T = TypeVar("T")


@dataclass(frozen=True)
class Suspension:
    """Why and until when a workflow's attempt ends without an outcome: a sleep or a wait."""

    status: RunStatus  # sleeping or waiting
    step: str
    wake_at: datetime | None
    waiting_for: str | None = None


class Suspended(BaseException):
    """Ends the attempt of a sleeping or waiting workflow; the runtime records it and wakes it later.

    A `BaseException` so that a handler's `except Exception` cannot swallow it.
    """

    def __init__(self, suspension: Suspension) -> None:
        super().__init__(f"step {suspension.step!r}: {suspension.status.value}")
        self.suspension = suspension


class Steps:
    """The step API of one attempt of a run (`ctx.step`).

    Step places are handed out when a step is asked for (`run` is a plain method that
    returns an awaitable), so `all(run("a", ...), run("b", ...))` gives the steps the
    places of their arguments whatever order they finish in.
    """

    def __init__(
        self,
        db: Database,
        run_id: str,
        *,
        retry: RetryPolicy,
        max_result_bytes: int,
        checkpoint: Callable[[], Awaitable[None]],
        scrub: Callable[[str], str],
        log: BoundLogger,
    ) -> None:
        self._db = db
        self._run_id = run_id
        self._retry = retry
        self._max_result_bytes = max_result_bytes
        self._checkpoint = checkpoint
        self._scrub = scrub
        self._log = log
        self._asked: list[str] = []
        self._journal: dict[str, StepRecord] | None = None
        self._loading: asyncio.Lock = asyncio.Lock()
        self._result_bytes = 0

    def __repr__(self) -> str:
        return f"Steps(run_id={self._run_id!r}, asked={len(self._asked)})"

    def run(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retry: RetryPolicy | bool = True,
        returns: type[T] | None = None,
    ) -> Coroutine[Any, Any, T]:
        """Run `await fn(*args)` once per run as the step `name`; return its (recorded) result.

        The result must be JSON: plain JSON values, or a pydantic model when `returns`
        names its type. The value returned is always the JSON decoded again (validated as
        `returns` when given), so the first attempt and a resumed one see the same value.

        Args:
            name: the step's name, unique within the run.
            fn: an async function doing the step's work; it must be safe to repeat if the
                worker dies while it runs (the step is then run again).
            args: positional arguments of `fn` (never secrets: they may be logged).
            retry: True for the settings' `step_retry`, a `RetryPolicy` of its own, or
                False for a single try.
            returns: the type to validate the result as; required for a pydantic model.

        Raises:
            DuplicateStep, StepOrderChanged, StepResultTooLarge: the run fails at once.
            StepFailed: every try failed; the attempt fails and the job's retry applies.
            PermanentError, InvalidRequest, RunCanceled: raised by `fn`, passed through.
        """
        index = self._reserve(name)
        policy = self._retry if retry is True else (RetryPolicy(max_attempts=1) if retry is False else retry)
        return self._run(name, index, fn, args, policy, returns)

    async def all(self, *steps: Awaitable[T]) -> list[T]:
        """Await several steps concurrently; their results in argument order.

        Every step runs to its end (each recorded on its own) before a failure is raised:
        the first failing step's error, in argument order.
        """
        results = await asyncio.gather(*steps, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results)  # type: ignore[arg-type]  # no exceptions left

    async def sleep(self, name: str, duration: timedelta | float) -> None:
        """Sleep durably for `duration` (a timedelta or seconds), counted from the first time the run got here.

        The attempt ends, the run shows `sleeping` with its `wake_at`, no worker holds it,
        and JetStream delivers the run's request again at the wake-up time (a message
        schedule, like a delayed run): it survives a restart of every process.
        """
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        await self.sleep_until(name, utcnow() + timedelta(seconds=seconds))

    async def sleep_until(self, name: str, when: datetime) -> None:
        """Sleep durably until `when` (timezone-aware); see `sleep`. A time past returns at once."""
        if when.tzinfo is None:
            raise InvalidRequest(f"step {name!r}: sleep_until needs a timezone-aware time (use UTC)")
        index = self._reserve(name)
        recorded = await self._recorded(name, index)
        if recorded is not None and recorded.status is StepStatus.COMPLETED:
            return
        wake_at = recorded.wake_at if recorded is not None and recorded.wake_at else when.astimezone(UTC)
        if recorded is None or recorded.status is not StepStatus.SLEEPING:
            await journal.record_step_suspended(self._db, self._run_id, name, index, StepStatus.SLEEPING, wake_at)
        if utcnow() >= wake_at:
            await journal.end_suspension(
                self._db, self._run_id, name, StepStatus.SLEEPING, result_json="null", result_bytes=0
            )
            return
        raise Suspended(Suspension(RunStatus.SLEEPING, name, wake_at))

    async def wait_for_event(
        self,
        name: str,
        *,
        timeout: timedelta | float | None,
        raise_on_timeout: bool = False,
        returns: type[T] | None = None,
    ) -> T | None:
        """Wait durably for the signal `name` of this run; return its JSON payload.

        The attempt ends and the run shows `waiting` (no worker holds it) until someone
        signals it (`pulse signal RUN_ID NAME [JSON]`, or a publish on the job's signal
        subject), or until the timeout.

        Args:
            name: the step's name, which is also the signal's name.
            timeout: how long to wait (timedelta or seconds), from the first time the run
                got here; None waits without limit.
            raise_on_timeout: raise `WaitTimedOut` (failing the run) instead of returning None.
            returns: the type to validate the payload as.

        Raises:
            WaitTimedOut: no signal in time and `raise_on_timeout`.
        """
        index = self._reserve(name)
        recorded = await self._recorded(name, index)
        if recorded is None or recorded.status not in (StepStatus.WAITING, StepStatus.COMPLETED):
            seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
            deadline = None if seconds is None else utcnow() + timedelta(seconds=seconds)
            await journal.record_step_suspended(self._db, self._run_id, name, index, StepStatus.WAITING, deadline)
            recorded = await journal.get_step(self._db, self._run_id, name)
            assert recorded is not None
        if recorded.status is StepStatus.WAITING and recorded.wake_at is not None and utcnow() >= recorded.wake_at:
            await journal.end_suspension(
                self._db, self._run_id, name, StepStatus.WAITING, result_json="null", result_bytes=0, timed_out=True
            )  # a signal may have won the race: read what the step ended with
            recorded = await journal.get_step(self._db, self._run_id, name)
            assert recorded is not None
        if recorded.status is StepStatus.COMPLETED:
            if not recorded.timed_out:
                return _decode(recorded.result_json or "null", returns)  # type: ignore[no-any-return]
            if raise_on_timeout:
                raise WaitTimedOut(f"step {name!r}: no signal {name!r} for run {self._run_id} before its timeout")
            return None
        raise Suspended(Suspension(RunStatus.WAITING, name, recorded.wake_at, waiting_for=name))

    def _reserve(self, name: str) -> int:
        """The step's place in the run's order; a name asked for twice fails the run."""
        if name in self._asked:
            raise DuplicateStep(
                f"step {name!r} is used twice in run {self._run_id}: give each step of a workflow its own name"
            )
        self._asked.append(name)
        return len(self._asked) - 1

    # -- one step ------------------------------------------------------------------------

    async def _run(
        self,
        name: str,
        index: int,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        policy: RetryPolicy,
        returns: type[Any] | None,
    ) -> Any:
        recorded = await self._recorded(name, index)
        if recorded is not None and recorded.status is StepStatus.COMPLETED and recorded.result_json is not None:
            return _decode(recorded.result_json, returns)
        await self._checkpoint()  # heartbeat, and stop here if the run was canceled
        await journal.record_step_started(self._db, self._run_id, name, index)
        tries = 0
        while True:
            tries += 1
            try:
                value = await fn(*args)
                break
            except (RunCanceled, QuotaExhausted, asyncio.CancelledError):
                raise  # a spent quota defers the whole run; retrying the step could only be refused again
            except (PermanentError, InvalidRequest) as exc:
                await self._fail(name, tries, exc)
                raise
            except Exception as exc:
                if tries >= policy.max_attempts:
                    error = await self._fail(name, tries, exc)
                    raise StepFailed(
                        f"step {name!r} failed after {tries} {'try' if tries == 1 else 'tries'}: {error}",
                        delay_s=exc.delay_s if isinstance(exc, RetryableError) else None,
                    ) from exc
                delay = policy.delay_s(tries)
                self._log.warning(
                    "step %s try %d failed, again in %.2fs: %s",
                    name,
                    tries,
                    delay,
                    self._error_text(exc),
                    extra={"event": "step.retrying", "step": name, "delay_s": round(delay, 3)},
                )
                await asyncio.sleep(delay)
                await self._checkpoint()
        return await self._complete(name, tries, value, returns)

    async def _complete(self, name: str, tries: int, value: Any, returns: type[Any] | None) -> Any:
        try:
            text = _encode(name, value, returns)
        except PermanentError as exc:
            await self._fail(name, tries, exc)
            raise
        size = len(text.encode())
        if self._result_bytes + size > self._max_result_bytes:
            error = StepResultTooLarge(
                f"step {name!r} returned {size} bytes of JSON; the steps of run {self._run_id} may record "
                f"{self._max_result_bytes} bytes in all ({self._result_bytes} used). Store big data in the "
                "database and return its id, or raise PULSE_STEP_RESULTS_MAX_BYTES."
            )
            await self._fail(name, tries, error)
            raise error
        self._result_bytes += size
        await journal.record_step_completed(
            self._db, self._run_id, name, tries=tries, result_json=text, result_bytes=size
        )
        return _decode(text, returns)

    async def _fail(self, name: str, tries: int, exc: BaseException) -> str:
        error = self._error_text(exc)
        await journal.record_step_failed(self._db, self._run_id, name, tries=tries, error=error)
        return error

    def _error_text(self, exc: BaseException) -> str:
        return self._scrub(bounded(f"{type(exc).__name__}: {exc}", 500))

    # -- the journal and the determinism guard --------------------------------------------

    async def _recorded(self, name: str, index: int) -> StepRecord | None:
        """The journal's record of step `name`, after checking it sits at place `index`."""
        journal_by_name = await self._load()
        by_index = next((step for step in journal_by_name.values() if step.index == index), None)
        recorded = journal_by_name.get(name)
        if (by_index is not None and by_index.name != name) or (recorded is not None and recorded.index != index):
            held = f"holds {by_index.name!r} there" if by_index is not None else "holds it elsewhere"
            raise StepOrderChanged(
                f"step {name!r} was asked for as step {index + 1}, but the journal of run {self._run_id} {held}: "
                "the workflow's code outside its steps changed under the run or is not deterministic. "
                "The run is failed without retry; request a new run."
            )
        return recorded

    async def _load(self) -> dict[str, StepRecord]:
        async with self._loading:  # parallel steps share one read of the journal
            if self._journal is None:
                steps = await journal.read_steps(self._db, self._run_id)
                self._journal = {step.name: step for step in steps}
                self._result_bytes = sum(s.result_bytes for s in steps if s.status is StepStatus.COMPLETED)
            return self._journal


def _encode(name: str, value: Any, returns: type[Any] | None) -> str:
    """The step result as JSON text: plain JSON, or serialized as `returns` (models, their lists...)."""
    if isinstance(value, BaseModel) and returns is None:
        # A resumed run would get a dict back where the first attempt got a model.
        raise PermanentError(
            f"step {name!r} returned a {type(value).__name__}; pass returns={type(value).__name__} "
            "so that a resumed run gets the same type back"
        )
    try:
        if returns is not None:
            return TypeAdapter(returns).dump_json(value).decode()
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, PydanticSerializationError) as exc:
        raise PermanentError(f"step {name!r} returned a value that is not JSON: {exc}") from exc


def _decode(text: str, returns: type[Any] | None) -> Any:
    value = json.loads(text)
    return value if returns is None else TypeAdapter(returns).validate_python(value)
