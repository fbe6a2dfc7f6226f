"""Names: one place for every subject, with namespaces that keep environments apart."""

from __future__ import annotations

import pytest

from shared.errors import bounded, redact_url
from shared.names import JOBS, Names
from shared.settings import Settings


def test_production_names_match_the_design() -> None:
    names = Names()
    assert names.jobs_stream == "JOBS"
    assert names.job_subject("market_sync") == "jobs.market_sync"
    assert names.run_event_subject("stats", "completed") == "events.runs.stats.completed"
    assert names.alert_subject("stats") == "events.alerts.stats"
    assert names.dlq_subject("cleanup") == "dlq.cleanup"
    assert names.consumer_name("whale_sync") == "whale_sync"
    assert names.kv_buckets == ["schedules", "ticker", "ratelimit"]


def test_namespace_prefixes_every_resource() -> None:
    names = Names("ab12")
    assert names.jobs_stream == "ab12_JOBS"
    assert names.job_subject("stats") == "ab12.jobs.stats"
    assert names.jobs_stream_subjects == ["ab12.jobs.>", "ab12.delayed.>"]
    assert names.ratelimit_bucket == "ab12_ratelimit"


@pytest.mark.parametrize("bad", ["Market", "1job", "a.b", "a b", "", "x" * 65])
def test_bad_job_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid job name"):
        Names().job_subject(bad)


def test_every_job_has_a_valid_subject() -> None:
    assert all(Names().job_subject(job).startswith("jobs.") for job in JOBS)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("nats://user:pw@host:4222", "nats://user:***@host:4222"),
        ("mongodb://a:b@h1,h2/db?tls=true", "mongodb://a:***@h1,h2/db?tls=***"),
        ("nats://tokenonly@host:4222", "nats://***:***@host:4222"),
        ("nats://host:4222", "nats://host:4222"),
        (
            "mongodb://h/db?tls=true&tlsCertificateKeyFilePassword=s3cret-pw",
            "mongodb://h/db?tls=***&tlsCertificateKeyFilePassword=***",
        ),
        (
            "mongodb+srv://c.example.net/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok3n",
            "mongodb+srv://c.example.net/?authMechanism=***&authMechanismProperties=***",
        ),
        ("cannot reach mongodb://h/?w=1;pw=x#f within 2s", "cannot reach mongodb://h/?w=***;pw=***#f within 2s"),
    ],
)
def test_redact_url_hides_passwords_and_query_values(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_the_redacted_mongo_url_keeps_no_query_secret() -> None:
    url = "mongodb://u:pw1@h/db?tlsCertificateKeyFilePassword=s3cret-pw&authMechanismProperties=AWS_SESSION_TOKEN:tok3n"
    shown = Settings(mongo_url=url).mongo_url_redacted
    assert not any(secret in shown for secret in ("pw1", "s3cret-pw", "tok3n")), shown


def test_bounded_truncates_long_text() -> None:
    assert len(bounded("x" * 5000)) == 2000
    assert bounded("short") == "short"
