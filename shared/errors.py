"""The exception tree of marketpulse.

    PulseError
    ├── ConfigError              (also ValueError) bad settings; raised at start-up
    ├── Unreachable              a server (NATS, MongoDB, a provider) did not answer
    │   ├── BusUnavailable       NATS
    │   └── StoreUnavailable     MongoDB (also a RetryableError)
    ├── InvalidRequest           a job request that can never run (bad JSON, schema, job, args)
    ├── SignalRejected           (also LookupError) no waiting workflow run can take a signal
    ├── RetryableError           this attempt failed; a later one may work (optional delay)
    │   ├── StoreUnavailable     MongoDB did not answer within its deadline, or the network failed
    │   ├── ProviderUnavailable  transient provider trouble (5xx, 429, timeout)
    │   └── StepFailed           a workflow step failed on every try of its retry policy
    ├── PermanentError           no retry can fix it; fail the run now
    │   ├── ProviderRejected     the provider refused us (401/403/404/422...)
    │   ├── ProviderDataError    the provider's answer cannot be understood at all
    │   ├── DuplicateStep        a workflow used a step name twice in one run
    │   ├── StepOrderChanged     a resumed workflow asked for its steps in another order
    │   ├── StepResultTooLarge   a workflow's step results exceed the run's limit
    │   └── WaitTimedOut         a workflow's wait for a signal timed out (when asked to raise)
    ├── QuotaExhausted           an upstream's request quota is spent until its reset: the run is deferred
    └── RunCanceled              the run was canceled by an operator

Foreign errors are translated at one boundary each: `bus.py` (nats), `store.py`
(pymongo), `providers/http.py` (httpx/stamina). Messages say what went wrong and what
to do, and never contain secrets (URLs are redacted with `redact_url`).
"""

from __future__ import annotations

import re
from datetime import datetime

_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^@/]*)@")
#: A URL's query string (from `?` up to a fragment or whitespace), and one `name=value` in it.
_QUERY_RE = re.compile(r"(?P<url>[a-zA-Z][a-zA-Z0-9+.-]*://[^?\s]*)\?(?P<query>[^#\s]*)")
_QUERY_VALUE_RE = re.compile(r"=[^&;]*")

#: Longest error text kept in run records, events and dead letters.
MAX_ERROR_CHARS = 2000


def redact_url(url: str) -> str:
    """Return `url` with any password (or token) in its userinfo replaced by `***`, and every
    query-string value too.

    Query options can carry secrets as well (MongoDB's `tlsCertificateKeyFilePassword=`,
    `authMechanismProperties=AWS_SESSION_TOKEN:...`); their names stay to say what was set.
    """

    def _replace(match: re.Match[str]) -> str:
        userinfo = match.group("userinfo")
        user = userinfo.split(":", 1)[0] if ":" in userinfo else "***"
        return f"{match.group('scheme')}{user}:***@"

    def _hide_values(match: re.Match[str]) -> str:
        return f"{match.group('url')}?{_QUERY_VALUE_RE.sub('=***', match.group('query'))}"

    return _QUERY_RE.sub(_hide_values, _USERINFO_RE.sub(_replace, url))


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Truncate `text` to `limit` characters, marking the cut."""
    marker = "… [truncated]"
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


class PulseError(Exception):
    """Base of every error raised by marketpulse."""


class ConfigError(PulseError, ValueError):
    """A setting is missing or invalid. The message names the variable and what is expected."""


class Unreachable(PulseError):
    """A server did not answer within the configured time."""


class BusUnavailable(Unreachable):
    """NATS could not be reached or refused the connection."""


class InvalidRequest(PulseError):
    """A job request that can never run: bad JSON, wrong schema version, unknown job, bad args."""


class SignalRejected(PulseError, LookupError):
    """A signal that no waiting workflow run can take; the message says why and what to do."""


class RetryableError(PulseError):
    """The attempt failed but a later attempt may succeed.

    Args:
        message: what went wrong.
        delay_s: seconds to wait before the next attempt, if the cause says so
            (for example a provider's Retry-After); None lets the retry policy decide.
    """

    def __init__(self, message: str, *, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class StoreUnavailable(Unreachable, RetryableError):
    """MongoDB could not be reached, refused the connection, or did not answer within its deadline.

    Retryable: a hung or restarting store fails the attempt (which is retried later)
    instead of hanging it. Raised by `shared.store.store_errors`, the one place PyMongo's
    network and timeout errors are translated.
    """


class ProviderUnavailable(RetryableError):
    """The provider answered 5xx/429 or timed out, after the quick in-attempt retries."""


class PermanentError(PulseError):
    """No retry can fix this; the run fails at once (and raises an alert)."""


class ProviderRejected(PermanentError):
    """The provider refused the request (for example 401 on a wrong API key)."""


class ProviderDataError(PermanentError):
    """The provider's answer could not be understood at all (not one record, the whole body)."""


class StepFailed(RetryableError):
    """A workflow step failed on every try of its retry policy; the attempt fails (and may be retried)."""


class DuplicateStep(PermanentError):
    """A workflow asked for a step name it already used in this run."""


class StepOrderChanged(PermanentError):
    """A resumed workflow run asked for its steps in another order than its journal holds."""


class StepResultTooLarge(PermanentError):
    """A step's result would take the run's recorded results over `step_results_max_bytes`."""


class WaitTimedOut(PermanentError):
    """`wait_for_event(..., raise_on_timeout=True)` saw no signal before its timeout."""


class QuotaExhausted(PulseError):
    """An upstream's quota for this period is spent: the run is deferred until `resets_at`, not failed."""

    def __init__(self, upstream: str, spent: int, limit: int, resets_at: datetime) -> None:
        stamp = resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        super().__init__(
            f"the quota of upstream {upstream!r} is spent ({spent} of {limit} requests this period); "
            f"deferred until it resets at {stamp} (raise PULSE_QUOTAS to go sooner)"
        )
        self.upstream = upstream
        self.spent = spent
        self.limit = limit
        self.resets_at = resets_at


class RunCanceled(PulseError):
    """The run was canceled by an operator; raised at the handler's next check point."""
