"""Piped output: tables keep every value whole, on one line, whatever their length."""

from __future__ import annotations

import asyncio

from typer.testing import CliRunner, Result

from shared.cli.app import app
from shared.settings import Settings
from tests.integration.test_cli_common import cli_env, invoke
from tests.integration.test_cli_wait import stats_worker as stats_worker

#: Longer than an 80-column terminal leaves for one cell of a table.
LONG_CRON = "0,5,10,15,20,25,30,35,40,45,50,55 * * * * America/Argentina/Buenos_Aires"
LONG_KEY = "nightly-backfill-of-the-whole-catalogue-for-the-quarterly-report"


def piped(settings: Settings, *args: str, columns: str | None = None) -> Result:
    """`pulse *args` with stdout a pipe (CliRunner's is never a terminal) and COLUMNS as given."""
    env: dict[str, str | None] = {**cli_env(settings), "COLUMNS": columns}
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def whole_on_a_line(output: str, *values: str) -> bool:
    return any(all(value in line for value in values) for line in output.splitlines())


async def test_a_long_schedule_is_whole_on_its_row_when_piped(settings: Settings) -> None:
    changed = await asyncio.to_thread(invoke, settings, "schedule", "set", "stats", "--cron", LONG_CRON)
    assert changed.exit_code == 0, changed.output

    result = await asyncio.to_thread(piped, settings, "schedule", "list")
    assert result.exit_code == 0, result.output
    assert whole_on_a_line(result.stdout, "stats", f"cron {LONG_CRON}", "override"), result.stdout
    # The same table for an 80-column terminal folds the text: the check above can fail.
    narrow = await asyncio.to_thread(piped, settings, "schedule", "list", columns="80")
    assert not whole_on_a_line(narrow.stdout, f"cron {LONG_CRON}"), narrow.stdout


async def test_a_long_run_id_and_its_summary_are_whole_on_their_row_when_piped(
    settings: Settings, stats_worker: None
) -> None:
    done = await asyncio.to_thread(invoke, settings, "trigger", "stats", "--key", LONG_KEY, "--wait", "--timeout", "30")
    assert done.exit_code == 0, done.output
    run_id = done.stdout.splitlines()[0]
    assert run_id.endswith(LONG_KEY)

    result = await asyncio.to_thread(piped, settings, "runs", "--job", "stats")
    assert result.exit_code == 0, result.output
    assert whole_on_a_line(result.stdout, run_id, "completed", "snapshots=1"), result.stdout
    narrow = await asyncio.to_thread(piped, settings, "runs", "--job", "stats", columns="80")
    assert not whole_on_a_line(narrow.stdout, run_id), narrow.stdout
