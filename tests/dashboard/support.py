"""Running the dashboard in-process for tests, and signing in to it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from services.dashboard.app import Dashboard
from shared.runtime import HttpServer
from shared.settings import Settings
from tests.helpers import wait_for

TOKEN = "test-operator-token-0123456789"
_CSRF_RE = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@dataclass
class Running:
    dashboard: Dashboard
    url: str


@asynccontextmanager
async def running_dashboard(settings: Settings) -> AsyncIterator[Running]:
    """The dashboard service on a free local port, stopped (live streams first) on exit."""
    dashboard = Dashboard(settings.model_copy(update={"dashboard_host": "127.0.0.1", "dashboard_port": 0}))
    app = dashboard.app()  # served as `run_app` serves it: HTTP first, then the app's lifespan
    http = HttpServer(app, "127.0.0.1", 0)
    await http.start()
    started, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        # In a task of its own: the lifespan's task group must be left by the task that entered
        # it, and pytest-asyncio may tear a fixture down in another task than it set it up.
        async with app.start_lifespan_context():
            started.set()
            await stop.wait()

    task = asyncio.create_task(lifespan(), name="dashboard-lifespan")
    try:
        await wait_for(lambda: _either(started, task), timeout_s=30, what="the dashboard to start")
        if task.done():
            task.result()  # re-raise a start-up failure
        yield Running(dashboard, f"http://127.0.0.1:{http.port}")
    finally:
        stop.set()
        try:
            await task  # a failing shutdown fails the test
        finally:
            await http.stop()


async def _either(started: asyncio.Event, task: asyncio.Task[None]) -> bool:
    return started.is_set() or task.done()


async def sign_in(client: httpx.AsyncClient, token: str = TOKEN, name: str = "tester") -> str:
    """Sign `client` in; return the CSRF token its forms carry."""
    answer = await client.post("/login", data={"token": token, "name": name, "next": "/schedules"})
    assert answer.status_code == 303, answer.text
    page = await client.get("/schedules")
    return csrf_of(page.text)


def csrf_of(html: str) -> str:
    found = _CSRF_RE.search(html)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)
