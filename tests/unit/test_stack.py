"""The `pulse up` stack record: atomic file, stale detection, `pulse env` lines, settings precedence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.cli.app import app
from shared.cli.common import cli_settings
from shared.cli.stack import StackRecord, is_live, live_stack, new_record, read_stack, remove_stack, write_stack


def _record(tmp_path: Path, **changes: object) -> StackRecord:
    record = new_record(
        nats_url="nats://127.0.0.1:41234",
        mongo_url="mongodb://127.0.0.1:41235",
        mongo_db="marketpulse",
        namespace="",
        data_dir=tmp_path,
    )
    return record.model_copy(update=changes)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("PULSE_"):
            monkeypatch.delenv(name)
    stack_file = tmp_path / "stack.json"
    monkeypatch.setenv("PULSE_STACK_FILE", str(stack_file))
    return stack_file


def test_record_round_trips_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "d" / "stack.json"
    record = _record(tmp_path)
    write_stack(path, record)
    assert read_stack(path) == record
    assert path.stat().st_mode & 0o077 == 0
    assert [p.name for p in path.parent.iterdir()] == ["stack.json"]  # no temporary file left


def test_a_record_of_a_dead_pulse_up_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    write_stack(path, _record(tmp_path, pid=_dead_pid()))
    assert read_stack(path) is not None
    assert live_stack(path) is None
    assert is_live(_record(tmp_path)) is True  # this process


def test_remove_leaves_another_stacks_record(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    write_stack(path, _record(tmp_path, pid=os.getpid() + 100000))
    remove_stack(path)
    assert path.exists()
    write_stack(path, _record(tmp_path))
    remove_stack(path)
    assert not path.exists()


def test_cli_settings_use_a_live_stack_when_no_url_is_set(clean_env: Path, tmp_path: Path) -> None:
    write_stack(clean_env, _record(tmp_path, namespace="ns1"))
    settings = cli_settings()
    assert settings.nats_url == "nats://127.0.0.1:41234"
    assert settings.mongo_url.get_secret_value() == "mongodb://127.0.0.1:41235"
    assert settings.namespace == "ns1"


def test_a_set_url_wins_over_the_stack(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_stack(clean_env, _record(tmp_path))
    monkeypatch.setenv("PULSE_NATS_URL", "nats://10.0.0.1:4222")
    settings = cli_settings()
    assert settings.nats_url == "nats://10.0.0.1:4222"
    assert settings.mongo_url.get_secret_value() != "mongodb://127.0.0.1:41235"


def test_cli_settings_ignore_a_stale_stack(clean_env: Path, tmp_path: Path) -> None:
    write_stack(clean_env, _record(tmp_path, pid=_dead_pid()))
    assert cli_settings().nats_url == "nats://127.0.0.1:4222"


def test_pulse_env_prints_lines_that_work_with_eval(clean_env: Path, tmp_path: Path) -> None:
    write_stack(clean_env, _record(tmp_path, mongo_url="mongodb://127.0.0.1:41235/?appname=a b'c"))
    result = CliRunner().invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    shell = subprocess.run(
        ["bash", "-c", 'eval "$1"; printf "%s\\n" "$PULSE_NATS_URL" "$PULSE_MONGO_URL"', "_", result.stdout],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.splitlines() == ["nats://127.0.0.1:41234", "mongodb://127.0.0.1:41235/?appname=a b'c"]


def test_pulse_env_refuses_without_a_live_stack(clean_env: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["env"])
    assert result.exit_code == 2
    assert "start one with pulse up" in result.output
    write_stack(clean_env, _record(tmp_path, pid=_dead_pid()))
    result = CliRunner().invoke(app, ["env"])
    assert result.exit_code == 2
    assert "no longer runs" in result.output
