"""Reading a history stream from a point in time, and optionally following it: `pulse logs`, `pulse alerts`.

An ordered consumer (ephemeral, flow-controlled, no acks) starts at `since` (or at the
beginning), yields what is stored, and then either stops (caught up) or, when following,
keeps yielding new messages until `done()` says so or the deadline passes. Every wait is
bounded by the deadline: a silent server cannot hold the command past `--timeout`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

#: How long a quiet stream counts as caught up (and how often `done` is asked when following).
QUIET_S = 1.0


class FollowTimeout(Exception):
    """The deadline passed while following."""


async def tail(
    js: JetStreamContext,
    subject: str,
    stream: str,
    *,
    since: datetime | None,
    follow: bool,
    deadline: float | None = None,
    done: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[Msg]:
    """Messages on `subject` from `since`; with `follow`, new ones until `done()` is true.

    Args:
        deadline: a `time.monotonic()` value; following past it raises FollowTimeout.
        done: asked when the stream is quiet; once true, one more quiet period ends the tail
            (messages sent just before the end still arrive).

    Raises:
        FollowTimeout: `deadline` passed while following.
    """
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL, opt_start_time=since
    )
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)
    finished_at: float | None = None
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                if follow:
                    raise FollowTimeout
                return
            try:
                msg = await sub.next_msg(timeout=QUIET_S if left is None else max(0.01, min(QUIET_S, left)))
            except (nats.errors.TimeoutError, TimeoutError):
                if not follow:
                    return  # caught up
                if finished_at is None and done is not None and await _within(done(), deadline):
                    finished_at = time.monotonic()
                elif finished_at is not None:
                    return
                continue
            yield msg
            if not follow and msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()


async def _within(check: Awaitable[bool], deadline: float | None) -> bool:
    """`await check`, but never past `deadline` (then: FollowTimeout)."""
    if deadline is None:
        return await check
    try:
        return await asyncio.wait_for(check, timeout=max(0.01, deadline - time.monotonic()))
    except TimeoutError:
        raise FollowTimeout from None
