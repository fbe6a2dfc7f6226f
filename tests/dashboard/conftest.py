"""Fixtures of the dashboard tests: the dashboard in-process, with and without an operator token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from shared.settings import Settings
from tests.dashboard.support import TOKEN, Running, running_dashboard
from tests.integration.test_runtime_support import start_worker as start_worker  # the workers' fixture


@pytest.fixture
def dash_settings(make_settings: Any) -> Settings:
    settings: Settings = make_settings(dashboard_token=SecretStr(TOKEN))
    return settings


@pytest.fixture
async def dashboard(dash_settings: Settings, js: Any, db: Any) -> AsyncIterator[Running]:
    """The dashboard with an operator token, over this test's streams and database."""
    async with running_dashboard(dash_settings) as running:
        yield running


@pytest.fixture
async def client(dashboard: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=20) as http:
        yield http
