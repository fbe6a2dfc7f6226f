"""/healthz, /readyz and /metrics of a worker's FastStream app, including NATS going away and coming back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from shared.localstack import free_port, start_nats
from shared.requests import publish_request
from shared.runtime import JobContext, Worker, job
from shared.runtime._health import HttpServer
from shared.runtime._service import worker_app
from shared.settings import Settings
from tests.conftest import Servers
from tests.helpers import wait_for
from tests.integration.test_runtime_support import policy, request_for, terminal_run, wait_value


@job("healthy", policy=policy())
async def healthy(ctx: JobContext) -> dict[str, int]:
    return {"done": 1}


async def test_readyz_turns_unready_when_nats_stops_and_ready_after_it_restarts(
    make_settings: Callable[..., Settings], servers: Servers, tmp_path: Path, mongo: object
) -> None:
    """Uses its own nats-server (same port and store dir across the restart); `mongo` drops the db."""
    port = free_port()
    nats_process, _ = start_nats(tmp_path, port)
    settings = make_settings(nats_url=f"nats://127.0.0.1:{port}")
    worker = Worker(settings, [healthy])
    app = worker_app(worker, stop_timeout_s=5)
    http = HttpServer(app, "127.0.0.1", 0)
    await http.start()
    base = f"http://127.0.0.1:{http.port}"
    try:
        async with app.start_lifespan_context(), httpx.AsyncClient(base_url=base, timeout=5) as client:

            async def _status(expected: int) -> bool:
                return (await client.get("/readyz")).status_code == expected

            await wait_for(lambda: _status(200), timeout_s=10, what="ready")
            assert (await client.get("/healthz")).status_code == 200

            nats_process.terminate()
            nats_process.wait(timeout=10)
            await wait_for(lambda: _status(503), timeout_s=10, what="unready without NATS")
            body = (await client.get("/readyz")).json()
            assert body["checks"]["nats"] is False
            assert body["checks"]["mongo"] is True
            assert (await client.get("/healthz")).status_code == 200

            nats_process, _ = start_nats(tmp_path, port)
            await wait_for(lambda: _status(200), timeout_s=20, what="ready again after NATS restarted")

            # Consuming resumed too: a request published now completes.
            request = request_for("healthy")
            await publish_request(worker.runtime.js, settings.names, request)
            doc = await wait_value(lambda: terminal_run(worker.db, request.run_id), timeout_s=20, what="run")
            assert doc["status"] == "completed"
            # The counter follows the terminal record (after its effects are claimed): wait for it.
            counted = 'pulse_runs_total{job="healthy",status="completed"} 1.0'

            async def scraped() -> str:
                text = (await client.get("/metrics")).text
                return text if counted in text else ""

            metrics = await wait_value(scraped, timeout_s=10, what="the run counted in /metrics")
            assert counted in metrics
            assert "pulse_run_duration_seconds_bucket" in metrics
    finally:
        await http.stop()
        nats_process.terminate()
        nats_process.wait(timeout=10)
