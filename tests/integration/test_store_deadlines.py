"""A hung store (the embedded store's process stopped with SIGSTOP) is a clear, retryable
error within the deadline, never a hang; `/readyz` turns red within its read deadline.

The store here is a child of this module (`start_embedded_mongo`), so stopping it
disturbs no other test. SIGSTOP keeps its socket open: connections succeed at the TCP
level and then nothing answers, which is exactly what a hung store looks like.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pymongo
import pytest

from shared.errors import RetryableError, StoreUnavailable
from shared.localstack import start_embedded_mongo
from shared.runtime import HttpServer, JobContext, Worker, job
from shared.runtime._health import STORE_READ_TIMEOUT_S, store_readable
from shared.runtime._service import worker_app
from shared.settings import Settings
from shared.store import make_client, store_deadline, store_errors
from tests.helpers import wait_for
from tests.integration.test_runtime_support import policy

OP_TIMEOUT_S = 1.0
#: Set-up calls and calls after a thaw get this much: a cold or thawed JVM on a loaded
#: machine may take seconds to answer, which is not what these tests measure.
AFTER_THAW_S = 20.0


class HungStore:
    """The module's own embedded store, which a test can freeze and thaw."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.url = f"mongodb://127.0.0.1:{port}"

    def freeze(self) -> None:
        """Stop the store's process; return once the kernel reports every thread stopped."""
        os.kill(self.process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not self.frozen():
            assert time.monotonic() < deadline, "the store process did not stop"
            time.sleep(0.01)

    def frozen(self) -> bool:
        tasks = Path(f"/proc/{self.process.pid}/task")
        states = [(task / "stat").read_text().rsplit(") ", 1)[-1][:1] for task in tasks.iterdir()]
        return all(state in "Tt" for state in states)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def store_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HungStore]:
    process, port = start_embedded_mongo(tmp_path_factory.mktemp("hung-store"))
    store = HungStore(process, port)
    try:
        yield store
    finally:
        store.thaw()
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def store(store_process: HungStore) -> Iterator[HungStore]:
    yield store_process
    store_process.thaw()  # a failed test must not leave the store frozen for the next


@pytest.fixture
def hung_settings(make_settings: Callable[..., Settings], store: HungStore) -> Settings:
    return make_settings(mongo_url=store.url, mongo_op_timeout_s=OP_TIMEOUT_S, mongo_timeout_s=2.0)


async def test_a_call_to_a_hung_store_fails_within_the_deadline_as_store_unavailable(
    hung_settings: Settings, store: HungStore
) -> None:
    client = make_client(hung_settings)
    collection = client[hung_settings.mongo_db]["things"]
    try:
        with pymongo.timeout(AFTER_THAW_S):
            await collection.insert_one({"_id": "a"})  # the connection is up and pooled
        store.freeze()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info, store_errors("reading things"):
            await collection.find_one({"_id": "a"})
        elapsed = time.monotonic() - started
        assert OP_TIMEOUT_S * 0.8 <= elapsed < OP_TIMEOUT_S + 1.5, elapsed
        assert isinstance(info.value, RetryableError)
        assert "reading things: the store did not answer within its deadline" in str(info.value)
        assert isinstance(info.value.__cause__, pymongo.errors.PyMongoError)

        store.thaw()
        with pymongo.timeout(AFTER_THAW_S):  # and it recovers by itself
            assert await collection.find_one({"_id": "a"}) == {"_id": "a"}
    finally:
        store.thaw()
        with pymongo.timeout(AFTER_THAW_S):
            await client.drop_database(hung_settings.mongo_db)
        await client.close()


async def test_a_deadline_block_bounds_its_calls_by_its_own_deadline(hung_settings: Settings, store: HungStore) -> None:
    """A block longer than the client's deadline is allowed, but a hung store still fails it at its bound."""
    client = make_client(hung_settings.model_copy(update={"mongo_op_timeout_s": 30.0}))
    collection = client[hung_settings.mongo_db]["things"]
    try:
        with pymongo.timeout(AFTER_THAW_S):
            await collection.insert_one({"_id": "b"})
        store.freeze()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="long block"), store_deadline(0.5, "long block"):
            await collection.find_one({"_id": "b"})
        assert time.monotonic() - started < 2.0  # the block's 0.5 s, not the client's 30 s
    finally:
        store.thaw()
        with pymongo.timeout(AFTER_THAW_S):
            await client.drop_database(hung_settings.mongo_db)
        await client.close()


async def test_other_store_errors_pass_through_unchanged(hung_settings: Settings) -> None:
    """A duplicate key is an answer, not silence: it is not turned into StoreUnavailable."""
    client = make_client(hung_settings)
    collection = client[hung_settings.mongo_db]["things"]
    try:
        with pymongo.timeout(AFTER_THAW_S):
            await collection.insert_one({"_id": "c"})
            with pytest.raises(pymongo.errors.DuplicateKeyError), store_errors("inserting"):
                await collection.insert_one({"_id": "c"})
            await client.drop_database(hung_settings.mongo_db)
    finally:
        await client.close()


async def test_store_readable_is_false_within_its_deadline_on_a_hung_store(
    hung_settings: Settings, store: HungStore
) -> None:
    client = make_client(hung_settings)
    db = client[hung_settings.mongo_db]
    try:
        assert await store_readable(db, AFTER_THAW_S) is True
        store.freeze()
        started = time.monotonic()
        assert await store_readable(db) is False
        assert time.monotonic() - started < STORE_READ_TIMEOUT_S + 1.0
        store.thaw()
        assert await wait_for(lambda: store_readable(db), timeout_s=AFTER_THAW_S, what="readable after the thaw")
    finally:
        store.thaw()
        await client.close()


@job("idle", policy=policy())
async def idle(ctx: JobContext) -> None:
    return None


async def test_readyz_turns_red_while_the_store_hangs_and_green_after(
    hung_settings: Settings, store: HungStore
) -> None:
    worker = Worker(hung_settings, [idle])
    app = worker_app(worker, stop_timeout_s=5)
    http = HttpServer(app, "127.0.0.1", 0)
    await http.start()
    try:
        async with (
            app.start_lifespan_context(),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http.port}", timeout=10) as client,
        ):

            async def _status(expected: int) -> bool:
                return (await client.get("/readyz")).status_code == expected

            await wait_for(lambda: _status(200), timeout_s=10, what="ready")
            store.freeze()
            started = time.monotonic()
            response = await client.get("/readyz")
            took = time.monotonic() - started
            assert response.status_code == 503
            assert response.json()["checks"]["mongo"] is False
            assert response.json()["checks"]["nats"] is True
            assert took < STORE_READ_TIMEOUT_S + 1.0, took
            store.thaw()
            await wait_for(lambda: _status(200), timeout_s=AFTER_THAW_S, what="ready again after the store answers")
    finally:
        store.thaw()
        await http.stop()
        mongo = make_client(hung_settings)
        with pymongo.timeout(AFTER_THAW_S):
            await mongo.drop_database(hung_settings.mongo_db)
        await mongo.close()
