"""The args registry speaks the operator's words and is what `@job` uses by default."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from shared.jobargs import ARGS_MODELS, NoArgs, check_args
from shared.names import JOBS
from shared.runtime import JobContext, job


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hours: int
    label: str = "x"


def test_every_job_has_an_args_model_and_job_uses_it() -> None:
    assert set(ARGS_MODELS) == set(JOBS)

    @job("whale_sync")
    async def handler(ctx: JobContext) -> None:
        return None

    assert handler.args_model is ARGS_MODELS["whale_sync"] is NoArgs


def test_problems_are_said_in_user_words() -> None:
    assert check_args("whale_sync", {}) is None
    assert check_args("whale_sync", {"bogus": 1}) == "unknown argument 'bogus' (whale_sync takes no arguments)"
    assert check_args("w", {"hours": "many", "x": 1}, Window) == (
        "argument 'hours': input should be a valid integer, unable to parse string as an integer; "
        "unknown argument 'x' (w takes hours, label)"
    )
    assert check_args("w", {}, Window) == "argument 'hours' is required"
    assert check_args("w", {"hours": 3}, Window) is None
