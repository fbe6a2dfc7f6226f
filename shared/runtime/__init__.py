"""The job runtime every service is built on.

Declare a job with `@job(...)`, write its handler against `JobContext`, and start the
service with `run_service(...)` (`run_app(...)` for a service that consumes nothing, such
as the ticker). Retries, run records, heartbeats, timeouts, overlap, cancel, rate limits,
events, alerts, metrics, health and the watchdog are the runtime's business.

Exported here is what services (and the `pulse` CLI, the dashboard and the read models) use; the modules behind it are
private (`_*.py`). Tests and benchmarks drive jobs in-process with `Worker`.
"""

from shared.runtime._broker import ServiceBroker
from shared.runtime._budgets import Budgets
from shared.runtime._context import JobContext
from shared.runtime._events import publish_cancel_hint
from shared.runtime._freshness import Freshness, check_freshness, read_freshness
from shared.runtime._health import HttpServer, build_http_app, kv_readable, store_readable
from shared.runtime._job import Checkpoint, job, no_checkpoint
from shared.runtime._journal import read_steps
from shared.runtime._monitor import failure_streak, state_id
from shared.runtime._ratelimit import RateLimiter
from shared.runtime._records import finish_run, get_run, request_cancel
from shared.runtime._service import run_app, run_service
from shared.runtime._suspend import cancel_suspended, deliver_signal
from shared.runtime._unserved import dead_letter_unserved_requests
from shared.runtime._watchdog import time_out_silent_runs
from shared.runtime._worker import Worker

__all__ = [
    "Budgets",
    "Checkpoint",
    "Freshness",
    "HttpServer",
    "JobContext",
    "RateLimiter",
    "ServiceBroker",
    "Worker",
    "build_http_app",
    "cancel_suspended",
    "check_freshness",
    "dead_letter_unserved_requests",
    "deliver_signal",
    "failure_streak",
    "finish_run",
    "get_run",
    "job",
    "kv_readable",
    "no_checkpoint",
    "publish_cancel_hint",
    "read_freshness",
    "read_steps",
    "request_cancel",
    "run_app",
    "run_service",
    "state_id",
    "store_readable",
    "time_out_silent_runs",
]
