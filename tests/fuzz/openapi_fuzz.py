"""Schemathesis runs shared by the in-process fuzz tests and the one-off run against a live server (live.py)."""
from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# No 5xx, and every response as documented. Not run: positive_data_acceptance (the schema cannot say every rule,
# e.g. that a model's context must hold prompt + max_tokens) and negative_data_rejection (numbers sent as strings,
# "0.5", are accepted, as they were before: clients send them).
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
# The request schemas whose `model` names a model of one task.
MODEL_TASKS = {"ChatCompletionRequest": "chat", "CompletionRequest": "chat", "EmbeddingRequest": "embedding",
               "ImageGenerationRequest": "image", "SpeechRequest": "speech",
               "OllamaChatRequest": "chat", "OllamaGenerateRequest": "chat", "OllamaEmbedRequest": "embedding",
               "OllamaEmbeddingsRequest": "embedding", "OllamaShowRequest": "chat",
               "ResponsesRequest": "chat", "TokenizeRequest": "chat", "DetokenizeRequest": "chat"}


def one_of(values: list) -> dict:
    return {"enum": list(values)}


def with_properties(schema: dict, properties: dict[str, dict[str, dict]], path_params: dict[str, list] | None = None,
                    always: dict[str, list[str]] | None = None) -> dict:
    """A copy of an OpenAPI schema with some properties' schemas replaced ({component: {property: schema}}), path
    parameters limited to the given values, and the `always` properties ({component: [property]}) always sent."""
    schema = copy.deepcopy(schema)
    components = schema["components"]["schemas"]
    for name, replaced in properties.items():
        components[name]["properties"].update(replaced)
    for name, props in (always or {}).items():
        components[name]["required"] = components[name].get("required", []) + props
    for path_item in schema["paths"].values():
        for operation in path_item.values():
            for param in operation.get("parameters", []):
                if param["in"] == "path" and param["name"] in (path_params or {}):
                    param["schema"] = {"type": "string", **one_of(path_params[param["name"]])}
    return schema


def model_names(models_by_task: dict[str, list[str]]) -> dict[str, dict[str, dict]]:
    """{component: {"model": one_of(names)}} for every request schema whose task has served models."""
    return {name: {"model": one_of(models_by_task[task])} for name, task in MODEL_TASKS.items()
            if models_by_task.get(task)}


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


def takes_input(operation) -> bool:
    return bool(operation.body or operation.path_parameters or operation.query)


def cases(schema) -> list:
    """pytest params (operation, mode); negative cases only where the operation takes some input."""
    return [pytest.param(op, mode, id=f"{op.label}-{mode.value}") for op in operations(schema) for mode in MODES
            if mode is GenerationMode.POSITIVE or takes_input(op)]


def fuzz(operation, mode: GenerationMode, examples: int, **call: Any) -> Counter:
    """Run `examples` generated cases (derandomized) of `operation` through every check; raises on the first
    failure, else returns how many answers of each (status, media type) came back. `call`: base_url, headers..."""
    answers = Counter()

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call_and_validate(checks=CHECKS, **call)
        content_type = (response.headers.get("content-type") or [""])[0].split(";")[0]
        answers[(response.status_code, content_type)] += 1

    run()
    print(f"{operation.label} {mode.value}: {sum(answers.values())} cases, {dict(sorted(answers.items()))}")
    return answers
