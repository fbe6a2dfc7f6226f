"""JSON log lines carry job and run_id, and never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared.logs import bind, configure_logging
from shared.settings import load_settings

SECRET = "s3cr3t-pa55word"


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    settings = load_settings(
        nats_url="nats://u:pw@127.0.0.1:4222",
        nats_user="u",
        nats_password=SECRET,
        mongo_url=f"mongodb://app:{SECRET}@db:27017/",
    )
    handler = configure_logging(settings, stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_line_is_one_json_object_with_job_and_run_id(output: io.StringIO) -> None:
    log = bind(logging.getLogger("job.stats"), job="stats", run_id="stats:manual:1")
    log.info("run %s completed", "stats:manual:1", extra={"event": "run.completed", "duration_ms": 12})
    [line] = lines(output)
    assert line["msg"] == "run stats:manual:1 completed"
    assert (line["job"], line["run_id"], line["event"], line["duration_ms"]) == (
        "stats",
        "stats:manual:1",
        "run.completed",
        12,
    )


def test_secrets_never_reach_the_output(output: io.StringIO) -> None:
    log = logging.getLogger("shared.test")
    log.warning("connecting with %s to mongodb://app:%s@db/", SECRET, SECRET)
    try:
        raise RuntimeError(f"refused: password {SECRET}")
    except RuntimeError:
        log.exception("failed", extra={"event": "x", "run_id": f"r-{SECRET}"})
    text = output.getvalue()
    assert SECRET not in text
    assert "***" in text
    assert len(lines(output)) == 2


def test_configuring_twice_writes_each_line_once(output: io.StringIO) -> None:
    settings = load_settings()
    handler = configure_logging(settings, stream=output)
    try:
        logging.getLogger("shared.test").warning("once")
        assert output.getvalue().count('"once"') == 1
    finally:
        logging.getLogger().removeHandler(handler)


def test_the_mongodb_password_alone_is_redacted() -> None:
    stream = io.StringIO()
    handler = configure_logging(load_settings(mongo_url="mongodb://app:only-in-the-uri@db:27017/"), stream=stream)
    try:
        logging.getLogger("shared.test").error("auth failed for password only-in-the-uri")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "only-in-the-uri" not in stream.getvalue()
    assert "***" in stream.getvalue()
