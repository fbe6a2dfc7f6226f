"""No secret setting ever shows: every `SecretStr` field of `Settings` (found by
introspection, so a new secret is covered the day it is added) is given a distinctive
value, and a job that puts every one of them into its log lines and its error leaves none
in the logs, the run record, the run events, the alert, the dead letter or `pulse` output.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from shared.errors import PermanentError
from shared.logs import configure_logging
from shared.requests import publish_request
from shared.runtime import JobContext, job
from shared.settings import Settings, secret_fields
from shared.store import Database
from tests.integration.test_cli_common import invoke
from tests.integration.test_runtime_support import (
    WorkerFactory,
    collect,
    policy,
    request_for,
    start_worker,  # noqa: F401 (fixture)
    terminal_run,
    wait_value,
)

#: The NATS logins are exclusive (one mechanism at a time), so each variant sets one.
LOGINS = {"password": {"nats_user": "svc", "nats_password": None}, "token": {"nats_token": None}}


def secret_values_for(settings: Settings) -> list[str]:
    """The value of every SecretStr setting that is set."""
    values = []
    for name in secret_fields():
        held = getattr(settings, name)
        if isinstance(held, SecretStr):
            values.append(held.get_secret_value())
    return values


@job("leaky", policy=policy(retry={"max_attempts": 1, "initial_backoff_s": 0.1}, alert_after_failures=1))
async def leaky(ctx: JobContext) -> None:
    """Logs and raises every secret it can find in its settings."""
    everything = " | ".join(secret_values_for(ctx.settings))
    ctx.log.warning("about to fail with %s", everything)
    raise PermanentError(f"refused with {everything}")


@pytest.fixture
def log_output(settings: Settings) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "stream", None) is stream:
            root.removeHandler(handler)


@pytest.mark.parametrize("login", list(LOGINS))
async def test_no_secret_setting_shows_anywhere(
    login: str,
    make_settings: Callable[..., Settings],
    settings: Settings,
    start_worker: WorkerFactory,  # noqa: F811
    db: Database,
    js: Any,
    log_output: io.StringIO,
) -> None:
    marker = uuid.uuid4().hex[:8]
    overrides: dict[str, Any] = {
        name: value if value is not None else f"{name}-{marker}" for name, value in LOGINS[login].items()
    }
    overrides["polymarket_api_key"] = f"api-key-{marker}"
    # The store URI is a secret as a whole; this one names a (harmless, unused) auth database.
    overrides["mongo_url"] = settings.mongo_url.get_secret_value().rstrip("/") + f"/uri-{marker}"
    secret_settings = make_settings(
        namespace=settings.namespace, mongo_db=settings.mongo_db, log_json=True, **overrides
    )
    secrets = secret_values_for(secret_settings)
    expected = {"mongo_url", "polymarket_api_key", "nats_password" if login == "password" else "nats_token"}
    assert {name for name in secret_fields() if getattr(secret_settings, name) is not None} == expected
    assert len(secrets) == len(expected)

    configure_logging(secret_settings, stream=log_output)
    await start_worker([leaky], secret_settings)
    request = request_for("leaky")
    await publish_request(js, settings.names, request)
    record = await wait_value(lambda: terminal_run(db, request.run_id), timeout_s=20, what="the run to fail")
    assert record["status"] == "failed"
    assert "refused with" in record["error"]

    names = settings.names
    # The failed run's event and its alert; its dead letter.
    events = await collect(js, names.events_stream_subjects[0], names.events_stream, 2)
    letters = await collect(js, names.dlq_wildcard(), names.dlq_stream, 1)
    assert any(b"refused with" in event for event in events)  # the run event and the alert
    assert any(b"refused with" in letter for letter in letters)

    env = {"PULSE_POLYMARKET_API_KEY": overrides["polymarket_api_key"]}
    env.update({f"PULSE_{name.upper()}": str(value) for name, value in overrides.items() if name.startswith("nats")})
    env["PULSE_MONGO_URL"] = overrides["mongo_url"]
    # In a thread: the CLI runs its own event loop.
    outputs = [
        (await asyncio.to_thread(invoke, settings, *command, **env)).output
        for command in (("run", request.run_id), ("dlq", "list"), ("runs", "--job", "leaky"))
    ]
    assert any("refused with" in output for output in outputs)

    places = {
        "logs": log_output.getvalue(),
        "run record": json.dumps(record, default=str),
        "events": b"\n".join(events).decode(),
        "dead letters": b"\n".join(letters).decode(),
        "cli": "\n".join(outputs),
    }
    assert "about to fail with" in places["logs"]
    leaks = [(place, secret) for place, text in places.items() for secret in secrets if secret in text]
    assert leaks == []
