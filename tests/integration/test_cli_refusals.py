"""Mistakes refused up front: one line on stderr, exit 2, and nothing published or stored."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import nats.js.errors
import pytest
from nats.js import JetStreamContext
from typer.testing import Result

from shared.schemas import DeadLetter, JobRequest, Trigger, utcnow
from shared.settings import Settings
from tests.integration.test_cli_common import invoke
from tests.integration.test_cli_dlq import publish_letters
from tests.integration.test_cli_jobs import queued_requests, stdout_json, with_js


def assert_refused(result: Result, *phrases: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0]


@pytest.mark.parametrize(
    ("cron", "phrase"),
    [("*/61 * * * *", "minute field has step 61"), ("0 */25 * * *", "hour field has step 25")],
)
def test_a_cron_field_out_of_range_is_refused_and_nothing_is_stored(settings: Settings, cron: str, phrase: str) -> None:
    assert_refused(invoke(settings, "schedule", "set", "whale_sync", "--cron", cron), phrase)

    async def _stored(js: JetStreamContext) -> bool:
        kv = await js.key_value(settings.names.schedules_bucket)
        try:
            await kv.get("whale_sync")
        except nats.js.errors.KeyNotFoundError:
            return False
        return True

    assert with_js(settings, _stored) is False


def test_an_unknown_arg_is_refused_in_user_words_and_nothing_is_published(settings: Settings) -> None:
    result = invoke(settings, "trigger", "whale_sync", "--arg", "bogus=1")
    assert_refused(result, "unknown argument 'bogus'", "whale_sync takes no arguments", "nothing was published")
    assert "NoArgs" not in result.stderr
    assert queued_requests(settings, "whale_sync") == []


def _invalid_letter() -> bytes:
    request = JobRequest(
        run_id="whale_sync:manual:typo", job="whale_sync", trigger=Trigger.MANUAL, scheduled_for=utcnow(),
        args={"bogus": 1},
    )  # fmt: skip
    letter = DeadLetter(
        job="whale_sync",
        run_id=request.run_id,
        request=request,
        error="invalid args for job whale_sync: unknown argument 'bogus' (whale_sync takes no arguments)",
        attempts=0,
        reason="invalid",
    )
    return letter.model_dump_json().encode()


def test_an_invalid_dead_letter_is_replayed_only_once_edited(settings: Settings, tmp_path: Path) -> None:
    [seq] = publish_letters(settings, ("whale_sync", _invalid_letter()))

    unchanged = invoke(settings, "dlq", "replay", str(seq))
    assert_refused(unchanged, "refused as invalid", "unknown argument 'bogus'", f"pulse dlq replay {seq} --set")
    still_bad = invoke(settings, "dlq", "replay", str(seq), "--set", "args.bogus=2")
    assert_refused(still_bad, "its args are invalid for whale_sync", "unknown argument 'bogus'")
    bad_option = invoke(settings, "dlq", "replay", str(seq), "--set", "bogus=2")
    assert_refused(bad_option, "expected args.KEY=VALUE")
    assert queued_requests(settings, "whale_sync") == []
    assert [item["seq"] for item in stdout_json(invoke(settings, "dlq", "list", "--json"))] == [seq]

    editor = tmp_path / "editor.sh"  # an $EDITOR that empties the args
    editor.write_text('#!/bin/sh\necho "{}" > "$1"\n')
    editor.chmod(editor.stat().st_mode | stat.S_IXUSR)
    edited = stdout_json(invoke(settings, "dlq", "replay", str(seq), "--edit", "--keep", "--json", EDITOR=str(editor)))
    unset = stdout_json(invoke(settings, "dlq", "replay", str(seq), "--unset", "args.bogus", "--json"))
    assert edited[0]["edited"] is True
    assert edited[0]["run_id"] == unset[0]["run_id"]  # the same letter with the same edit: one run
    assert unset[0]["duplicate"] is True
    [(request, _)] = queued_requests(settings, "whale_sync")
    assert (request.args, request.trigger) == ({}, Trigger.REPLAY)
    assert stdout_json(invoke(settings, "dlq", "list", "--json")) == []


async def test_replay_of_an_unchanged_letter_publishes_nothing_even_with_all(settings: Settings) -> None:
    [seq] = await asyncio.to_thread(publish_letters, settings, ("whale_sync", _invalid_letter()))
    result = await asyncio.to_thread(invoke, settings, "dlq", "replay", "--all", "--job", "whale_sync")
    assert result.exit_code == 1
    assert f"dead letter #{seq} not replayed" in result.stderr
    assert await asyncio.to_thread(queued_requests, settings, "whale_sync") == []
