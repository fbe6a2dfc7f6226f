"""`pulse why`'s decision: facts in, named blockers out (no servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.readmodel.why import (
    BLOCKER_CHECKS,
    ConsumerFacts,
    Facts,
    RunFact,
    decide,
)
from shared.settings import RateLimit

NOW = datetime(2026, 12, 1, 9, 0, 30, tzinfo=UTC)
SLOT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
NEXT = datetime(2026, 12, 1, 9, 5, tzinfo=UTC)
IDLE_WORKER = ConsumerFacts(waiting=0, in_flight=0, redelivered=0, pull_requests=1)


def healthy(**changes: object) -> Facts:
    """A job whose due slot was claimed and published, a worker waits, nothing runs."""
    facts = Facts(
        job="whale_sync",
        now=NOW,
        schedule="every 5m",
        due_slot=SLOT,
        slot_after_claimed=NEXT,
        next_fire=NEXT,
        claimed_slot=SLOT,
        claimed_at=SLOT,
        consumer=IDLE_WORKER,
    )
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


def kinds(facts: Facts) -> list[str]:
    return [blocker.kind for blocker in decide(facts)]


def test_an_idle_healthy_job_is_only_waiting_for_its_next_slot() -> None:
    [blocker] = decide(healthy())
    assert blocker.kind == "not_due"
    assert blocker.until == NEXT
    assert "2026-12-01T09:05:00Z" in blocker.detail
    assert "pulse trigger whale_sync" in blocker.action


def test_a_running_job_with_nothing_behind_it_is_not_blocked() -> None:
    running = [RunFact("whale_sync:2026-12-01T09:00:00Z", "running", started_at=SLOT)]
    consumer = ConsumerFacts(waiting=0, in_flight=1, redelivered=0, pull_requests=0)
    assert decide(healthy(running=running, consumer=consumer)) == []


def test_paused_and_disabled_name_the_command_that_undoes_them() -> None:
    [paused] = decide(healthy(paused=True, paused_by="pulse:ann@box", due_slot=None, next_fire=None))
    assert paused.kind == "paused"
    assert "pulse:ann@box" in paused.detail
    assert paused.action == "pulse schedule resume whale_sync"
    [disabled] = decide(healthy(enabled=False, due_slot=None, next_fire=None))
    assert "PULSE_JOBS__WHALE_SYNC__ENABLED=true" in disabled.action


def test_the_ticker_is_stalled_when_a_slot_is_unclaimed_past_the_grace() -> None:
    later = NEXT + timedelta(seconds=11)
    assert kinds(healthy(now=later, due_slot=NEXT)) == ["ticker_stalled"]
    # Within the grace it is only late by jitter: not stalled.
    assert "ticker_stalled" not in kinds(healthy(now=NEXT + timedelta(seconds=5), due_slot=NEXT))
    # Never claimed at all.
    never = healthy(now=NOW + timedelta(seconds=20), claimed_slot=None, slot_after_claimed=None, claimed_at=None)
    assert kinds(never) == ["ticker_stalled"]
    # Claimed but the publish never confirmed.
    unconfirmed = healthy(now=SLOT + timedelta(seconds=30), claim_published=False)
    [blocker] = decide(unconfirmed)
    assert blocker.kind == "ticker_stalled"
    assert "never confirmed" in blocker.detail


def test_overlap_needs_the_limit_reached_and_requests_waiting() -> None:
    running = [RunFact("whale_sync:a", "running", started_at=SLOT)]
    waiting = ConsumerFacts(waiting=2, in_flight=1, redelivered=0, pull_requests=0)
    [blocker] = decide(healthy(running=running, consumer=waiting))
    assert blocker.kind == "overlap"
    assert "whale_sync:a" in blocker.detail
    assert "2 request(s)" in blocker.detail
    assert decide(healthy(running=running, consumer=waiting, max_running=2)) == []


def test_no_worker_without_a_consumer_or_without_pull_requests() -> None:
    [missing] = decide(healthy(consumer=None))
    assert missing.kind == "no_worker"
    assert "python -m services.whale_sync" in missing.action
    unbound = ConsumerFacts(waiting=3, in_flight=0, redelivered=0, pull_requests=0)
    [blocker] = decide(healthy(consumer=unbound))
    assert blocker.kind == "no_worker"
    assert "3 request(s) wait" in blocker.detail


def test_a_retrying_run_names_its_next_attempt() -> None:
    at = NOW + timedelta(seconds=40)
    retrying = [RunFact("whale_sync:m1", "retrying", next_attempt_at=at, attempt_count=2, error="HTTP 503")]
    [blocker] = decide(healthy(retrying=retrying))
    assert (blocker.kind, blocker.until) == ("pending_redelivery", at)
    assert "attempt 2 (HTTP 503)" in blocker.detail
    assert "pulse cancel whale_sync:m1" in blocker.action


def test_redelivered_requests_without_a_retrying_run_are_named_too() -> None:
    redelivered = ConsumerFacts(waiting=0, in_flight=2, redelivered=2, pull_requests=1)
    [blocker] = decide(healthy(consumer=redelivered))
    assert blocker.kind == "pending_redelivery"
    assert "2 request(s) were delivered more than once" in blocker.detail


def test_dead_letters_block_only_after_a_failed_streak() -> None:
    failed = [RunFact("whale_sync:b", "failed", error="boom"), RunFact("whale_sync:a", "failed")]
    [blocker] = decide(healthy(recent=failed, dead_letters=2))
    assert blocker.kind == "dead_lettered"
    assert "last 2 run(s)" in blocker.detail
    assert "pulse dlq replay --all --job whale_sync" in blocker.action
    recovered = [RunFact("whale_sync:c", "completed"), *failed]
    assert kinds(healthy(recent=recovered, dead_letters=2)) == ["not_due"]


@pytest.mark.parametrize(("tokens", "blocked"), [(0.2, True), (1.0, False)])
def test_an_empty_bucket_says_when_a_token_is_back(tokens: float, blocked: bool) -> None:
    limit = RateLimit(rate=1, period_s=10, burst=5)
    facts = healthy(bucket="polymarket_data", bucket_limit=limit, bucket_tokens=tokens)
    found = [b for b in decide(facts) if b.kind == "rate_limited"]
    assert bool(found) is blocked
    if blocked:
        assert found[0].until == NOW + timedelta(seconds=8)


def test_every_blocker_found_is_listed_in_check_order() -> None:
    facts = healthy(paused=True, due_slot=None, next_fire=None, consumer=None, dead_letters=1)
    facts.recent = [RunFact("whale_sync:x", "failed")]
    assert kinds(facts) == ["paused", "no_worker", "dead_lettered"]
    assert [check.__name__ for check in BLOCKER_CHECKS][:2] == ["disabled", "paused"]
