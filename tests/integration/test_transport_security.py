"""TLS to NATS (server TLS and mutual TLS) and to the store, from settings, against real
servers with certificates made in the test; a rotated NATS password file is picked up at
the next reconnect, without a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.bus import connect_broker, connect_nats, ensure_topology
from shared.errors import BusUnavailable, StoreUnavailable
from shared.localstack import start_embedded_mongo
from shared.runtime import ServiceBroker
from shared.settings import Settings
from shared.store import connect_store
from tests.helpers import wait_for
from tests.tlsfiles import Certificates, configured_nats, make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _tls_block(certs: Certificates, *, verify: bool) -> str:
    lines = [f'cert_file: "{certs.server_cert}"', f'key_file: "{certs.server_key}"']
    if verify:
        lines += [f'ca_file: "{certs.ca}"', "verify: true"]
    return "tls {\n  " + "\n  ".join(lines) + "\n}"


async def _round_trip(settings: Settings) -> None:
    """Connect with nats-py and with a FastStream broker, and use JetStream through both."""
    client = await connect_nats(settings, name="tls-test")
    try:
        await ensure_topology(client.jetstream(), settings, jobs=())
        assert client.is_connected
    finally:
        await client.close()
    broker = ServiceBroker(settings, name="tls-broker")
    try:
        connected = await connect_broker(broker, settings)
        assert (await connected.jetstream().account_info()).streams >= 1
    finally:
        await broker.stop()


async def test_nats_over_tls_with_the_ca_from_settings(
    make_settings: Callable[..., Settings], certs: Certificates, tmp_path: Path
) -> None:
    with configured_nats(tmp_path, _tls_block(certs, verify=False)) as server:
        url = f"tls://127.0.0.1:{server.port}"
        await _round_trip(make_settings(nats_url=url, nats_tls_ca_file=certs.ca))

        # Without our CA the server's certificate is not trusted: refused, clearly.
        with pytest.raises(BusUnavailable, match="cannot reach NATS"):
            await connect_nats(make_settings(nats_url=url), name="untrusting", timeout_s=3)


async def test_nats_mutual_tls_needs_the_client_certificate(
    make_settings: Callable[..., Settings], certs: Certificates, tmp_path: Path
) -> None:
    with configured_nats(tmp_path, _tls_block(certs, verify=True)) as server:
        url = f"tls://127.0.0.1:{server.port}"
        await _round_trip(
            make_settings(
                nats_url=url,
                nats_tls_ca_file=certs.ca,
                nats_tls_cert_file=certs.client_cert,
                nats_tls_key_file=certs.client_key,
            )
        )
        with pytest.raises(BusUnavailable, match="cannot reach NATS"):
            await connect_nats(make_settings(nats_url=url, nats_tls_ca_file=certs.ca), name="no-cert", timeout_s=3)


@pytest.fixture(scope="module")
def tls_store(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[str]:
    process, port = start_embedded_mongo(
        tmp_path_factory.mktemp("tls-store"), tls=(certs.server_cert, certs.server_key)
    )
    try:
        yield f"mongodb://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.parametrize("client_certificate", [False, True], ids=["ca-only", "with-client-certificate"])
async def test_the_store_over_tls_with_the_ca_from_settings(
    make_settings: Callable[..., Settings], certs: Certificates, tls_store: str, client_certificate: bool
) -> None:
    """The client certificate and key come as two files (as Kubernetes mounts them)."""
    extra = {"mongo_tls_cert_file": certs.client_cert, "mongo_tls_key_file": certs.client_key}
    settings = make_settings(mongo_url=tls_store, mongo_tls_ca_file=certs.ca, **(extra if client_certificate else {}))
    client, db = await connect_store(settings)
    try:
        await db["things"].insert_one({"_id": "over-tls"})
        assert await db["things"].find_one({"_id": "over-tls"}) == {"_id": "over-tls"}
    finally:
        await client.drop_database(settings.mongo_db)
        await client.close()


async def test_the_store_over_tls_is_refused_without_the_ca(
    make_settings: Callable[..., Settings], tls_store: str
) -> None:
    with pytest.raises(StoreUnavailable, match="cannot reach MongoDB"):
        await connect_store(make_settings(mongo_url=tls_store + "?tls=true", mongo_timeout_s=2))


async def test_a_rotated_nats_password_file_is_used_at_the_next_reconnect(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The server's config gets the new password and is reloaded: it drops the client, whose
    reconnect reads the new password from the file. No restart of the client."""
    password_file = tmp_path / "password"
    password_file.write_text("first-password\n")
    users = 'authorization {{ users = [ {{ user: "svc", password: "{}" }} ] }}'
    with configured_nats(tmp_path / "nats", users.format("first-password")) as server:
        settings = make_settings(
            nats_url=f"nats://127.0.0.1:{server.port}", nats_user="svc", nats_password_file=password_file
        )
        assert settings.nats_password is not None
        assert settings.nats_password.get_secret_value() == "first-password"
        client = await connect_nats(settings, name="rotating")
        broker = ServiceBroker(settings, name="rotating-broker")
        broker_client = await connect_broker(broker, settings)
        try:
            server_config = server.config.read_text()
            server.config.write_text(server_config.replace("first-password", "second-password"))
            password_file.write_text("second-password\n")
            server.reload()

            async def answers(nc: object) -> bool:
                try:
                    await asyncio.wait_for(nc.flush(), timeout=1)  # type: ignore[attr-defined]
                except Exception:
                    return False
                return bool(nc.is_connected)  # type: ignore[attr-defined]

            # The reload drops both clients (their login is no longer valid); both come back.
            await wait_for(lambda: _reconnected(client), timeout_s=15, what="nats-py client reconnected")
            await wait_for(lambda: _reconnected(broker_client), timeout_s=15, what="broker reconnected")
            assert await answers(client)
            assert await answers(broker_client)
        finally:
            await client.close()
            await broker.stop()


async def _reconnected(client: object) -> bool:
    stats = client.stats  # type: ignore[attr-defined]
    return bool(stats["reconnects"] >= 1 and client.is_connected)  # type: ignore[attr-defined]
