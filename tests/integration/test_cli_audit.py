"""Every mutating `pulse` command writes the audit trail the dashboard's actions write (shared/audit.py)."""

from __future__ import annotations

import asyncio
import getpass
import socket
from typing import Any

import httpx
from nats.js import JetStreamContext

from shared.names import Collections
from shared.schemas import DeadLetter, JobRequest, Trigger, utcnow
from shared.settings import Settings
from shared.store import Database
from tests.dashboard.support import running_dashboard
from tests.integration.test_cli_common import invoke

HOST = socket.gethostname()


async def trail(db: Database) -> list[tuple[str, str, str, str]]:
    """(who, action, target, outcome) of every audit entry, oldest first."""
    entries = await db[Collections.AUDIT].find({}).sort("at", 1).to_list(None)
    for entry in entries:
        assert entry["source"] == "cli"
    return [(e["who"], e["action"], e["target"], e["outcome"]) for e in entries]


async def pulse(settings: Settings, *args: str, code: int = 0, **env: str) -> str:
    result = await asyncio.to_thread(invoke, settings, *args, **env)
    assert result.exit_code == code, result.output
    return result.output


async def dead_letter(js: JetStreamContext, settings: Settings, run_id: str) -> int:
    request = JobRequest(run_id=run_id, job="stats", trigger=Trigger.MANUAL, scheduled_for=utcnow())
    letter = DeadLetter(job="stats", run_id=run_id, request=request, error="boom", attempts=3, reason="exhausted")
    names = settings.names
    ack = await js.publish(names.dlq_subject("stats"), letter.model_dump_json().encode(), stream=names.dlq_stream)
    return ack.seq


async def test_mutating_commands_record_who_did_what(settings: Settings, js: JetStreamContext, db: Database) -> None:
    alice = f"pulse:alice@{HOST}"
    started = (await pulse(settings, "trigger", "stats", "--actor", "alice")).splitlines()[0]
    later = (await pulse(settings, "trigger", "stats", "--in", "10m", "--actor", "alice")).splitlines()[0]
    await pulse(settings, "cancel", later, "--actor", "alice")
    await pulse(settings, "cancel", "stats:manual:nothing", "--actor", "alice", code=1)
    await pulse(settings, "schedule", "set", "stats", "--every", "5m", "--actor", "alice")
    await pulse(settings, "schedule", "pause", "stats", "--actor", "alice")
    await pulse(settings, "schedule", "resume", "stats", "--actor", "alice")
    await pulse(settings, "schedule", "reset", "stats", "--actor", "alice")
    pending = (await pulse(settings, "trigger", "stats", "--in", "10m", "--actor", "alice")).splitlines()[0]
    await pulse(settings, "schedule", "cancel-pending", pending, "--actor", "alice")
    first, second = [await dead_letter(js, settings, f"stats:manual:dead{n}") for n in (1, 2)]
    await pulse(settings, "dlq", "replay", str(first), "--actor", "alice")
    await pulse(settings, "dlq", "replay", "999", "--actor", "alice", code=1)
    await pulse(settings, "dlq", "purge", str(second), "--yes", "--actor", "alice")
    await pulse(settings, "dlq", "purge", "--yes", "--actor", "alice")
    await pulse(settings, "signal", "stats:manual:nothing", "go", "--actor", "alice", code=1)
    await pulse(settings, "schedule", "pause", "cleanup")  # no --actor: the login name

    assert await trail(db) == [
        (alice, "trigger", "stats", "done"),
        (alice, "trigger", "stats", "done"),
        (alice, "cancel", later, "done"),
        (alice, "cancel", "stats:manual:nothing", "failed"),
        (alice, "schedule_set", "stats", "done"),
        (alice, "schedule_pause", "stats", "done"),
        (alice, "schedule_resume", "stats", "done"),
        (alice, "schedule_reset", "stats", "done"),
        (alice, "trigger", "stats", "done"),
        (alice, "cancel_pending", pending, "done"),
        (alice, "dlq_replay", str(first), "done"),
        (alice, "dlq_replay", "999", "failed"),
        (alice, "dlq_purge", str(second), "done"),
        (alice, "dlq_purge_all", "all", "done"),
        (alice, "signal", "stats:manual:nothing", "failed"),
        (f"pulse:{getpass.getuser()}@{HOST}", "schedule_pause", "cleanup", "done"),
    ]
    entries = await db[Collections.AUDIT].find({}).sort("at", 1).to_list(None)
    details = {(e["action"], e["target"]): e for e in entries}  # the newest entry of each (action, target)
    assert details[("trigger", "stats")]["detail"].startswith("will run at")  # the last trigger, delayed
    assert details[("cancel", "stats:manual:nothing")]["detail"].startswith("no run 'stats:manual:nothing'")
    assert details[("schedule_set", "stats")]["params"] == {"schedule": "every 5m"}
    assert details[("dlq_replay", str(first))]["detail"].startswith(f"replayed 1: #{first} as stats:replay:")
    assert "no dead letter #999" in details[("dlq_replay", "999")]["detail"]
    # The run the CLI started names the same actor.
    run = await db[Collections.RUNS].find_one({"_id": started})
    assert run is None or run["requested_by"] == alice  # no worker runs here: the request waits in JOBS


async def test_a_bad_actor_name_is_refused_before_anything_happens(settings: Settings, db: Database) -> None:
    output = await pulse(settings, "schedule", "pause", "stats", "--actor", "eve <script>", code=2)
    assert "--actor: the name 'eve <script>' must be 1-40 letters, digits or . _ @ -" in output
    assert await trail(db) == []


async def test_a_nats_only_action_still_works_while_mongodb_is_down(make_settings: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    settings = make_settings(mongo_url=f"mongodb://user:hunter2secret@127.0.0.1:{dead}/", mongo_timeout_s=1.0)
    output = await pulse(settings, "schedule", "pause", "stats", "--actor", "alice")
    assert "stats: paused" in output
    assert "warning: schedule_pause of stats is not in the audit trail" in output
    assert "hunter2secret" not in output


async def test_the_dashboards_audit_view_shows_cli_actions(settings: Settings, js: JetStreamContext) -> None:
    await pulse(settings, "schedule", "pause", "stats", "--actor", "carol")
    async with running_dashboard(settings) as running, httpx.AsyncClient(base_url=running.url) as http:
        page = (await http.get("/audit")).text
    assert f"pulse:carol@{HOST}" in page
    assert "<td>cli</td><td>schedule_pause</td><td>stats</td>" in page
