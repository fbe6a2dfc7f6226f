"""`pulse alerts [--follow]` reads the alerts from EVENTS, whether or not a sink delivers them."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from nats.js import JetStreamContext

from shared.runtime._events import publish_alert
from shared.schemas import Alert, AlertKind, utcnow
from shared.settings import Settings
from tests.integration.test_cli_common import cli_env, invoke


async def test_alerts_lists_and_follows(settings: Settings, js: JetStreamContext) -> None:
    since = utcnow()
    await publish_alert(js, settings.names, Alert(job="stats", kind=AlertKind.STALE, since=since, detail="old news"))
    await publish_alert(
        js, settings.names, Alert(job="whale_sync", kind=AlertKind.DEAD_LETTER, since=since, detail="a letter")
    )
    listed = await asyncio.to_thread(invoke, settings, "alerts", "--json")
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["job"], r["kind"]) for r in rows] == [("stats", "stale"), ("whale_sync", "dead_letter")]
    assert all(r["raised_at"].endswith("Z") and "." not in r["raised_at"] for r in rows)  # to the second, UTC
    only = await asyncio.to_thread(invoke, settings, "alerts", "--job", "whale_sync")
    assert "a letter" in only.stdout
    assert "old news" not in only.stdout

    follow = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from shared.cli.app import main; main()",
        "alerts",
        "--follow",
        "--timeout",
        "60",
        env={**os.environ, **cli_env(settings)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert follow.stdout is not None
        seen = [(await asyncio.wait_for(follow.stdout.readline(), timeout=30)).decode() for _ in range(2)]
        assert "old news" in seen[0]  # caught up with what was stored: now it is following
        await publish_alert(
            js, settings.names, Alert(job="stats", kind=AlertKind.RECOVERED, since=utcnow(), detail="back again")
        )
        line = (await asyncio.wait_for(follow.stdout.readline(), timeout=30)).decode()
        assert "recovered" in line
        assert "back again" in line
        assert follow.returncode is None  # still following
    finally:
        if follow.returncode is None:
            follow.kill()
        await follow.wait()
