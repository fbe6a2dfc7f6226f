"""Declaring a job: `@job("market_sync")` turns a handler into a frozen `JobSpec`.

A handler is an async function that takes a `JobContext` and returns a small summary
dict (stored in the run record and the RunEvent), or None. It raises to fail the
attempt: a `PermanentError` fails the run at once, anything else is retried by policy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shared.jobargs import NoArgs, args_model
from shared.names import check_job_name
from shared.settings import JobPolicy

if TYPE_CHECKING:
    from shared.runtime._context import JobContext

Summary = dict[str, Any]
Handler = Callable[["JobContext"], Awaitable[Summary | None]]
#: `ctx.checkpoint` as domain code receives it: report progress (a heartbeat); it raises
#: `RunCanceled` where the run should stop.
Checkpoint = Callable[[dict[str, Any] | None], Awaitable[None]]


async def no_checkpoint(progress: dict[str, Any] | None = None) -> None:
    """A `Checkpoint` that does nothing: domain code called outside a run (tests, tools)."""
    return


@dataclass(frozen=True)
class JobSpec:
    """A job as the runtime sees it: name, handler, args model, optional policy override."""

    name: str
    handler: Handler
    args_model: type[BaseModel] = NoArgs
    #: None: use `settings.jobs.<name>` (DESIGN.md defaults, overridable by PULSE_JOBS__...).
    policy: JobPolicy | None = None


def job(
    name: str, *, args: type[BaseModel] | None = None, policy: JobPolicy | None = None
) -> Callable[[Handler], JobSpec]:
    """Declare a job.

    Args:
        name: the job's name; its subject is `jobs.<name>` and its consumer `<name>`.
        args: pydantic model the request's `args` must validate against (invalid args
            fail the run at once, never retried). Default: the job's model in
            `shared.jobargs.ARGS_MODELS`, which the CLI checks before publishing.
        policy: overrides the policy from settings (mainly for tests).

    Example:
        @job("stats")
        async def compute_stats(ctx: JobContext) -> dict[str, Any]: ...
    """
    check_job_name(name)

    def wrap(handler: Handler) -> JobSpec:
        return JobSpec(name=name, handler=handler, args_model=args or args_model(name), policy=policy)

    return wrap
