"""The dashboard while NATS or MongoDB is down: every page answers with a clear banner, never a 500."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.dashboard.support import TOKEN, running_dashboard, sign_in

PAGES = [
    "/", "/runs", "/runs/stats:manual:x", "/schedules", "/jobs/whale_sync", "/budgets", "/dlq", "/dlq/1", "/stats",
    "/audit", "/readyz",
]  # fmt: skip


def dead_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("down", ["nats", "mongo", "both"])
async def test_every_page_shows_a_banner_and_no_error_page(make_settings: Any, down: str) -> None:
    # Short timeouts only for the server that is down: the one that is up keeps the fixtures' bound.
    overrides: dict[str, Any] = {}
    if down in ("nats", "both"):
        overrides |= {"nats_url": f"nats://127.0.0.1:{dead_port()}", "nats_connect_timeout_s": 1.0}
    if down in ("mongo", "both"):
        overrides |= {"mongo_url": f"mongodb://user:hunter2secret@127.0.0.1:{dead_port()}/", "mongo_timeout_s": 1.0}
    settings = make_settings(dashboard_token=SecretStr(TOKEN), **overrides)
    async with running_dashboard(settings) as running, httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        for path in PAGES:
            answer = await http.get(path)
            assert answer.status_code in (200, 404, 503), (path, answer.status_code)  # never a 500
            assert "hunter2secret" not in answer.text
            assert "Traceback" not in answer.text
            if path == "/readyz":  # not ready while a server is down; the body says which
                assert answer.status_code == 503
                assert answer.json() == {
                    "status": "unready",
                    "checks": {"nats": down == "mongo", "mongo": down == "nats"},
                }
                continue
            server = {"nats": "NATS", "mongo": "MongoDB", "both": ""}[down]
            assert f"{server} is unreachable" in answer.text, path
        # An action while a server is down: a clear answer, not a 500.
        csrf = await sign_in(http)
        answer = await http.post("/schedules/stats/trigger", data={"csrf": csrf})
        assert answer.status_code == 503
        assert "unreachable" in answer.text
