"""Live pages over Server-Sent Events: ids from the EVENTS stream, and a reconnect that misses nothing."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from html import unescape

import httpx
import pytest
from nats.js import JetStreamContext

from services.dashboard import sources
from shared.names import Collections
from shared.schemas import utcnow
from shared.settings import Settings
from shared.store import Database
from tests.dashboard.support import Running
from tests.helpers import wait_for

Block = dict[str, str]


async def blocks(response: httpx.Response) -> AsyncIterator[Block]:
    """The SSE blocks of a response (`event`, `id`, `data`); comments and the `retry:` advice left out."""
    block: Block = {}
    async for line in response.aiter_lines():
        if line == "":
            if block.keys() - {"retry"}:
                yield block
            block = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        block[field] = f"{block[field]}\n{value}" if field == "data" and field in block else value


async def rows_until(stream: AsyncIterator[Block], last_run_id: str) -> list[tuple[int, str]]:
    """(id, run id) of every `row` block until the one of `last_run_id`."""
    seen = []
    async with asyncio.timeout(20):
        async for block in stream:
            if block.get("event") != "row":
                continue
            run_id = re.search(r'data-run-id="([^"]+)"', block["data"])
            assert run_id is not None, block
            seen.append((int(block["id"]), unescape(run_id.group(1))))
            if seen[-1][1] == last_run_id:
                return seen
    raise AssertionError("the stream ended")


async def finished(db: Database, js: JetStreamContext, settings: Settings, n: int) -> tuple[str, int]:
    """A completed run's record and its run event on EVENTS; its run id and the event's sequence."""
    run_id = f"stats:manual:live{n}"
    now = utcnow()
    await db[Collections.RUNS].insert_one(
        {"_id": run_id, "job": "stats", "trigger": "manual", "status": "completed", "scheduled_for": now,
         "started_at": now, "ended_at": now, "attempts": []}
    )  # fmt: skip
    event = {"run_id": run_id, "job": "stats", "status": "completed", "attempts": 1}
    ack = await js.publish(settings.names.run_event_subject("stats", "completed"), json.dumps(event).encode())
    return run_id, ack.seq


async def test_a_reconnect_with_last_event_id_gets_every_missed_event_once(
    dashboard: Running, client: httpx.AsyncClient, js: JetStreamContext, db: Database, dash_settings: Settings
) -> None:
    hub = dashboard.dashboard.sources.hub
    async with client.stream("GET", "/events?page=runs") as first:
        stream = blocks(first)
        await wait_for(lambda: _listening(hub, 1), timeout_s=10, what="the page's stream to listen")
        run1, seq1 = await finished(db, js, dash_settings, 1)
        assert await rows_until(stream, run1) == [(seq1, run1)]
    # Disconnected: three runs end meanwhile.
    missed = [await finished(db, js, dash_settings, n) for n in (2, 3, 4)]
    await wait_for(lambda: _reached(hub, missed[-1][1]), timeout_s=10, what="the feed to hear them")

    async with client.stream("GET", "/events?page=runs", headers={"Last-Event-ID": str(seq1)}) as again:
        stream = blocks(again)
        replayed = await rows_until(stream, missed[-1][0])
        await wait_for(lambda: _listening(hub, 1), timeout_s=10, what="the page's stream to listen")
        run5, seq5 = await finished(db, js, dash_settings, 5)
        live = await rows_until(stream, run5)
    assert replayed == [(seq, run_id) for run_id, seq in missed]
    assert live == [(seq5, run5)]  # the replayed ones are not sent again


async def test_a_page_starts_its_stream_where_it_was_rendered(
    dashboard: Running, client: httpx.AsyncClient, js: JetStreamContext, db: Database, dash_settings: Settings
) -> None:
    hub = dashboard.dashboard.sources.hub
    _, seq1 = await finished(db, js, dash_settings, 1)
    await wait_for(lambda: _reached(hub, seq1), timeout_s=10, what="the feed to hear the run")
    page = (await client.get("/runs")).text
    live_url = unescape(re.search(r'data-live="([^"]+)"', page).group(1))  # type: ignore[union-attr]
    assert live_url.endswith(f"last_event_id={seq1}")
    run2, seq2 = await finished(db, js, dash_settings, 2)  # ends between the render and the stream's start
    async with client.stream("GET", live_url) as response:
        assert await rows_until(blocks(response), run2) == [(seq2, run2)]


async def test_a_page_that_missed_too_much_is_told_to_reload(
    dashboard: Running, client: httpx.AsyncClient, js: JetStreamContext, db: Database, dash_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(sources, "REPLAY_LIMIT", 2)
    for n in (1, 2, 3):
        await finished(db, js, dash_settings, n)
    async with client.stream("GET", "/events?page=runs", headers={"Last-Event-ID": "0"}) as response:
        async with asyncio.timeout(20):
            first = await anext(blocks(response))
    assert first["event"] == "reset"


async def _listening(hub: sources.EventHub, pages: int) -> bool:
    return hub.listeners >= pages


async def _reached(hub: sources.EventHub, seq: int) -> bool:
    return hub.last_seq >= seq


async def test_an_id_beyond_the_streams_end_does_not_hold_back_new_events(
    dashboard: Running, client: httpx.AsyncClient, js: JetStreamContext, db: Database, dash_settings: Settings
) -> None:
    """A browser's id from before EVENTS was recreated (its sequences start again at 1)."""
    hub = dashboard.dashboard.sources.hub
    async with client.stream("GET", "/events?page=runs", headers={"Last-Event-ID": "999999"}) as response:
        stream = blocks(response)
        await wait_for(lambda: _listening(hub, 1), timeout_s=10, what="the page's stream to listen")
        run1, seq1 = await finished(db, js, dash_settings, 1)
        assert await rows_until(stream, run1) == [(seq1, run1)]


async def test_a_page_slower_than_its_queue_reads_what_it_dropped_from_the_stream(
    dashboard: Running, client: httpx.AsyncClient, js: JetStreamContext, db: Database, dash_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from services.dashboard import pages

    monkeypatch.setattr(sources, "QUEUE_SIZE", 2)
    hub = dashboard.dashboard.sources.hub
    release = asyncio.Event()
    render = pages._block

    async def slow_block(*args: object) -> str:
        await release.wait()  # the page is stuck on its first event while five more arrive
        return await render(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pages, "_block", slow_block)
    async with client.stream("GET", "/events?page=runs") as response:
        stream = blocks(response)
        await wait_for(lambda: _listening(hub, 1), timeout_s=10, what="the page's stream to listen")
        ended = [await finished(db, js, dash_settings, n) for n in range(1, 7)]
        await wait_for(lambda: _reached(hub, ended[-1][1]), timeout_s=10, what="the feed to hear them")
        release.set()
        rows = await rows_until(stream, ended[-1][0])
    assert rows == [(seq, run_id) for run_id, seq in ended]


def _live_streams(metrics: str) -> float:
    found = re.search(r"^pulse_dashboard_live_streams (\S+)$", metrics, re.MULTILINE)
    assert found is not None, "no pulse_dashboard_live_streams gauge on /metrics"
    return float(found.group(1))


@pytest.mark.parametrize("page", ["overview", "runs"])
async def test_a_stream_ends_when_its_client_disconnects(
    dashboard: Running, client: httpx.AsyncClient, page: str
) -> None:
    hub = dashboard.dashboard.sources.hub
    before = hub.listeners
    assert _live_streams((await client.get("/metrics")).text) == before
    # A client of its own, closed on leaving: its connection goes, not back to a pool.
    async with (
        httpx.AsyncClient(base_url=dashboard.url, timeout=20) as viewer,
        viewer.stream("GET", f"/events?page={page}") as response,
    ):
        assert response.status_code == 200
        await wait_for(lambda: _listening(hub, before + 1), timeout_s=10, what="the page's stream to listen")
        assert _live_streams((await client.get("/metrics")).text) == before + 1
    # The viewer has disconnected: the stream must let go of its hub queue.

    async def released() -> bool:
        return hub.listeners == before

    await wait_for(released, timeout_s=10, what="the stream to end after the disconnect")
    assert _live_streams((await client.get("/metrics")).text) == before


@pytest.mark.parametrize("header", [{"Last-Event-ID": b"\xb2"}, {"Last-Event-ID": b"12x"}, {}])
async def test_a_last_event_id_that_is_not_ascii_digits_is_ignored(
    dashboard: Running, client: httpx.AsyncClient, js: JetStreamContext, db: Database, dash_settings: Settings,
    header: dict[str, bytes],
) -> None:  # fmt: skip
    hub = dashboard.dashboard.sources.hub
    url = "/events?page=runs" if header else "/events?page=runs&last_event_id=%C2%B2"  # "²" in the query
    async with client.stream("GET", url, headers=header) as response:
        stream = blocks(response)
        await wait_for(lambda: _listening(hub, 1), timeout_s=10, what="the page's stream to listen")
        run1, seq1 = await finished(db, js, dash_settings, 1)
        assert await rows_until(stream, run1) == [(seq1, run1)]
