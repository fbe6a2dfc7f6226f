"""Each job's arguments model: the one registry both the workers and the CLI read.

A job's `args` (the small dict of a `JobRequest`) are validated against its model. The
workers do it when a request arrives (an invalid one fails at once and is dead-lettered);
the CLI does it before publishing, so `pulse trigger JOB --arg ...` refuses a mistake up
front instead of sending a request that can only fail. The registry lives here, away
from the services, so the CLI needs no service code (and none of its imports).

A job declared with `@job(name)` and no `args=` takes its model from here; a job with
arguments adds its model to `ARGS_MODELS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.names import JOBS


class NoArgs(BaseModel):
    """Default args model: the job takes no arguments; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MarketRefreshArgs(BaseModel):
    """market_refresh's argument: the market to refresh, by its condition id (as whale trades name it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    market: str = Field(pattern=r"^0x[0-9a-fA-F]{64}$", description="the market's condition id, 0x and 64 hex digits")


#: Every known job's args model (NoArgs for the jobs that take none).
ARGS_MODELS: Mapping[str, type[BaseModel]] = {**dict.fromkeys(JOBS, NoArgs), "market_refresh": MarketRefreshArgs}


def args_model(job: str) -> type[BaseModel]:
    """The args model of `job` (NoArgs for a job the registry does not list)."""
    return ARGS_MODELS.get(job, NoArgs)


def args_problem(job: str, model: type[BaseModel], exc: ValidationError) -> str:
    """Say in an operator's words what is wrong with `job`'s args (no model or pydantic names)."""
    accepted = sorted(model.model_fields)
    problems: list[str] = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "args"
        if error["type"] == "extra_forbidden":
            takes = f"{job} takes {', '.join(accepted)}" if accepted else f"{job} takes no arguments"
            problems.append(f"unknown argument {key!r} ({takes})")
        elif error["type"] == "missing":
            problems.append(f"argument {key!r} is required")
        else:
            problems.append(f"argument {key!r}: {str(error['msg']).removeprefix('Value error, ').lower()}")
    return "; ".join(problems)


def check_args(job: str, args: dict[str, Any], model: type[BaseModel] | None = None) -> str | None:
    """None when `args` are valid for `job`, else one line saying what is wrong."""
    chosen = model or args_model(job)
    try:
        chosen.model_validate(args)
    except ValidationError as exc:
        return args_problem(job, chosen, exc)
    return None
