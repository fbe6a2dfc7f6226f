"""The pages of issue 15's facts, read through the same read model as `pulse`:

/jobs/<job>?last=24h  Job: its status (schedule, freshness target and budget left, chains),
                      why it is not running (`pulse why`), and its slot strip of the
                      window with the gaps and their reasons (`pulse slots`)
/budgets              Upstream budgets: spend against quota, the reset, the forecast (`pulse budgets`)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.dashboard.app import Dashboard, Page
from services.dashboard.web import Response
from shared.names import JOBS
from shared.readmodel import budgets, schedules, slots, why
from shared.readmodel import status as job_status
from shared.readmodel.timetext import parse_duration
from shared.schemas import utcnow

#: Marks per row of a job's slot strip (an hour of a per-minute schedule), as `pulse slots` draws it.
STRIP_ROW = 60
#: The slot window of a job's page when the query names none (as `pulse slots --last`).
DEFAULT_WINDOW = "24h"
#: The longest window a job's page reads (the read model shows at most `slots.MAX_SLOTS` slots).
MAX_WINDOW = timedelta(days=7)


def register(dash: Dashboard) -> None:
    """Add the job and budgets pages to `dash`."""
    dash.route("GET", "/jobs/{job}", job_page)
    dash.route("GET", "/budgets", budgets_page)


@dataclass(frozen=True)
class StripRow:
    """One row of a slot strip: the time of its first slot and its slots, oldest first."""

    start: datetime
    slots: list[slots.SlotView]


def strip_rows(view: slots.JobSlots) -> list[StripRow]:
    """The strip of `view` cut into rows of `STRIP_ROW` slots."""
    return [
        StripRow(view.slots[start].slot, view.slots[start : start + STRIP_ROW])
        for start in range(0, len(view.slots), STRIP_ROW)
    ]


def window_of(text: str) -> timedelta:
    """The slot window from `?last=`; ValueError with one clear line when it is not a positive duration."""
    window = parse_duration(text, option="last")
    if window.total_seconds() <= 0 or window > MAX_WINDOW:
        raise ValueError(f"last must be a duration above 0 and at most 7d, such as 6h or 24h, got {text!r}")
    return window


async def job_page(page: Page) -> Response:
    job = page.request.params["job"]
    if job not in JOBS:
        return page.error(404, f"unknown job {job!r}: expected one of {', '.join(JOBS)}", back="/")
    last = page.request.arg("last") or DEFAULT_WINDOW
    try:
        window = window_of(last)
    except ValueError as exc:
        return page.error(400, str(exc), back=f"/jobs/{job}")
    src, settings = page.sources, page.settings
    now = utcnow()

    async def status() -> job_status.JobStatus:
        return await job_status.collect_job_status(src.js, src.store(), settings, job)

    async def answer() -> why.Why:
        return await why.explain(why.Sources(src.js, src.store(), settings), job, now)

    async def job_slots() -> slots.JobSlots:
        entry = await schedules.read_override(src.js, settings, job)
        eff = schedules.effective_for(settings, job, entry.override)
        return await slots.read_job_slots(src.store(), eff, since=now - window, until=now, now=now)

    found = await page.read("job status", status)
    reasons = await page.read("why it is not running", answer)
    ledger = await page.read("slots", job_slots)
    return page.render(
        "job.html", title=job, page="overview", job=job, s=found, why=reasons, ledger=ledger,
        rows=strip_rows(ledger) if ledger else [], last=last, legend=slots.MARKS,
    )  # fmt: skip


async def budgets_page(page: Page) -> Response:
    views = await page.read("budgets", lambda: budgets.read_budgets(page.sources.store(), page.settings))
    return page.render("budgets.html", title="Budgets", page="budgets", budgets=views)
