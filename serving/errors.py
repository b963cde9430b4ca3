"""Typed serving errors. `serving.api.errors` maps them (and only there) to OpenAI error bodies."""
from __future__ import annotations


class ServingError(Exception):
    """Base: carries an HTTP status and an OpenAI error type. Picklable across Ray (args = message, param, code)."""

    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message, param, code)
        self.message = message
        self.param = param
        self.code = code

    def __str__(self) -> str:
        return self.message


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

    def __init__(self, message: str, param: str | None = "model", code: str | None = "model_not_found"):
        super().__init__(message, param, code)


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
    status_code = 429
    error_type = "rate_limit_error"


class ModelUnavailableError(ServingError):
    status_code = 503
    error_type = "server_error"
