"""Running the dashboard in-process for tests, and signing in to it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from services.dashboard.app import Dashboard
from shared.runtime import HttpServer
from shared.settings import Settings

TOKEN = "test-operator-token-0123456789"
_CSRF_RE = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@dataclass
class Running:
    dashboard: Dashboard
    url: str


@asynccontextmanager
async def running_dashboard(settings: Settings) -> AsyncIterator[Running]:
    """The dashboard on a free local port, stopped (live streams first) on exit."""
    dashboard = Dashboard(settings.model_copy(update={"dashboard_host": "127.0.0.1", "dashboard_port": 0}))
    http = HttpServer(dashboard, "127.0.0.1", 0)
    await http.start()
    await dashboard.start()
    try:
        yield Running(dashboard, f"http://127.0.0.1:{http.port}")
    finally:
        await dashboard.stop()
        await http.stop()


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
