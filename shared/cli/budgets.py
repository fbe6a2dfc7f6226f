"""`pulse budgets`: each upstream's quota, spend this period, and the forecast to the reset.

    pulse budgets            a table, one row per upstream with a quota (PULSE_QUOTAS)
    pulse budgets --json     the same as JSON (docs/cli-json.md)

Only MongoDB is needed (spend is kept in `budgets`), so it works while NATS is down.
"""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.table import Table
from rich.text import Text

from shared.cli.common import cli_settings, console, print_json, run_async
from shared.readmodel.budgets import BudgetView, budgets_json, read_budgets
from shared.readmodel.timetext import ago, iso
from shared.settings import Settings
from shared.store import connect_store


async def load_budgets(settings: Settings) -> list[BudgetView]:
    """The budget views, read from the store."""
    client, db = await connect_store(settings)
    try:
        return await read_budgets(db, settings)
    finally:
        await client.close()


def budgets_table(views: list[BudgetView]) -> Table:
    """Spend against quota per upstream, the reset and the forecast."""
    now = datetime.now(UTC)
    table = Table(title="upstream budgets", title_justify="left", header_style="bold")
    table.add_column("upstream", style="bold")
    table.add_column("spent / quota", justify="right")
    table.add_column("left", justify="right")
    table.add_column("resets (UTC)")
    table.add_column("forecast at reset", justify="right")
    table.add_column("jobs")
    for view in views:
        share = view.spent / view.quota
        style = "bold red" if view.exhausted else "yellow" if share >= 0.8 else "green"
        spent = Text(f"{view.spent:,} / {view.quota:,} per {view.period}", style=style)
        if view.exhausted:
            ahead = Text("spent: runs deferred", style="bold red")
        elif view.runs_out_at is not None:
            ahead = Text(f"{view.forecast_at_reset:,}: runs out {iso(view.runs_out_at)}", style="yellow")
        else:
            ahead = Text(f"{view.forecast_at_reset:,}", style="green")
        table.add_row(
            view.upstream,
            spent,
            f"{view.remaining:,}",
            f"{iso(view.resets_at)} ({ago(view.resets_at, now)})",
            ahead,
            ", ".join(view.jobs) or "-",
        )
    return table


def register(app: typer.Typer) -> None:
    """Add `pulse budgets` to `app`."""

    @app.command("budgets")
    def budgets_command(
        json_output: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    ) -> None:
        """Show each upstream's request quota: spent this period, left, the reset and the forecast to it.

        Example: pulse budgets ;  pulse budgets --json
        """
        settings = cli_settings()
        views = run_async(lambda: load_budgets(settings))
        if json_output:
            print_json(budgets_json(views))
            return
        if not views:
            console.print("no upstream has a quota: set PULSE_QUOTAS (see docs/budgets.md)")
            return
        console.print(budgets_table(views))
