"""The service's logs: plain lines for people or one JSON object per line for log collectors
(``TUNEFORGE_LOG_FORMAT``), each with the id of the request it was written for.

JSON lines (python-json-logger) hold ``timestamp``, ``level``, ``logger``, ``message``, ``request_id`` and a
record's extra fields (the access log adds ``http_method``, ``path``, ``status``, ``duration_ms``,
``organization_id``, ``api_key_id``). uvicorn's own loggers go through the same handler; its access log is
replaced by ``tuneforge.access`` (:mod:`.request_context`), which knows the request id and the caller.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from tuneforge.service.core.config import LogSettings
from tuneforge.service.observability.request_context import request_id_var

PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s"
JSON_RENAMES = {"asctime": "timestamp", "levelname": "level", "name": "logger"}


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record ("-" outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        return True


def formatter(kind: str) -> logging.Formatter:
    if kind == "json":
        return JsonFormatter(JSON_FIELDS, rename_fields=JSON_RENAMES, timestamp=False,
                             datefmt="%Y-%m-%dT%H:%M:%S%z", json_ensure_ascii=False)
    return logging.Formatter(PLAIN_FORMAT)


def configure_logging(settings: LogSettings, stream: TextIO | None = None) -> None:
    """One handler on the root logger; uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(settings.log_format))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # replaced by tuneforge.access, which has the request id and the caller
    logging.getLogger("uvicorn.access").disabled = True
