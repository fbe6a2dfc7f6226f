"""The health ASGI app: liveness, readiness from checks, metrics from the given registry."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client import CollectorRegistry, Counter

from shared.runtime._health import build_http_app


async def ok() -> bool:
    return True


async def down() -> bool:
    raise ConnectionError("no server")


async def hangs() -> bool:
    await asyncio.sleep(30)
    return True


def client(checks: dict[str, object], registry: CollectorRegistry | None = None) -> httpx.AsyncClient:
    app = build_http_app(checks, registry or CollectorRegistry(), check_timeout_s=0.2)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_readyz_is_200_when_every_check_passes() -> None:
    async with client({"nats": ok, "mongo": ok}) as http:
        response = await http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"nats": True, "mongo": True}}


async def test_readyz_is_503_naming_failed_and_slow_checks() -> None:
    async with client({"nats": ok, "mongo": down, "consumers": hangs}) as http:
        response = await http.get("/readyz")
        live = await http.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"nats": True, "mongo": False, "consumers": False}
    assert live.status_code == 200


async def test_metrics_come_from_the_given_registry_only() -> None:
    registry = CollectorRegistry()
    Counter("probe_total", "a probe", registry=registry).inc(3)
    async with client({}, registry) as http:
        response = await http.get("/metrics")
        missing = await http.get("/nope")
    assert "probe_total 3.0" in response.text
    assert "python_gc" not in response.text
    assert missing.status_code == 404


async def test_routes_answer_with_a_trailing_slash_too() -> None:
    async with client({"nats": ok}) as http:
        ready = await http.get("/readyz/")
        live = await http.get("/healthz/")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    assert live.status_code == 200
