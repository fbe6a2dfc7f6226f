"""Real servers for every integration test.

Chosen in this order, once per test session:
1. URLs from the environment: PULSE_TEST_NATS_URL and PULSE_TEST_MONGO_URL (either one
   alone is used too: the other server is then started locally, never silently replaced);
2. testcontainers (NATS with -js, MongoDB) when a Docker engine answers;
3. otherwise the local launcher (`shared.localstack`): nats-server and the embedded store
   (mongo-java-server; `PULSE_LOCAL_STORE=ferretdb` picks FerretDB 1.24 instead).

Each test is isolated by its own namespace (stream, subject and bucket prefix) and its
own database name, so tests share servers but never each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

# Imported early on purpose: hypothesis's pytest plugin importing it late trips a CPython
# 3.11.7 bug (gh-106905, "AST constructor recursion depth mismatch") at session end.
import hypothesis
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pymongo import AsyncMongoClient

from shared.bus import connect_nats, ensure_topology
from shared.settings import Settings, load_settings
from shared.store import Database, Document, ensure_indexes, make_client
from tests.helpers import FULL_PROPERTY_RUNS

# Property tests: the full number of examples in CI (which sets CI=true), a light run
# locally. Tests that name their own count scale it with `tests.helpers.examples`.
hypothesis.settings.register_profile("ci", max_examples=100, deadline=None)
hypothesis.settings.register_profile("dev", max_examples=15, deadline=None)
hypothesis.settings.load_profile("ci" if FULL_PROPERTY_RUNS else "dev")

NATS_IMAGE = "nats:2.12-alpine"
MONGO_IMAGE = "mongo:7"


@dataclass(frozen=True)
class Servers:
    nats_url: str
    mongo_url: str
    origin: str


def docker_available() -> bool:
    try:
        from testcontainers.core.docker_client import DockerClient

        return bool(DockerClient().client.ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    nats_url = os.environ.get("PULSE_TEST_NATS_URL")
    mongo_url = os.environ.get("PULSE_TEST_MONGO_URL")
    if nats_url and mongo_url:
        yield Servers(nats_url, mongo_url, "environment")
        return
    if nats_url or mongo_url:
        # One URL given: use it, start only the other. (Ignoring a lone PULSE_TEST_MONGO_URL
        # once ran a whole measurement on the local FerretDB instead of the server meant.)
        from shared.localstack import local_servers

        with local_servers(tmp_path_factory.mktemp("servers"), nats=not nats_url, mongo=not mongo_url) as local:
            yield Servers(nats_url or local.nats_url, mongo_url or local.mongo_url, "environment+local")
        return
    if docker_available():
        from testcontainers.community.mongodb import MongoDbContainer
        from testcontainers.community.nats import NatsContainer

        with NatsContainer(NATS_IMAGE, jetstream=True) as nats_c, MongoDbContainer(MONGO_IMAGE) as mongo_c:
            yield Servers(nats_c.nats_uri(), mongo_c.get_connection_url(), "testcontainers")
        return
    from shared.localstack import local_servers

    with local_servers(tmp_path_factory.mktemp("servers")) as local:
        yield Servers(local.nats_url, local.mongo_url, "local")


def settings_env(settings: Settings) -> dict[str, str]:
    """The PULSE_* environment that reproduces `settings` in a subprocess."""
    return {
        "PULSE_NATS_URL": settings.nats_url,
        "PULSE_MONGO_URL": settings.mongo_url.get_secret_value(),
        "PULSE_MONGO_DB": settings.mongo_db,
        "PULSE_NAMESPACE": settings.namespace,
        "PULSE_HEARTBEAT_INTERVAL_S": str(settings.heartbeat_interval_s),
        "PULSE_ACK_WAIT_S": str(settings.ack_wait_s),
        "PULSE_LOGS_MAX_BYTES": str(settings.logs_max_bytes),
        "PULSE_HTTP_PORT": str(settings.http_port),
        "PULSE_NATS_CONNECT_TIMEOUT_S": str(settings.nats_connect_timeout_s),
        "PULSE_MONGO_TIMEOUT_S": str(settings.mongo_timeout_s),
        "PULSE_LOG_LEVEL": settings.log_level,
        "PULSE_POLYMARKET_GAMMA_URL": settings.polymarket_gamma_url,
        "PULSE_POLYMARKET_DATA_URL": settings.polymarket_data_url,
    }


@pytest.fixture
def make_settings(servers: Servers) -> Any:
    """Factory: isolated settings for this test, with any overrides."""
    token = uuid.uuid4().hex[:10]

    def _make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "nats_url": servers.nats_url,
            "mongo_url": servers.mongo_url,
            "mongo_db": f"t{token}",
            "namespace": f"t{token}",
            "http_port": 0,
            "heartbeat_interval_s": 0.5,
            "ack_wait_s": 3.0,
            "nats_connect_timeout_s": 3.0,
            "mongo_timeout_s": 3.0,
            # JetStream reserves a stream's max_bytes from the server's storage limit (75% of
            # the free disk) when the stream is created, and every test's namespace has its own
            # LOGS stream on the one session server: at the default 256 MiB, some 200 namespaces
            # exhaust it ("insufficient storage resources", seen at ~850 tests on 73 GB free).
            "logs_max_bytes": 4 * 1024 * 1024,
        }
        values.update(overrides)
        return load_settings(**values)

    return _make


@pytest.fixture
def settings(make_settings: Any) -> Settings:
    result: Settings = make_settings()
    return result


@pytest.fixture
async def nats_client(settings: Settings) -> AsyncIterator[NatsClient]:
    client = await connect_nats(settings, name="tests")
    yield client
    await client.close()


@pytest.fixture
async def js(nats_client: NatsClient, settings: Settings) -> JetStreamContext:
    """JetStream with this test's streams, buckets and consumers set up."""
    context = nats_client.jetstream()
    await ensure_topology(context, settings)
    return context


@pytest.fixture
async def mongo(settings: Settings) -> AsyncIterator[AsyncMongoClient[Document]]:
    client = make_client(settings)
    yield client
    await client.drop_database(settings.mongo_db)
    await client.close()


@pytest.fixture
async def db(mongo: AsyncMongoClient[Document], settings: Settings) -> Database:
    database = mongo[settings.mongo_db]
    await ensure_indexes(database)
    return database
