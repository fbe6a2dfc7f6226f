"""The real services run under their deployed NATS users, with no permission violation.

Each service process logs in to a nats-server that enforces the committed
`deploy/k8s/base/nats/auth.conf` (as in the cluster), with FerretDB and the provider
simulator behind it. A consumer service must become ready and complete a manual run of
each of its jobs; the ticker must publish its start-up requests. Any subject the code
uses but the permissions forgot shows up as a "Permissions Violation" in the server log.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.aio.client
import pytest
from nats.aio.msg import Msg
from pydantic import SecretStr

from shared.bus import ensure_topology, nats_connect_options
from shared.localstack import free_port
from shared.names import ALERT_SINKS, JOBS, Collections, Names
from shared.permissions import OPERATOR, jobs_of
from shared.providers.simprocess import RunningSimulator, simulator_process
from shared.providers.simulator import hex_id
from shared.requests import publish_request
from shared.schemas import JobRequest, Trigger, new_run_id, utcnow
from shared.settings import Settings
from shared.store import make_client
from tests.conftest import settings_env
from tests.deploy.natsauth import AuthServer, auth_server
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
NAMES = Names()
CONSUMER_SERVICES = ("market_sync", "whale_sync", "stats", "janitor")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AuthServer]:
    with auth_server(tmp_path) as running:
        yield running


@pytest.fixture(scope="module")
def simulator() -> Iterator[RunningSimulator]:
    with simulator_process(markets=40, frozen=True) as running:
        yield running


@pytest.fixture
def deployed(make_settings: Any, server: AuthServer, simulator: RunningSimulator) -> Settings:
    """Settings of a deployment: production names on the auth server, this test's database."""
    settings: Settings = make_settings(
        nats_url=server.url,
        namespace="",
        polymarket_gamma_url=simulator.url,
        polymarket_data_url=simulator.url,
    )
    return settings


async def connect_operator(settings: Settings, server: AuthServer) -> nats.aio.client.Client:
    login = settings.model_copy(update={"nats_user": OPERATOR, "nats_password": SecretStr(server.passwords[OPERATOR])})
    return await nats.connect(**nats_connect_options(login, name="operator"))


def service_env(settings: Settings, server: AuthServer, user: str, port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PULSE_")}
    env |= settings_env(settings)
    env |= {"PULSE_NATS_USER": user, "PULSE_NATS_PASSWORD": server.passwords[user], "PULSE_HTTP_PORT": str(port)}
    # Nothing runs on a timetable here: runs are started by hand (the ticker test enables them).
    env |= {f"PULSE_JOBS__{job.upper()}__ENABLED": "false" for job in JOBS}
    env |= {"PULSE_MARKET_REFRESH_RECHECK_S": "1"}  # market_refresh's durable sleep, kept short
    return env


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[[str, dict[str, str]], tuple[subprocess.Popen[bytes], Path]]]:
    started: list[subprocess.Popen[bytes]] = []

    def _start(service: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        # A missing service is a failure, not a skip: every service must run under auth.
        assert importlib.util.find_spec(f"services.{service}.__main__") is not None, f"services/{service} is missing"
        log = tmp_path / f"{service}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([sys.executable, "-m", f"services.{service}"], cwd=ROOT, env=env,
                                       stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        started.append(process)
        return process, log

    yield _start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def violations(server: AuthServer) -> list[str]:
    return [line for line in server.log.read_text(errors="replace").splitlines() if "Violation" in line]


async def wait_ready(process: subprocess.Popen[bytes], log: Path, port: int) -> None:
    async with httpx.AsyncClient(timeout=2) as http:

        async def ready() -> bool:
            assert process.poll() is None, f"exited {process.returncode}:\n{tail(log)}"
            try:
                return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(ready, timeout_s=60, interval_s=0.2, what=f"/readyz of {log.stem}")


#: Arguments of the jobs that take some: market_refresh refreshes the simulator's first market.
JOB_ARGS: dict[str, dict[str, Any]] = {"market_refresh": {"market": hex_id(1, "condition", 0)}}


async def run_by_hand(settings: Settings, server: AuthServer, jobs: tuple[str, ...], until: set[str]) -> dict[str, str]:
    """As the operator, request `jobs` manually; return the last run status per job seen in EVENTS."""
    operator = await connect_operator(settings, server)
    outcomes: dict[str, str] = {}

    async def record(msg: Msg) -> None:
        event = json.loads(msg.data)
        outcomes[event["job"]] = event["status"]

    try:
        await operator.subscribe(NAMES.run_events_wildcard(), cb=record)
        js = operator.jetstream(timeout=5)
        for job in jobs:
            now = utcnow()
            request = JobRequest(run_id=new_run_id(job, Trigger.MANUAL), job=job, trigger=Trigger.MANUAL,
                                 scheduled_for=now, requested_at=now, requested_by="tests",
                                 args=JOB_ARGS.get(job, {}))  # fmt: skip
            await publish_request(js, NAMES, request)

        async def all_finished() -> bool:
            return set(outcomes) >= until and "running" not in outcomes.values()

        await wait_for(all_finished, timeout_s=60, interval_s=0.2, what=f"run events of {sorted(until)}")
    finally:
        await operator.close()
    return outcomes


@pytest.mark.parametrize("service", CONSUMER_SERVICES)
async def test_consumer_service_completes_its_jobs_as_its_own_user(
    service: str, server: AuthServer, deployed: Settings, start_service: Any
) -> None:
    if service == "stats":  # stats waits for the first market sync (services/stats/__main__.py)
        client = make_client(deployed)
        now = utcnow()
        await client[deployed.mongo_db][Collections.RUNS].insert_one(
            {"_id": "market_sync:manual:first", "job": "market_sync", "trigger": "manual", "status": "completed",
             "started_at": now, "ended_at": now}
        )  # fmt: skip
        await client.close()
    port = free_port()
    process, log = start_service(service, service_env(deployed, server, service, port))
    await wait_ready(process, log, port)
    try:
        outcomes = await run_by_hand(deployed, server, jobs_of(service), set(jobs_of(service)))
    finally:
        await drop_database(deployed)
    assert outcomes == dict.fromkeys(jobs_of(service), "completed"), tail(log)
    assert violations(server) == []
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


async def test_janitor_may_time_out_another_jobs_run(
    server: AuthServer, deployed: Settings, start_service: Any
) -> None:
    """The watchdog publishes market_sync's run event: the one cross-job grant. With both alert
    sinks set, the janitor also creates and binds each sink's delivery consumer as its own user."""
    client = make_client(deployed)
    long_ago = utcnow() - timedelta(hours=1)
    await client[deployed.mongo_db][Collections.RUNS].insert_one({
        "_id": "market_sync:manual:lost", "job": "market_sync", "trigger": "manual", "status": "running",
        "started_at": long_ago, "heartbeat_at": long_ago, "attempt_count": 1,
    })  # fmt: skip
    await client.close()
    port = free_port()
    sink = f"http://127.0.0.1:{free_port()}"  # nothing is sent here: no alert is raised
    env = service_env(deployed, server, "janitor", port) | {
        "PULSE_ALERT_WEBHOOK_URL": f"{sink}/hook",
        "PULSE_ALERT_WEBHOOK_SECRET": "a-shared-secret",
        "PULSE_ALERT_SLACK_WEBHOOK_URL": f"{sink}/slack",
    }
    process, log = start_service("janitor", env)
    await wait_ready(process, log, port)
    try:
        outcomes = await run_by_hand(deployed, server, ("watchdog",), {"watchdog", "market_sync"})
        operator = await connect_operator(deployed, server)
        try:
            js = operator.jetstream(timeout=5)
            for name in ALERT_SINKS:  # raises NotFoundError if the janitor could not create it
                await js.consumer_info(NAMES.events_stream, NAMES.alert_delivery_consumer(name))
        finally:
            await operator.close()
    finally:
        await drop_database(deployed)
    assert outcomes == {"watchdog": "completed", "market_sync": "timed_out"}, tail(log)
    assert violations(server) == []


async def test_ticker_publishes_its_start_up_requests_as_its_own_user(
    server: AuthServer, deployed: Settings, start_service: Any
) -> None:
    port = free_port()
    env = service_env(deployed, server, "ticker", port)
    env |= {f"PULSE_JOBS__{job.upper()}__ENABLED": "true" for job in JOBS}
    process, log = start_service("ticker", env)
    await wait_ready(process, log, port)

    operator = await connect_operator(deployed, server)
    try:
        js = operator.jetstream(timeout=5)
        await ensure_topology(js, deployed, jobs=())

        async def requested() -> set[str]:
            info = await js.stream_info(NAMES.jobs_stream, subjects_filter=NAMES.jobs_stream_subjects[0])
            subjects = set((info.state.subjects or {}).keys())
            return subjects if subjects >= {NAMES.job_subject(job) for job in JOBS} else set()

        await wait_for(requested, timeout_s=30, interval_s=0.2, what="the ticker's start-up requests")
    finally:
        await operator.close()
        await drop_database(deployed)
    assert violations(server) == []


async def drop_database(settings: Settings) -> None:
    client = make_client(settings)
    await client.drop_database(settings.mongo_db)
    await client.close()
