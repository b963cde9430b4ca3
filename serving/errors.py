"""Typed serving errors. `serving.api.errors` maps them (and only there) to OpenAI error bodies."""
from __future__ import annotations

import math


class ServingError(Exception):
    """Base: carries an HTTP status and an OpenAI error type. Picklable across Ray (args = message, param, code,
    retry_after). `retry_after` (seconds) becomes a Retry-After header; subclasses add headers with `headers()`."""

    status_code = 500
    error_type = "server_error"
    default_retry_after: float | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message, param, code, retry_after)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = self.default_retry_after if retry_after is None else retry_after

    def __str__(self) -> str:
        return self.message

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with the error (Retry-After in whole seconds, at least 1)."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class InvalidRequestError(ServingError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(ServingError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDeniedError(ServingError):
    status_code = 403
    error_type = "permission_error"


class ModelNotFoundError(ServingError):
    status_code = 404
    error_type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = "model", code: str | None = "model_not_found",
                 retry_after: float | None = None):
        super().__init__(message, param, code, retry_after)  # the four args, so that it pickles across Ray


class NotFoundError(ServingError):
    status_code = 404
    error_type = "invalid_request_error"


class ConflictError(ServingError):
    """The request clashes with the current state (a model name or alias already taken)."""

    status_code = 409
    error_type = "invalid_request_error"


class RequestTooLargeError(ServingError):
    status_code = 413
    error_type = "invalid_request_error"


class ServerOverloadedError(ServingError):
    """The model's queue is full: retry later (429 with Retry-After)."""

    status_code = 429
    error_type = "rate_limit_error"
    default_retry_after = 1.0


class ModelUnavailableError(ServingError):
    """The model cannot answer now (its engine restarts, no replica yet): retry later (503 with Retry-After)."""

    status_code = 503
    error_type = "server_error"
    default_retry_after = 5.0


class DeadlineExceededError(ServingError):
    """The request was not answered within its deadline (504); the work it started has been cancelled."""

    status_code = 504
    error_type = "server_error"
    default_retry_after = 5.0


class RateLimitExceededError(ServingError):
    """An API key is over one of its limits (429, OpenAI's body: type `requests` or `tokens`, code
    `rate_limit_exceeded`). Carries OpenAI's x-ratelimit-* headers and `retry-after-ms`, which the openai client
    reads before Retry-After, so its own retry waits exactly as long as needed."""

    status_code = 429

    def __init__(self, message: str, param: str | None = None, code: str | None = "rate_limit_exceeded",
                 retry_after: float | None = 1.0, kind: str = "requests", limit_headers: dict[str, str] | None = None):
        super().__init__(message, param, code, retry_after)
        self.args = (message, param, code, retry_after, kind, limit_headers)
        self.error_type = kind  # "requests" or "tokens", as OpenAI says
        self.limit_headers = dict(limit_headers or {})

    def headers(self) -> dict[str, str]:
        ms = max(1, math.ceil(1000 * self.retry_after))
        return {**super().headers(), "retry-after-ms": str(ms), **self.limit_headers}


class RegistryUnavailableError(ModelUnavailableError):
    """The model registry's database cannot be used now (locked, unreachable, unreadable): retry later (503)."""

    default_retry_after = 2.0


class ModelExecutionError(ServingError):
    """The model failed on this request for a reason other than its input (500); the replica logged it once."""


class RegistryEntryInvalidError(ServingError):
    """A registry row this release cannot read (edited by hand, damaged): the server's data, not the request (500)."""


class UpstreamError(ServingError):
    """A remote server that serves a model answered wrongly (a 5xx, a refused key, a malformed reply): 502."""

    status_code = 502
    error_type = "server_error"


class CircuitOpenError(ModelUnavailableError):
    """The model's upstream failed too often: calls are refused at once until its circuit half-opens (503 with
    Retry-After: the seconds until then)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "circuit_open",
                 retry_after: float | None = None):
        super().__init__(message, param, code, retry_after)


class TooManyConnectionsError(ServingError):
    """The server has `server.max_connections` open connections: retry later (503 with Retry-After)."""

    status_code = 503
    error_type = "server_error"
    default_retry_after = 1.0
