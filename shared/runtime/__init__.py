"""The job runtime every consumer service is built on.

Declare a job with `@job(...)`, write its handler against `JobContext`, and start the
service with `run_service(...)`. Retries, run records, heartbeats, timeouts, overlap,
cancel, rate limits, events, alerts, metrics and health are the runtime's business.
"""

from shared.errors import InvalidRequest, PermanentError, RetryableError, RunCanceled
from shared.runtime._broker import ServiceBroker
from shared.runtime.context import JobContext
from shared.runtime.events import publish_alert, publish_cancel_hint, publish_run_event
from shared.runtime.health import HttpServer, build_http_app
from shared.runtime.job import Checkpoint, JobSpec, NoArgs, job, no_checkpoint
from shared.runtime.ratelimit import RateLimited, RateLimiter
from shared.runtime.records import finish_run, request_cancel
from shared.runtime.service import run_app, run_service
from shared.runtime.watchdog import time_out_silent_runs
from shared.runtime.worker import Worker
from shared.settings import JobPolicy, RetryPolicy

__all__ = [
    "Checkpoint",
    "HttpServer",
    "InvalidRequest",
    "JobContext",
    "JobPolicy",
    "JobSpec",
    "NoArgs",
    "PermanentError",
    "RateLimited",
    "RateLimiter",
    "RetryPolicy",
    "RetryableError",
    "RunCanceled",
    "ServiceBroker",
    "Worker",
    "build_http_app",
    "finish_run",
    "job",
    "no_checkpoint",
    "publish_alert",
    "publish_cancel_hint",
    "publish_run_event",
    "request_cancel",
    "run_app",
    "run_service",
    "time_out_silent_runs",
]
