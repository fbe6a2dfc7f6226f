"""Bad numbers and markup-like text on the `pulse` command line: one plain line on stderr, exit 2.

Every case here is refused before any server is contacted; the URLs point at closed ports
so a command that got past its checks would fail differently (and the test would say so).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.cli.app import app


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "PULSE_NATS_URL": "nats://127.0.0.1:9",
        "PULSE_MONGO_URL": "mongodb://127.0.0.1:9",
        "PULSE_NATS_CONNECT_TIMEOUT_S": "0.2",
        "PULSE_MONGO_TIMEOUT_S": "0.2",
        "PULSE_STACK_FILE": str(tmp_path / "stack.json"),
        "COLUMNS": "200",
    }


BAD_NUMBERS = [
    (["slots", "--last", "inf"], "--last 'inf' is out of range"),
    (["slots", "--last", "nan"], "--last 'nan' is out of range"),
    (["trigger", "stats", "--in", "inf"], "--in 'inf' is out of range"),
    (["trigger", "stats", "--in", "99999999d"], "--in '99999999d' is out of range"),
    (["runs", "--since", "99999999d"], "--since '99999999d' is out of range"),
    (["alerts", "--since", "99999999d"], "--since '99999999d' is out of range"),
    (["stats", "--last", "99999999999999w"], "invalid period '99999999999999w'"),
    (["trigger", "stats", "--wait", "--timeout", "nan"], "--timeout must be a positive, finite number"),
    (["trigger", "stats", "--wait", "--timeout", "inf"], "--timeout must be a positive, finite number"),
    (["watch", "--interval", "nan"], "--interval must be a positive, finite number"),
    (["watch", "--for", "inf"], "--for must be a positive, finite number"),
    (["logs", "stats:manual:x", "--follow", "--timeout", "nan"], "--timeout must be a positive, finite number"),
    (["alerts", "--follow", "--timeout", "-inf"], "--timeout must be a positive, finite number"),
    (["up", "--for", "nan"], "--for must be a positive, finite number"),
]


@pytest.mark.parametrize(("args", "phrase"), BAD_NUMBERS, ids=[" ".join(args) for args, _ in BAD_NUMBERS])
def test_non_finite_or_huge_numbers_are_refused_in_one_line(tmp_path: Path, args: list[str], phrase: str) -> None:
    result = CliRunner().invoke(app, args, env=_env(tmp_path), catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert phrase in lines[0]


@pytest.mark.parametrize("job", ["[/]", "[abc]", "[bold]x[/bold]"])
def test_markup_in_user_input_is_printed_verbatim(tmp_path: Path, job: str) -> None:
    result = CliRunner().invoke(app, ["trigger", job], env=_env(tmp_path), catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: unknown job ")
    assert repr(job) in lines[0]
