"""The one place exceptions become error JSON: OpenAI's ({"error": {"message", "type", "param", "code"}}), or on
the Ollama API's routes (under /api/) Ollama's ({"error": "message"}), with the same status codes."""
from __future__ import annotations

import logging
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.errors import EngineOverloadedError, ModelInputError
from serving.api.openapi import add_models, amend_openapi
from serving.errors import InvalidRequestError, ServerOverloadedError, ServingError
from serving.protocol.common import ErrorInfo, ErrorResponse
from serving.protocol.ollama import OllamaError
from serving.protocol.limits import ERROR_CODES

logger = logging.getLogger(__name__)

_LOCATIONS = ("body", "query", "path", "header", "cookie")
OLLAMA_PREFIX = "/api/"
_HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=code)).model_dump()


def as_serving_error(exc: BaseException) -> BaseException:
    """The models layer's typed errors as serving errors (ModelInputError is a 400, EngineOverloadedError a 429);
    anything else as it is."""
    if isinstance(exc, ModelInputError):
        return InvalidRequestError(exc.message, param=exc.param)
    if isinstance(exc, EngineOverloadedError):
        return ServerOverloadedError(str(exc))
    return exc


def error_payload(exc: BaseException) -> tuple[int, dict]:
    """(HTTP status, OpenAI error body) for any exception; unknown ones are logged and become a bare 500."""
    exc = as_serving_error(exc)
    if isinstance(exc, ServingError):
        return exc.status_code, error_body(exc.message, exc.error_type, exc.param, exc.code)
    if isinstance(exc, RequestValidationError):
        return 400, _validation_body(exc)
    if isinstance(exc, HTTPException):
        return exc.status_code, _http_body(exc)
    logger.error("internal error", exc_info=exc)
    return 500, error_body("internal error", "server_error")


def error_response(exc: BaseException, request: Request | None = None) -> JSONResponse:
    """The response for `exc`; an unknown route's 404 names the method and path, as OpenAI's does."""
    status, body = error_payload(exc)
    headers = error_headers(exc)
    if isinstance(exc, HTTPException) and exc.status_code == 404 and request is not None:
        body["error"]["message"] = f"Invalid URL ({request.method} {request.url.path})"
    return ShapedErrorResponse(body, status_code=status, headers=headers)


def is_ollama_path(path: str) -> bool:
    return path.startswith(OLLAMA_PREFIX)


def ollama_error(body: dict) -> dict:
    """Ollama's error body from OpenAI's: {"error": "<message>"}."""
    return OllamaError(error=body["error"]["message"]).model_dump()


class ShapedErrorResponse(JSONResponse):
    """An error body in the shape of the API the request's path belongs to, chosen when it is sent (middlewares
    answer errors before any route is known)."""

    def __init__(self, body: dict, status_code: int, headers: dict[str, str] | None = None):
        super().__init__(body, status_code=status_code, headers=headers)
        self.openai_body = body
        self.extra_headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if is_ollama_path(scope.get("path", "")):
            ollama = JSONResponse(ollama_error(self.openai_body), self.status_code, headers=self.extra_headers)
            await ollama(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def error_headers(exc: BaseException) -> dict[str, str] | None:
    """Headers that go with the error response: a typed error's own (Retry-After), an HTTPException's."""
    exc = as_serving_error(exc)
    if isinstance(exc, ServingError):
        return exc.headers() or None
    if isinstance(exc, HTTPException):
        return exc.headers
    return None


def _validation_body(exc: RequestValidationError) -> dict:
    """400 naming the first offending field, e.g. "messages: Field required" with param "messages"."""
    errors = exc.errors()
    if not errors:
        return error_body("Invalid request.", "invalid_request_error")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return error_body(f"Invalid JSON body: {detail}".rstrip(": "), "invalid_request_error", code="invalid_json")
    param = _format_loc(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if param is None and first.get("type") in ("missing", "model_attributes_type", "dict_type", "model_type"):
        msg = "a JSON object is required (sent with Content-Type: application/json)"
    message = f"{param}: {msg}" if param else f"Request body: {msg}"
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return error_body(message, "invalid_request_error", param, ERROR_CODES.get(first.get("type")))


def _format_loc(loc: tuple | list) -> str | None:
    """("body", "messages", 0, "content") -> "messages[0].content"."""
    parts = list(loc[1:] if loc and loc[0] in _LOCATIONS else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _http_body(exc: HTTPException) -> dict:
    type_ = _HTTP_TYPES.get(exc.status_code, "server_error" if exc.status_code >= 500 else "invalid_request_error")
    return error_body(str(exc.detail), type_)


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc, request)


def install_error_handlers(app: FastAPI) -> None:
    """Route typed, validation and HTTP errors through `error_response`; the middleware below catches the rest.
    The app's OpenAPI schema says so: every operation documents 4XX and 5XX as OpenAI's error body."""
    for exc_type in (ServingError, ModelInputError, EngineOverloadedError, RequestValidationError, HTTPException):
        app.add_exception_handler(exc_type, _handle)
    app.add_middleware(UnhandledErrorMiddleware)
    amend_openapi(app, _document_errors)


def _document_errors(schema: dict) -> None:
    """Replace FastAPI's documented 422 (never sent: validation errors are 400s) by the error body on 4XX and 5XX:
    OpenAI's, or Ollama's on the Ollama API's routes."""
    add_models(schema, ErrorResponse, OllamaError)
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
    for path, path_item in schema.get("paths", {}).items():
        model = "OllamaError" if is_ollama_path(path) else "ErrorResponse"
        body = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses.setdefault("4XX", {"description": "Refused: bad input (400), key (401/403), unknown model "
                                                        "(404), body too large (413), queue full (429)", **body})
            responses.setdefault("5XX", {"description": "The server or the model failed (500), is unavailable "
                                                        "(503) or ran out of time (504)", **body})


class UnhandledErrorMiddleware:
    """Turn any other exception into a 500 (or its wrapped cause's status) before Starlette's server-error layer."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence; error_payload logs unknown errors
            if started:  # too late for an error body; a vanished client is no error at all
                if not isinstance(exc, ClientDisconnect):
                    logger.error("error after the response started", exc_info=exc)
                return
            await error_response(exc)(scope, receive, send)

