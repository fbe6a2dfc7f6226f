"""The `pulse` command: one typer app, commands registered from one module per topic.

up, env   shared/cli/up.py         run the whole system locally; export its URLs
trigger, status, watch, runs, run, cancel
          shared/cli/jobs.py       start and inspect runs
logs      shared/cli/logs.py       one run's log lines
alerts    shared/cli/alerts.py     alerts raised lately, or as they come
dlq       shared/cli/dlq.py        dead letters
schedule  shared/cli/schedule.py   runtime schedule changes and delayed runs
backfill  shared/cli/backfill.py   request a past window's slots, each once
why       shared/cli/why.py        what keeps a job from running, and what to do
slots     shared/cli/slots.py      each slot of a schedule and what became of it (the slot ledger)
simulate  shared/cli/simulate.py   the provider simulator
stats     shared/cli/stats.py      the latest stats snapshot and trend
budgets   shared/cli/budgets.py    upstream quotas: spend, reset, forecast
signal    shared/cli/workflows.py  signal a waiting workflow (and the step timeline of `run`)
"""

from __future__ import annotations

import typer

from shared.cli import alerts, backfill, budgets, dlq, jobs, logs, schedule, simulate, slots, stats, up, why, workflows

app = typer.Typer(
    name="pulse",
    help="Operate marketpulse: start jobs, watch runs, manage schedules and dead letters.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)

for module in (up, jobs, logs, alerts, dlq, schedule, slots, backfill, why, simulate, stats, budgets, workflows):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
