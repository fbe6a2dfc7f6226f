"""`pulse stats` against a real database: the latest snapshot, the trend, JSON, errors."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from pymongo import MongoClient
from typer.testing import CliRunner

from shared.cli.app import app
from shared.names import Collections
from shared.schemas import utcnow
from shared.settings import Settings
from tests.conftest import settings_env

runner = CliRunner()


@pytest.fixture
def snapshots(settings: Settings) -> Iterator[Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_url.get_secret_value(), tz_aware=True)
    yield client[settings.mongo_db][Collections.MARKET_STATS]
    client.drop_database(settings.mongo_db)
    client.close()


def snapshot(hours_ago: int, active: int, top: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    # One minute older than a whole number of hours, so period edges are never ambiguous.
    at = utcnow() - timedelta(hours=hours_ago, minutes=1)
    return {
        "_id": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "slot": at,
        "computed_at": at,
        "total_markets": active + 10,
        "active_markets": active,
        "priced_markets": active,
        "volume_total": 1e6,
        "volume_24h": 1000.0 * active,
        "avg_yes_price": 0.4321,
        "vw_yes_price": None,
        "whale_trades_1h": hours_ago,
        "whale_notional_1h": 5e4,
        "top_markets": top or [],
    }


def test_latest_snapshot_and_trend(settings: Settings, snapshots: Any) -> None:
    top = [{"market": "polymarket:7", "question": "Will it rain?", "volume_24h": 1234.5, "yes_price": 0.61}]
    snapshots.insert_many([snapshot(h, active=100 + h) for h in range(30, 0, -1)] + [snapshot(0, 555, top)])

    result = runner.invoke(app, ["stats", "--last", "24h"], env=settings_env(settings))

    assert result.exit_code == 0, result.output
    assert "555" in result.output  # latest active markets
    assert "0.4321" in result.output
    assert "Will it rain?" in result.output
    assert "24 snapshots" in result.output  # 0..23 hours old, of the 31 stored
    assert any(char in result.output for char in "▁▂▃▄▅▆▇█")


def test_json_output(settings: Settings, snapshots: Any) -> None:
    snapshots.insert_many([snapshot(2, 10), snapshot(1, 20)])

    result = runner.invoke(app, ["stats", "--json", "--last", "90m"], env=settings_env(settings))

    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["latest"]["active_markets"] == 20
    assert data["latest"]["vw_yes_price"] is None
    assert [point["active_markets"] for point in data["trend"]] == [20]


def test_no_snapshot_yet(settings: Settings, snapshots: Any) -> None:
    result = runner.invoke(app, ["stats"], env=settings_env(settings))

    assert result.exit_code == 0, result.output
    assert "no stats snapshot yet" in result.output


def test_bad_period_is_refused_with_a_hint(settings: Settings) -> None:
    result = runner.invoke(app, ["stats", "--last", "yesterday"], env=settings_env(settings))

    assert result.exit_code == 2
    assert "e.g. 24h" in result.output


def test_unreachable_database_exits_2_without_the_password(make_settings: Any) -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(mongo_url=f"mongodb://user:hunter2@127.0.0.1:{port}/", mongo_timeout_s=0.5)

    result = runner.invoke(app, ["stats"], env=settings_env(settings))

    assert result.exit_code == 2
    assert "cannot reach MongoDB" in result.output
    assert "hunter2" not in result.output
