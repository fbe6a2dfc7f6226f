"""PyMongo's errors are translated in one place (`shared.store.store_errors`): silence
(network, timeouts) becomes retryable `StoreUnavailable`; answers pass through."""

from __future__ import annotations

from typing import cast

import pytest
from pymongo import errors

from shared.errors import RetryableError, StoreUnavailable, Unreachable
from shared.runtime import JobContext, job
from shared.runtime import _runner as runner
from shared.store import batches, store_errors

SILENCE = [
    errors.AutoReconnect("127.0.0.1:27017: connection closed"),
    errors.NetworkTimeout("127.0.0.1:27017: timed out"),
    errors.ServerSelectionTimeoutError("no servers"),
    errors.ConnectionFailure("refused"),
    errors.ExecutionTimeout("operation exceeded time limit", 50),
    errors.WTimeoutError("waiting for replication timed out", 64),
]
ANSWERS = [
    errors.DuplicateKeyError("E11000 duplicate key", 11000),
    errors.OperationFailure("Unrecognized expression '$type'", 168),
    errors.InvalidOperation("cannot do that"),
]


@pytest.mark.parametrize("error", SILENCE, ids=lambda e: type(e).__name__)
def test_network_and_timeout_errors_become_retryable_store_unavailable(error: errors.PyMongoError) -> None:
    with pytest.raises(StoreUnavailable) as info, store_errors("job stats"):
        raise error
    assert isinstance(info.value, RetryableError)
    assert isinstance(info.value, Unreachable)
    assert info.value.__cause__ is error
    assert str(info.value).startswith("job stats: the store ")
    assert type(error).__name__ in str(info.value)


@pytest.mark.parametrize("error", ANSWERS, ids=lambda e: type(e).__name__)
def test_answers_from_the_store_pass_through(error: errors.PyMongoError) -> None:
    with pytest.raises(type(error)), store_errors():
        raise error


def test_batches_split_and_bound() -> None:
    assert [list(b) for b in batches(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batches([], 3)) == []
    with pytest.raises(ValueError, match="at least one"):
        list(batches([1], 0))


async def test_a_handler_that_meets_a_silent_store_fails_with_store_unavailable() -> None:
    """The runtime calls every handler inside `store_errors`: its attempt fails as retryable."""

    @job("silent_store")
    async def handler(ctx: JobContext) -> None:
        raise errors.NetworkTimeout("127.0.0.1:27017: timed out")

    with pytest.raises(StoreUnavailable, match="job silent_store: the store did not answer within its deadline"):
        await runner._call(handler, cast(JobContext, None))
