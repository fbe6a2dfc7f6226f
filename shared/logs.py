"""Logging for every marketpulse process: configured once, one JSON object per line.

Each line carries `ts`, `level`, `logger`, `msg` and, when known, `event` (a stable name
such as `run.completed`), `job`, `run_id`, `attempt` and `duration_ms`, then any other
structured data passed in `extra=` as fields of its own (the message stays a sentence;
data never goes into it as Python text). A filter redacts every registered secret value
and any password in a URL before a record is written, so a secret that slips into a
message or an exception text still never reaches the output.

While a run's attempt executes, `run_context(job=, run_id=, attempt=)` is set (a context
variable, so it follows the attempt's task and the tasks it starts), and every line
logged there, by the job or by any library it calls, carries those three fields.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

from shared.errors import redact_url
from shared.settings import Settings

#: Fields copied from a record's `extra` into the JSON line, in this order.
CONTEXT_FIELDS = ("event", "job", "run_id", "attempt", "duration_ms", "status", "delay_s", "worker")
#: The fields `run_context` adds to every line logged during a run.
RUN_FIELDS = ("job", "run_id", "attempt")
_REDACTED = "***"
_HANDLER_NAME = "marketpulse"
#: Attributes every LogRecord has; anything else on a record came from `extra=`.
#: (`color_message` is uvicorn's ANSI-coloured copy of the message.)
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}
_run_fields: ContextVar[Mapping[str, object] | None] = ContextVar("pulse_run_fields", default=None)


@contextmanager
def run_context(*, job: str, run_id: str, attempt: int) -> Iterator[None]:
    """Tag every line logged inside (in this task and tasks it starts) with the run's fields."""
    token = _run_fields.set({"job": job, "run_id": run_id, "attempt": attempt})
    try:
        yield
    finally:
        _run_fields.reset(token)


class RunContextFilter(logging.Filter):
    """Adds the current run's `job`, `run_id` and `attempt` to records that lack them."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _run_fields.get()
        if fields:
            for name, value in fields.items():
                if getattr(record, name, None) is None:
                    setattr(record, name, value)
        return True


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: the known context fields first, then any other `extra=`."""
    fields: dict[str, Any] = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = value
    for name, value in vars(record).items():
        if name not in _RECORD_ATTRS and name not in fields and not name.startswith("_") and value is not None:
            fields[name] = value
    return fields


class SecretFilter(logging.Filter):
    """Replaces known secret values and URL passwords in every record's text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Very short values would redact ordinary words; nobody's secret is 3 characters.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """Return `text` without any secret."""
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return redact_url(text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        for name, value in extra_fields(record).items():
            if isinstance(value, str):
                setattr(record, name, self.scrub(value))
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(extra_fields(record))
        if record.exc_text:
            line["exc"] = record.exc_text
        elif record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def secret_values(settings: Settings) -> list[str]:
    """Every secret held by `settings` (SecretStr fields, and the MongoDB URI's password)."""
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
    # The password alone may show up in a driver's message, without the URL around it.
    password = urlsplit(settings.mongo_url.get_secret_value()).password
    if password:
        found.append(unquote(password))
        found.append(password)
    return found


def configure_logging(settings: Settings, *, stream: Any = None) -> logging.Handler:
    """Install the JSON (or plain) handler with the secret filter on the root logger.

    Calling it again replaces the previous marketpulse handler rather than adding one,
    so a test or a service that configures twice still writes each line once.

    Args:
        settings: log level, JSON or plain output, and the secrets to redact.
        stream: where lines go; stderr by default.

    Returns:
        The installed handler.
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RunContextFilter())
    handler.addFilter(SecretFilter(secret_values(settings)))
    handler.setFormatter(
        JsonFormatter() if settings.log_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # httpx logs full URLs at INFO; query strings could carry keys.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler


class BoundLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger adapter that merges its bound fields with each call's `extra`."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        bound: Mapping[str, object] = self.extra or {}
        kwargs["extra"] = {**bound, **kwargs.get("extra", {})}
        return msg, kwargs


def bind(logger: logging.Logger, **fields: object) -> BoundLogger:
    """A logger that adds `fields` (e.g. job, run_id) to every line."""
    return BoundLogger(logger, fields)
