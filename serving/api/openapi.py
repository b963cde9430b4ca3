"""Amendments to the OpenAPI schema FastAPI generates, so that it describes the responses actually sent."""
from __future__ import annotations

from typing import Callable

from fastapi import FastAPI
from pydantic import BaseModel


def amend_openapi(app: FastAPI, amend: Callable[[dict], None]) -> None:
    """Apply `amend` to the app's OpenAPI schema once, when it is first built (FastAPI caches what it builds)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            amend(generate())
        return app.openapi_schema

    app.openapi = openapi


def add_models(schema: dict, *models: type[BaseModel]) -> None:
    """Put the response schemas of `models` (and the models they hold) into the schema's components."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body


def json_text(model: str) -> dict:
    """A string holding the JSON of `model` (a component), as an SSE event's data is."""
    return {"type": "string", "contentMediaType": "application/json",
            "contentSchema": {"$ref": f"#/components/schemas/{model}"}}


def streamed(chunk: str) -> dict:
    """OpenAPI `responses` for a route that answers stream=true with Server-Sent Events of `chunk` objects (a
    component); each event's schema, as OpenAPI 3.1 tools read a text/event-stream schema."""
    description = (f"JSON, or with stream=true events `data: <{chunk}>` ending in `data: [DONE]`; an error after "
                   "the first event is one `data: <ErrorResponse>` event, and the stream ends there")
    event = {"type": "object", "required": ["data"],
             "properties": {"data": {"anyOf": [json_text(chunk), json_text("ErrorResponse"), {"const": "[DONE]"}]}}}
    return {200: {"description": description, "content": {"text/event-stream": {"schema": event}}}}


def named_events(event: str) -> dict:
    """OpenAPI `responses` for a route that answers stream=true with named Server-Sent Events, `event: <type>` and
    `data: <event>` (a component), as the Responses API streams; no [DONE]."""
    description = (f"JSON, or with stream=true events `event: <type>` / `data: <{event}>`; an error after the first "
                   "event is one `error` event, and the stream ends there")
    schema = {"type": "object", "required": ["data"],
              "properties": {"event": {"type": "string"}, "data": json_text(event)}}
    return {200: {"description": description, "content": {"text/event-stream": {"schema": schema}}}}
