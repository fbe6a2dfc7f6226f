"""`pulse` basics against real servers: help texts, bad input, unreachable servers.

Also home of the small helpers the other `test_cli_*` files share (`cli_env`, `invoke`).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from shared.cli.app import app
from shared.cli.common import parse_duration, parse_since
from shared.settings import Settings
from tests.conftest import settings_env

COMMANDS = [
    ["trigger"],
    ["status"],
    ["watch"],
    ["runs"],
    ["run"],
    ["cancel"],
    ["signal"],
    ["dlq", "list"],
    ["dlq", "show"],
    ["dlq", "replay"],
    ["dlq", "purge"],
    ["backfill"],
    ["why"],
    ["up"],
    ["budgets"],
]


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a `pulse` command needs to reach this test's servers and namespace."""
    env = settings_env(settings)
    env["PULSE_NATS_CONNECT_TIMEOUT_S"] = str(settings.nats_connect_timeout_s)
    env["PULSE_MONGO_TIMEOUT_S"] = str(settings.mongo_timeout_s)
    env["COLUMNS"] = "200"  # rich wraps at 80 otherwise, splitting run ids across lines
    env.update(extra)
    return env


def invoke(settings: Settings, *args: str, input: str | None = None, **extra: str) -> Result:
    """Run `pulse *args` in-process (typer's runner) with this test's environment."""
    return CliRunner().invoke(app, list(args), env=cli_env(settings, **extra), input=input, catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Example: pulse" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["runs"],
        ["run", "stats:manual:x"],
        ["cancel", "stats:manual:x"],
        ["trigger", "stats"],
        ["dlq", "list"],
        ["dlq", "replay", "--all"],
        ["watch", "--once"],
        ["why", "stats"],
        ["backfill", "stats", "--from", "2h", "--dry-run"],
    ],
    ids=" ".join,
)
def test_unreachable_nats_exits_2_quickly_naming_the_url_without_its_password(
    make_settings: Any, command: list[str]
) -> None:
    settings = make_settings()
    started = time.monotonic()
    result = invoke(
        settings, *command, PULSE_NATS_URL="nats://operator:s3cret@127.0.0.1:1", PULSE_NATS_CONNECT_TIMEOUT_S="2"
    )
    took = time.monotonic() - started
    assert result.exit_code == 2, result.output
    assert "nats://operator:***@127.0.0.1:1" in result.stderr
    assert "s3cret" not in result.output
    assert took < 8


def test_unreachable_mongodb_exits_2_naming_the_url_without_its_password(settings: Settings) -> None:
    started = time.monotonic()
    result = invoke(
        settings, "status", PULSE_MONGO_URL="mongodb://admin:hunter2@127.0.0.1:1/", PULSE_MONGO_TIMEOUT_S="1.5"
    )
    assert result.exit_code == 2, result.output
    assert "mongodb://admin:***@127.0.0.1:1/" in result.stderr
    assert "hunter2" not in result.output
    assert time.monotonic() - started < 8


def test_invalid_configuration_exits_2_naming_the_variable(settings: Settings) -> None:
    result = invoke(settings, "status", PULSE_NATS_URL="http://wrong")
    assert result.exit_code == 2
    assert "PULSE_NATS_URL" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trigger", "nosuchjob"], "unknown job 'nosuchjob'"),
        (["trigger", "stats", "--in", "soon"], "--in 'soon' is not a duration"),
        (["trigger", "stats", "--at", "2030-01-01T10:00:00"], "has no timezone"),
        (["trigger", "stats", "--at", "2001-01-01T10:00:00Z"], "is in the past"),
        (["trigger", "stats", "--in", "5m", "--at", "2030-01-01T10:00:00Z"], "either --in or --at"),
        (["trigger", "stats", "--arg", "novalue"], "expected KEY=VALUE"),
        (["runs", "--status", "exploded"], "unknown status 'exploded'"),
        (["runs", "--since", "yesterday"], "is not a time"),
        (["cancel", "nosuchjob:manual:1"], "unknown job 'nosuchjob'"),
        (["dlq", "replay"], "a sequence number or --all"),
    ],
)
def test_bad_input_exits_2_saying_what_to_do(settings: Settings, args: list[str], message: str) -> None:
    result = invoke(settings, *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())


def test_durations_accept_units_and_combinations() -> None:
    assert parse_duration("90s", option="--in").total_seconds() == 90
    assert parse_duration("1h30m", option="--in").total_seconds() == 5400
    assert parse_duration("2d", option="--in").total_seconds() == 172800
    assert parse_duration("15", option="--in").total_seconds() == 15


def test_since_accepts_a_duration_or_a_time() -> None:
    assert parse_since("2030-01-01T00:00:00Z").year == 2030
    assert (time.time() - parse_since("2h").timestamp()) == pytest.approx(7200, abs=5)
