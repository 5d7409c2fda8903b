"""Logging of weft's services: one level setting, text or JSON lines, run context on each line.

    setup_logging("INFO", "json")                 # at start, from --log-level/--log-format
    with log_context(run=ref.name, step="train", trace_id=...):
        log.info("launched")                      # {"run": ..., "step": "train", ...}

The run, step, attempt and trace id live in context variables, so every line logged while
a step is worked on carries them, whichever module logs it, and asyncio tasks inherit them
from where they were created (`context_for` builds a context to start a task in). A line
logged inside a span without an explicit trace id gets the span's. This module only
formats records: it never logs secrets itself, and never changes what callers log.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The context fields, in the order they are shown.
FIELDS = ("run", "step", "attempt", "trace_id")

_run: contextvars.ContextVar[str] = contextvars.ContextVar("weft_log_run", default="")
_step: contextvars.ContextVar[str] = contextvars.ContextVar("weft_log_step", default="")
_attempt: contextvars.ContextVar[int] = contextvars.ContextVar("weft_log_attempt", default=0)
_trace_id: contextvars.ContextVar[str] = contextvars.ContextVar("weft_log_trace_id", default="")


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), or ""."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def _set(run: str | None, step: str | None, attempt: int | None, trace_id: str | None) -> list[Callable[[], None]]:
    """Sets the given fields; returns the resets, in the order they must run."""
    resets: list[Callable[[], None]] = []
    for var, value in ((_run, run), (_step, step), (_trace_id, trace_id)):
        if value is not None:
            resets.insert(0, functools.partial(var.reset, var.set(value)))
    if attempt is not None:
        resets.insert(0, functools.partial(_attempt.reset, _attempt.set(attempt)))
    return resets


@contextmanager
def log_context(
    *, run: str | None = None, step: str | None = None, attempt: int | None = None, trace_id: str | None = None
) -> Iterator[None]:
    """Adds the given fields to every line logged in the block (None leaves a field as is)."""
    resets = _set(run, step, attempt, trace_id)
    try:
        yield
    finally:
        for reset in resets:
            reset()


def context_for(*, run: str = "", step: str = "", traceparent: str = "") -> contextvars.Context:
    """A copy of the current context with the fields set: `asyncio.create_task(..., context=...)`."""
    context = contextvars.copy_context()
    context.run(_set, run, step, None, trace_id_of(traceparent) or None)
    return context


class ContextFilter(logging.Filter):
    """Puts the context fields on each record (`record.run`, ...; "" or 0 when unset)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run = _run.get()
        record.step = _step.get()
        record.attempt = _attempt.get()
        trace_id = _trace_id.get()
        if not trace_id:
            span = trace.get_current_span().get_span_context()
            trace_id = format(span.trace_id, "032x") if span.is_valid else ""
        record.trace_id = trace_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context fields that are
    set, and `exception` (the formatted traceback) when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, with ` [run=... step=... attempt=N trace_id=...]` when set."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{name}={getattr(record, name)}" for name in FIELDS if getattr(record, name, None)]
        if not fields:
            return text
        head, newline, rest = text.partition("\n")  # keep a traceback below the context
        return f"{head} [{' '.join(fields)}]{newline}{rest}"


def log_level(value: str) -> str:
    """Validates a level name (case-insensitive)."""
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


def log_format(value: str) -> str:
    if value not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}")
    return value


def setup_logging(level: str, fmt: str, service: str) -> None:
    """Sends every logger's records at `level` and above to stderr in format `fmt`.

    Replaces handlers installed earlier (a second call reconfigures), so each service has
    exactly one handler on the root logger.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
