"""Bulk writes are bounded by `PULSE_STORE_WRITE_BATCH`, at ten times `pulse up`'s catalogue.

`pulse up` starts the simulator with its default catalogue (`SimConfig.markets`, 1,000
markets); here market_sync syncs ten times that three ways (all new, many changed, all
vanished) while a PyMongo command listener sees every write command on the wire: none
may name more documents than the bound, whether as statements (`documents`, `updates`,
`deletes`) or as ids in an `$in` filter, nor touch more (the reply's `n`).
"""

from __future__ import annotations

from typing import Any

import httpx
from pymongo import AsyncMongoClient, monitoring

from services.market_sync.sync import sync_markets
from services.whale_sync.whales import note_on_markets, store_trades
from shared.names import Collections
from shared.providers import NoLimit, PolymarketProvider
from shared.providers.simprocess import simulator_process
from shared.providers.simulator import SimConfig
from shared.schemas import WhaleTradeDoc, utcnow
from shared.settings import Settings
from shared.store import Document

CATALOGUE = 10 * SimConfig().markets
WRITE_COMMANDS = {"insert": "documents", "update": "updates", "delete": "deletes"}


class WriteSizes(monitoring.CommandListener):
    """The largest number of documents each kind of write command named."""

    def __init__(self) -> None:
        self.largest: dict[str, int] = {}
        self.commands = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        field = WRITE_COMMANDS.get(event.command_name)
        if field is None:
            return
        statements = event.command.get(field, [])
        self.commands += 1
        self._note(event.command_name, len(statements))
        for statement in statements:
            ids = (statement.get("q") or {}).get("_id")
            if isinstance(ids, dict) and "$in" in ids:
                self._note(f"{event.command_name} $in", len(ids["$in"]))

    def _note(self, kind: str, size: int) -> None:
        self.largest[kind] = max(self.largest.get(kind, 0), size)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        # An update_many by filter names one statement but may touch any number of documents.
        if event.command_name in WRITE_COMMANDS:
            self._note(f"{event.command_name} touched", int(event.reply.get("n", 0)))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


async def _no_checkpoint(progress: dict[str, Any]) -> None:
    return None


async def test_market_sync_at_ten_times_the_catalogue_never_writes_more_than_the_bound(
    settings: Settings, mongo: AsyncMongoClient[Document]
) -> None:
    bound = settings.store_write_batch
    sizes = WriteSizes()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongo_url.get_secret_value(), tz_aware=True, event_listeners=[sizes]
    )
    db = client[settings.mongo_db]
    markets = db[Collections.MARKETS]
    try:
        with simulator_process(markets=CATALOGUE, seed=3, extra=["--move-every-s", "10"]) as sim:
            sim_settings = settings.model_copy(update={"polymarket_gamma_url": sim.url, "page_size": 500})
            async with httpx.AsyncClient(timeout=30) as http:
                provider = PolymarketProvider(sim_settings, http, NoLimit())
                first = await sync_markets(db, provider, checkpoint=_no_checkpoint, chunk_size=bound)
                stored = await markets.count_documents({})
                assert first.complete
                assert first.inserted == stored > CATALOGUE * 0.9

                async with httpx.AsyncClient() as control:
                    await control.post(f"{sim.url}/_sim/advance", json={"seconds": 3600})
                second = await sync_markets(db, provider, checkpoint=_no_checkpoint, chunk_size=bound)
                assert second.updated > bound  # many changed markets: several bulk writes' worth
                assert second.updated + second.unchanged == stored

                active = await markets.count_documents({"active": True})
                async with httpx.AsyncClient() as control:
                    await control.post(f"{sim.url}/_sim/catalogue", json={"markets": 0})
                third = await sync_markets(db, provider, checkpoint=_no_checkpoint, chunk_size=bound)
                assert third.deactivated == active > bound  # closed markets were inactive already
                assert await markets.count_documents({"active": True}) == 0
    finally:
        await client.close()

    assert sizes.commands > 0
    assert set(sizes.largest) >= {"insert", "update", "update touched"}, sizes.largest
    assert all(size <= bound for size in sizes.largest.values()), sizes.largest


async def test_whale_writes_are_split_into_bounded_bulk_writes(
    settings: Settings, mongo: AsyncMongoClient[Document]
) -> None:
    sizes = WriteSizes()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongo_url.get_secret_value(), tz_aware=True, event_listeners=[sizes]
    )
    db = client[settings.mongo_db]
    now = utcnow()
    trades = [
        WhaleTradeDoc.model_validate(
            {
                "_id": f"t{i}",
                "provider": "polymarket",
                "market": f"c{i % 700}",
                "wallet": "0xabc",
                "side": "BUY",
                "size": 20_000.0,
                "price": 0.5,
                "notional": 10_000.0,
                "traded_at": now,
                "transaction_hash": f"0x{i:064x}",
                "ingested_at": now,
            }
        )
        for i in range(2_500)
    ]
    try:
        assert await store_trades(db, trades, write_batch=1000) == 2_500
        assert await store_trades(db, trades, write_batch=1000) == 0
        await note_on_markets(db, "polymarket", trades, write_batch=300)
    finally:
        await client.close()
    assert sizes.largest["update"] == 1000
