"""The server's own log lines (the `serving` loggers: access log, registry, admin, keys) as text or JSON, each one
tagged with the id of the request it belongs to (X-Request-Id), if any."""
from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("openserve_request_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id`: the current request's id (a context variable set by the request middleware)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, request_id, message, the access log's fields
    (record.fields) and the exception, if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", None) if getattr(record, "request_id", "-") != "-" else None,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Send the `serving` loggers to stderr in `log_format` ("text" or "json"), with request ids. Idempotent.
    They stop propagating to the root logger, which in a Ray worker would print them a second time."""
    logger = logging.getLogger("serving")
    for handler in list(logger.handlers):
        if getattr(handler, "openserve", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.openserve = True
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestIdFilter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
