"""JSON log lines carry job and run_id, and never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared.logs import bind, configure_logging, run_context
from shared.runlogs import RunLogShipper
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


def test_lines_inside_a_run_context_carry_the_run_and_data_stays_in_fields(output: io.StringIO) -> None:
    library = logging.getLogger("some.library")
    with run_context(job="stats", run_id="stats:manual:2", attempt=3):
        library.warning("retrying a request", extra={"status_code": 503, "summary": {"pages": 2}})
    library.warning("outside any run")
    inside, outside = lines(output)
    assert (inside["job"], inside["run_id"], inside["attempt"]) == ("stats", "stats:manual:2", 3)
    assert inside["msg"] == "retrying a request"
    assert (inside["status_code"], inside["summary"]) == (503, {"pages": 2})
    assert str(inside["ts"]).endswith("Z")
    assert "run_id" not in outside


def _shipper(**overrides: object) -> RunLogShipper:
    settings = load_settings(log_lines_per_run=10, log_line_max_chars=200, **overrides)
    return RunLogShipper(settings, name="tests")


def _buffered(shipper: RunLogShipper) -> list[dict[str, object]]:
    return [json.loads(data) for _, _, data in shipper._buffer]


def test_the_shipper_keeps_only_run_lines_and_bounds_them() -> None:
    shipper = _shipper()
    log = logging.getLogger("job.stats")
    record = log.makeRecord("job.stats", logging.INFO, __file__, 1, "line %d", (0,), None)
    shipper.emit(record)  # no run: not shipped
    assert _buffered(shipper) == []
    for number in range(15):
        record = log.makeRecord(
            "job.stats", logging.INFO, __file__, 1, "x" * 500 if number == 0 else f"line {number}", None, None,
            extra={"job": "stats", "run_id": "stats:manual:3", "attempt": 1},
        )  # fmt: skip
        shipper.handle(record)
    shipped = _buffered(shipper)
    assert len(shipped) == 11  # the cap, then one marker line
    assert str(shipped[0]["msg"]).startswith("x" * 200 + "… (300 more characters)")
    assert "log cap of 10 lines reached" in str(shipped[-1]["msg"])
    assert shipper.dropped == 4


def test_the_shipper_redacts_secrets() -> None:
    shipper = _shipper(nats_user="u", nats_password=SECRET)
    record = logging.getLogger("job.stats").makeRecord(
        "job.stats", logging.INFO, __file__, 1, f"password is {SECRET}", None, None,
        extra={"job": "stats", "run_id": "stats:manual:4", "attempt": 1},
    )  # fmt: skip
    shipper.handle(record)
    [line] = _buffered(shipper)
    assert SECRET not in json.dumps(line)
