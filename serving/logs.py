"""The server's own log lines (the `serving` loggers: access log, registry, admin, keys) as text or JSON, each one
tagged with the id of the request it belongs to (X-Request-Id), if any."""
from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import time
from typing import IO

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("openserve_request_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id`: the current request's id (a context variable set by the request middleware)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        return True


def json_line(created: float, level: str, logger: str, request_id: str | None, message: str,
              fields: dict | None = None) -> str:
    """One JSON object: time (UTC, ISO 8601, ms), level, logger, request_id, message, then `fields`."""
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z",
        "level": level, "logger": logger, "request_id": request_id, "message": message,
    }
    line.update(fields or {})
    return json.dumps(line, default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (json_line), with the exception, if any."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", "-")
        fields = dict(getattr(record, "fields", {}))
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json_line(record.created, record.levelname, record.name, None if request_id == "-" else request_id,
                         record.getMessage(), fields)


class AccessLog:
    """The access log: one line per request, in the same text or JSON layout as the `serving` loggers, formatted
    directly and written in batches at most `flush_s` apart, from the event loop. Through `logging`, with a flush
    per line, the line cost more than the request's metrics, key check and id together (cProfile of the ingress
    app in-process, docs/operations.md)."""

    name = "serving.access"

    def __init__(self, log_format: str = "text", stream: IO[str] | None = None, flush_s: float = 0.2):
        self.json = log_format == "json"
        self.stream = stream  # None: sys.stderr at the time of writing
        self.flush_s = flush_s
        self._lines: list[str] = []  # written within flush_s; lost if the process dies first

    def write(self, request_id: str, message: str, fields: dict) -> None:
        now = time.time()
        if self.json:
            line = json_line(now, "INFO", self.name, request_id, message, fields)
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
            line = f"{stamp} INFO {self.name} [{request_id}] {message}"
        self._lines.append(line + "\n")
        if self.flush_s <= 0:
            self.flush()
        elif len(self._lines) == 1:
            asyncio.get_running_loop().call_later(self.flush_s, self.flush)

    def flush(self) -> None:
        if self._lines:
            text, self._lines = "".join(self._lines), []
            stream = self.stream or sys.stderr
            stream.write(text)
            stream.flush()


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
