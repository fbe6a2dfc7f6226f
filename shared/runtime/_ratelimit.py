"""Shared token buckets in the `ratelimit` KV bucket, correct across processes.

Each bucket is one key holding `{"tokens": float, "at": unix seconds}`. Taking tokens
reads the entry, refills it for the time elapsed (`rate` per `period_s`, capped at
`burst`), and writes it back with compare-and-set on the revision it read; a concurrent
writer makes the write fail and the taker starts over. No process holds state.

A provider's 429 with Retry-After empties the bucket for every process until then
(`hold`): the entry gains `held_until` (unix seconds), no token is handed out before
it, and refilling starts from zero at that time.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable

import nats.js.errors
from nats.js.kv import KeyValue

from shared.errors import ConfigError, PulseError
from shared.settings import RateLimit

#: Longest single sleep while waiting for tokens, so a refill is noticed promptly.
_MAX_NAP_S = 0.5


class RateLimited(PulseError):
    """The bucket stayed empty longer than the job may wait."""

    def __init__(self, bucket: str, waited_s: float, retry_in_s: float) -> None:
        super().__init__(f"rate limit bucket {bucket!r} stayed empty for {waited_s:.1f}s")
        self.bucket = bucket
        self.retry_in_s = retry_in_s


def bucket_level(state: dict[str, float], limit: RateLimit, now: float) -> float:
    """Tokens in a bucket whose stored `state` is `{"tokens", "at"}`, refilled up to `now`, capped at `burst`."""
    elapsed = max(0.0, now - float(state.get("at", now)))
    return min(float(limit.burst), float(state.get("tokens", limit.burst)) + elapsed * limit.rate / limit.period_s)


class RateLimiter:
    """Takes tokens from named buckets shared by every replica.

    Args:
        kv: the `ratelimit` KV bucket.
        limits: bucket name → rate, period and burst (settings.rate_limits).
        clock: wall-clock seconds; all replicas must share a (roughly) common clock.
    """

    def __init__(self, kv: KeyValue, limits: dict[str, RateLimit], clock: Callable[[], float] = time.time) -> None:
        self._kv = kv
        self._limits = limits
        self._clock = clock
        self.waits = 0

    def _limit(self, bucket: str) -> RateLimit:
        try:
            return self._limits[bucket]
        except KeyError:
            raise ConfigError(
                f"unknown rate limit bucket {bucket!r}; define it in PULSE_RATE_LIMITS (known: {sorted(self._limits)})"
            ) from None

    async def try_take(self, bucket: str, tokens: int = 1) -> float:
        """Take `tokens` if available now; return 0.0, or the seconds until they would be."""
        limit = self._limit(bucket)
        if tokens > limit.burst:
            raise ConfigError(f"cannot take {tokens} tokens from {bucket!r}: its burst is {limit.burst}")
        per_s = limit.rate / limit.period_s
        while True:
            now = self._clock()
            state, revision = await self._read(bucket)
            held_until = float(state.get("held_until", 0.0))
            if held_until > now:
                return held_until - now + tokens / per_s
            available = bucket_level(state, limit, now)
            if available < tokens:
                return (tokens - available) / per_s
            if await self._write(bucket, {"tokens": available - tokens, "at": now}, revision):
                return 0.0

    async def hold(self, bucket: str, seconds: float) -> None:
        """Empty `bucket` for every process for `seconds` (the provider's Retry-After).

        A hold never shortens one already in place; the bucket refills from zero after it.
        """
        self._limit(bucket)
        while True:
            now = self._clock()
            state, revision = await self._read(bucket)
            until = max(now + seconds, float(state.get("held_until", 0.0)))
            if await self._write(bucket, {"tokens": 0.0, "at": until, "held_until": until}, revision):
                return

    async def held_until(self, bucket: str) -> float | None:
        """Unix seconds until which `bucket` is held by a provider's Retry-After, or None."""
        state, _ = await self._read(bucket)
        until = float(state.get("held_until", 0.0))
        return until if until > self._clock() else None

    async def _read(self, bucket: str) -> tuple[dict[str, float], int | None]:
        """The bucket's state and its revision (None: no entry yet)."""
        try:
            entry = await self._kv.get(bucket)
        except nats.js.errors.KeyNotFoundError:
            return {}, None
        state: dict[str, float] = json.loads(entry.value or b"{}")
        return state, entry.revision

    async def _write(self, bucket: str, state: dict[str, float], revision: int | None) -> bool:
        """Compare-and-set the bucket's state; False when another writer came first."""
        value = json.dumps(state).encode()
        try:
            if revision is None:
                await self._kv.create(bucket, value)
            else:
                await self._kv.update(bucket, value, last=revision)
            return True
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
            # Lost the race with another writer (create on an existing key raises a
            # wrong-last-sequence APIError too): read again.
            await asyncio.sleep(random.uniform(0, 0.005))
            return False

    async def peek(self, bucket: str) -> float:
        """The tokens `bucket` holds now (refilled to this moment), taking none: for `pulse why`."""
        limit = self._limit(bucket)
        state, _ = await self._read(bucket)
        # A held bucket (Retry-After) stores `at` = the end of the hold: it reads empty until then.
        return bucket_level(state, limit, self._clock())

    async def acquire(self, bucket: str, tokens: int = 1, *, max_wait_s: float = 10.0) -> float:
        """Take `tokens`, waiting at most `max_wait_s`; return the seconds waited.

        Raises:
            RateLimited: the bucket stayed empty for longer than `max_wait_s`.
            ConfigError: the bucket is not configured.
        """
        started = time.monotonic()
        while True:
            missing_s = await self.try_take(bucket, tokens)
            waited = time.monotonic() - started
            if missing_s == 0.0:
                return waited
            if waited + missing_s > max_wait_s:
                raise RateLimited(bucket, waited, missing_s)
            self.waits += 1
            # Jitter spreads replicas that all saw the same empty bucket.
            await asyncio.sleep(min(missing_s, _MAX_NAP_S) * random.uniform(1.0, 1.2))
