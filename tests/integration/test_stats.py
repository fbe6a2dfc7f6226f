"""The stats snapshot against a real MongoDB-compatible store, checked against figures computed here."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.stats.stats import TOP_MARKETS, compute_stats, previous_snapshot, snapshot_id, take_snapshot
from shared.names import Collections
from shared.store import Database

SLOT = datetime(2026, 11, 29, 15, 0, tzinfo=UTC)


def market(
    i: int, *, yes: float | None, vol24: float | None, total: float | None, active: bool = True
) -> dict[str, Any]:
    return {
        "_id": f"polymarket:{i}",
        "provider": "polymarket",
        "market_id": str(i),
        "question": f"Will thing {i} happen?",
        "yes_price": yes,
        "no_price": None if yes is None else 1 - yes,
        "volume_total": total,
        "volume_24h": vol24,
        "liquidity": 10.0,
        "active": active,
        "closed": not active,
    }


def trade(i: int, *, at: datetime, notional: float) -> dict[str, Any]:
    return {"_id": f"t{i}", "market": f"polymarket:{i % 7}", "notional": notional, "traded_at": at, "ingested_at": at}


def expected(markets: list[dict[str, Any]], trades: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures, the slow way: every document in Python."""
    priced = [m for m in markets if m["yes_price"] is not None]
    weight = sum(m["volume_24h"] for m in priced if m["volume_24h"] is not None)
    in_window = [t for t in trades if SLOT - timedelta(hours=1) <= t["traded_at"] < SLOT]
    ranked = sorted((m for m in markets if m["volume_24h"] is not None), key=lambda m: (-m["volume_24h"], m["_id"]))
    return {
        "total_markets": len(markets),
        "active_markets": sum(1 for m in markets if m["active"]),
        "priced_markets": len(priced),
        "volume_total": sum(m["volume_total"] for m in markets if m["volume_total"] is not None),
        "volume_24h": sum(m["volume_24h"] for m in markets if m["volume_24h"] is not None),
        "avg_yes_price": sum(m["yes_price"] for m in priced) / len(priced) if priced else None,
        "vw_yes_price": (
            sum(m["yes_price"] * m["volume_24h"] for m in priced if m["volume_24h"] is not None) / weight
            if weight
            else None
        ),
        "whale_trades_1h": len(in_window),
        "whale_notional_1h": sum(t["notional"] for t in in_window),
        "top": [m["_id"] for m in ranked[:TOP_MARKETS]],
    }


def assert_matches(stats: Any, want: dict[str, Any]) -> None:
    for key in ("total_markets", "active_markets", "priced_markets", "whale_trades_1h"):
        assert getattr(stats, key) == want[key], key
    for key in ("volume_total", "volume_24h", "whale_notional_1h", "avg_yes_price", "vw_yes_price"):
        got, exp = getattr(stats, key), want[key]
        if exp is None:
            assert got is None, key
        else:
            assert got == pytest.approx(exp, rel=1e-9), key
    assert [m.market for m in stats.top_markets] == want["top"]


async def test_snapshot_figures_match_an_independent_computation(db: Database) -> None:
    rng = random.Random(6)
    markets = []
    for i in range(300):
        # Every shape market_sync may store: missing prices, missing volumes, closed markets.
        yes = None if i % 11 == 0 else round(rng.random(), 4)
        vol24 = None if i % 13 == 0 else round(rng.random() * 50_000, 2)
        total = None if i % 17 == 0 else round(rng.random() * 1e6, 2)
        markets.append(market(i, yes=yes, vol24=vol24, total=total, active=i % 4 != 0))
    markets.append(market(999, yes=0.5, vol24=0, total=0))  # zero volume, integer-valued
    trades = [
        trade(i, at=SLOT - timedelta(minutes=rng.randint(0, 150)), notional=rng.uniform(1e4, 1e6)) for i in range(80)
    ]
    trades.append(trade(1000, at=SLOT - timedelta(hours=1), notional=20_000))  # window start: inside
    trades.append(trade(1001, at=SLOT, notional=30_000))  # window end: outside (next snapshot)
    await db[Collections.MARKETS].insert_many(markets)
    await db[Collections.WHALE_TRADES].insert_many(trades)

    stats = await compute_stats(db, window_end=SLOT)

    assert_matches(stats, expected(markets, trades))
    assert stats.total_markets == 301
    assert stats.top_markets[0].question is not None


async def test_empty_database_gives_zero_counts_and_null_averages(db: Database) -> None:
    stats = await compute_stats(db, window_end=SLOT)

    assert (stats.total_markets, stats.active_markets, stats.whale_trades_1h) == (0, 0, 0)
    assert (stats.volume_total, stats.volume_24h, stats.whale_notional_1h) == (0.0, 0.0, 0.0)
    assert stats.avg_yes_price is None
    assert stats.vw_yes_price is None
    assert stats.top_markets == []


async def test_single_market(db: Database) -> None:
    only = market(1, yes=0.25, vol24=400.0, total=9000.0, active=False)
    await db[Collections.MARKETS].insert_one(only)

    stats = await compute_stats(db, window_end=SLOT)

    assert_matches(stats, expected([only], []))
    assert stats.avg_yes_price == pytest.approx(0.25)
    assert stats.vw_yes_price == pytest.approx(0.25)
    assert stats.active_markets == 0
    assert [(m.market, m.volume_24h, m.yes_price) for m in stats.top_markets] == [("polymarket:1", 400.0, 0.25)]


async def test_unpriced_markets_give_null_averages_but_count(db: Database) -> None:
    await db[Collections.MARKETS].insert_many(
        [market(1, yes=None, vol24=50.0, total=None), market(2, yes=None, vol24=None, total=1.0)]
    )

    stats = await compute_stats(db, window_end=SLOT)

    assert (stats.total_markets, stats.priced_markets, stats.volume_24h, stats.volume_total) == (2, 0, 50.0, 1.0)
    assert stats.avg_yes_price is None
    assert stats.vw_yes_price is None


async def test_retried_run_replaces_its_snapshot_and_old_snapshots_expire(db: Database) -> None:
    now = SLOT + timedelta(minutes=1)
    snapshots = db[Collections.MARKET_STATS]
    await snapshots.insert_many(
        [
            {"_id": "too-old", "computed_at": now - timedelta(days=30, seconds=1)},
            {"_id": "just-inside", "computed_at": now - timedelta(days=30) + timedelta(minutes=1)},
        ]
    )
    await db[Collections.MARKETS].insert_one(market(1, yes=0.5, vol24=10.0, total=10.0))

    first = await take_snapshot(db, slot=SLOT, now=now, retention_days=30, run_id="stats:x")
    await db[Collections.MARKETS].insert_one(market(2, yes=0.5, vol24=10.0, total=10.0))
    again = await take_snapshot(db, slot=SLOT, now=now + timedelta(seconds=5), retention_days=30, run_id="stats:x")

    ids = sorted([doc["_id"] async for doc in snapshots.find({}, {"_id": 1})])
    assert ids == sorted(["just-inside", snapshot_id(SLOT)])
    assert first["expired_snapshots"] == 1
    assert again["expired_snapshots"] == 0
    stored = await snapshots.find_one({"_id": snapshot_id(SLOT)})
    assert stored is not None
    assert stored["total_markets"] == 2  # the retry's figures replaced the first attempt's
    assert stored["slot"] == SLOT
    assert stored["run_id"] == "stats:x"


@pytest.mark.parametrize("change", [1.0, 1.5, 0.95, 0.5, 0.0])
async def test_the_previous_snapshots_volume_floor_never_changes_the_top_markets(db: Database, change: float) -> None:
    """The floor narrows the query; volumes that rose, held, fell a little or collapsed since
    the previous snapshot (the floor then finds too few) give the unnarrowed answer."""
    rng = random.Random(7)
    markets = [market(i, yes=0.5, vol24=round(rng.random() * 1e4, 2), total=1.0) for i in range(200)]
    await db[Collections.MARKETS].insert_many(markets)
    await take_snapshot(db, slot=SLOT - timedelta(hours=1), now=SLOT, retention_days=30)
    for m in markets:  # an hour later every volume has moved by `change`, ties and zeros included
        m["volume_24h"] = round(m["volume_24h"] * change, 2)
        await db[Collections.MARKETS].replace_one({"_id": m["_id"]}, m)

    previous = await previous_snapshot(db, before=SLOT)
    stats = await compute_stats(db, window_end=SLOT, previous=previous)

    assert previous is not None
    assert len(previous.top_markets) == TOP_MARKETS
    assert [m.market for m in stats.top_markets] == expected(markets, [])["top"]


async def test_the_previous_snapshot_is_the_latest_slot_before_this_one(db: Database) -> None:
    # Taken out of slot order, each with a different market count to tell them apart.
    for hours, count in ((3, 1), (1, 3), (2, 2), (-1, 4)):  # -1: a later slot, not "before"
        await db[Collections.MARKETS].delete_many({})
        await db[Collections.MARKETS].insert_many([market(i, yes=0.5, vol24=10.0, total=1.0) for i in range(count)])
        await take_snapshot(db, slot=SLOT - timedelta(hours=hours), now=SLOT, retention_days=30)

    previous = await previous_snapshot(db, before=SLOT)
    earlier = await previous_snapshot(db, before=SLOT - timedelta(hours=1))
    first = await previous_snapshot(db, before=SLOT - timedelta(hours=3))

    assert previous is not None
    assert previous.total_markets == 3
    assert earlier is not None
    assert earlier.total_markets == 2
    assert first is None
