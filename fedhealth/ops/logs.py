"""One JSON line per log event, carrying the request's or the Celery task's id.

The ids travel in context variables: the request middleware (fedhealth/ops/middleware.py)
sets the request id, Celery's task_prerun/task_postrun signals (connected below, in
every process that configures logging from the settings, workers included) set the
task id. ``ContextFilter`` copies both onto each record; ``JsonFormatter`` writes it.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

from celery.signals import task_postrun, task_prerun

current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
current_task_id: ContextVar[str | None] = ContextVar("task_id", default=None)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        record.task_id = current_task_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", "task_id"[, "exception"]}``
    on one line; newlines inside a message are escaped by JSON, so one event is one line."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "task_id": getattr(record, "task_id", None),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


@task_prerun.connect
def _task_started(task_id: str | None = None, **kwargs) -> None:
    current_task_id.set(task_id)


@task_postrun.connect
def _task_finished(**kwargs) -> None:
    current_task_id.set(None)
