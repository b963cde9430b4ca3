"""Schemathesis over the served /openapi.json and /admin/openapi.json of the in-process apps (fake backends, a
temporary registry with Serve faked): whatever it sends, no 5xx, and every response is what the schema says
(status, content type, headers, body, each SSE event). The real model names are put into the schemas so that
requests reach the models instead of ending in 404s. Deterministic: a fixed number of derandomized examples per
operation and mode."""
from __future__ import annotations

from dataclasses import replace

import pytest
import schemathesis
from schemathesis import GenerationMode

from serving.api.app import build_app
from serving.metrics.scrape import Scraper
from serving.router import ModelRouter, ServedModel
from tests.api_fakes import CHAT, EMBED, IMAGE, SPEECH, FakeChatClient, Fakes
from tests.fuzz.openapi_fuzz import MODES, cases, fuzz, model_names, one_of, operations, with_properties
from tests.registry_fakes import admin_stack

EXAMPLES = 25  # per operation and generation mode
ADMIN_KEY = "fuzz-admin-key"
ADMIN_MODEL = "org/fuzzed"
CONTEXT = 1024  # the fake LLM's context: bounds what a generated request may ask for (ignore_eos runs to it)


def public_app(fakes: Fakes):
    """The app over the fakes, the chat model's card stating its context size as the registry's cards do."""
    cards = {card.id: card for card in fakes.router().cards()}
    return build_app(ModelRouter([
        ServedModel(replace(cards[CHAT], metadata={"max_model_len": CONTEXT}), fakes.chat),
        ServedModel(cards[EMBED], fakes.embed),
        ServedModel(cards[IMAGE], fakes.image),
        ServedModel(cards[SPEECH], fakes.speech),
    ]), scraper=Scraper())  # /metrics on: this process' own numbers


def public_schema(fakes: Fakes):
    """The schema /openapi.json serves, with the fakes' model names, voices and formats in it."""
    app = public_app(fakes)
    properties = model_names({"chat": [CHAT], "embedding": [EMBED], "image": [IMAGE], "speech": [SPEECH]})
    properties["SpeechRequest"] |= {"voice": one_of(fakes.speech.voices), "response_format": one_of(["wav", "pcm"])}
    streams = {"ChatCompletionRequest": ["stream"], "CompletionRequest": ["stream"]}  # half of them streamed
    raw = with_properties(app.openapi(), properties, {"model_id": [CHAT, EMBED, IMAGE, SPEECH]}, always=streams)
    schema = schemathesis.openapi.from_dict(raw)
    schema.app = app
    return schema


FAKES = Fakes(chat=FakeChatClient(context_size=CONTEXT))
PUBLIC = public_schema(FAKES)


@pytest.fixture(scope="module", autouse=True)
def stop_the_fakes():
    yield
    FAKES.close()  # the fake LLM's service thread


@pytest.mark.parametrize("operation, mode", cases(PUBLIC))
def test_public_api(operation, mode):
    answers = fuzz(operation, mode, EXAMPLES)
    if mode is GenerationMode.POSITIVE:  # the model names are right: some requests are answered
        assert any(200 <= status < 300 for status, _ in answers), answers
    # Which generated requests end in 200 varies with PYTHONHASHSEED (the generator iterates sets of strings), so
    # "some streamed and some not" is checked over both generation endpoints together, in test_streams_were_fuzzed.
    if mode is GenerationMode.POSITIVE and operation.path in ("/v1/chat/completions", "/v1/completions"):
        GENERATED.update(key for key in answers if key[0] == 200)


GENERATED: set[tuple[int, str]] = set()  # (status, content type) of the generation endpoints' positive cases


def test_streams_were_fuzzed():
    """Runs after the public cases (pytest keeps file order): both JSON and SSE answers were reached and checked."""
    assert GENERATED == {(200, "text/event-stream"), (200, "application/json")}, GENERATED


@pytest.fixture(scope="module")
def admin(tmp_path_factory):
    """The schema /admin/openapi.json serves, over a temporary registry whose one model name is supplied."""
    stack = admin_stack(str(tmp_path_factory.mktemp("fuzz") / "registry.db"), admin_api_keys=[ADMIN_KEY])
    registration = {"name": one_of([ADMIN_MODEL]), "source": one_of(["fake:"])}
    raw = with_properties(stack.app.admin.openapi(), {"ModelRegistration": registration}, {"name": [ADMIN_MODEL]})
    schema = schemathesis.openapi.from_dict(raw)
    schema.app = stack.app
    yield schema
    stack.store.close()


ADMIN_OPERATIONS = ["GET /admin/models", "POST /admin/models", "POST /admin/models/{name}/deploy",
                    "POST /admin/models/{name}/undeploy", "GET /admin/models/{name}", "PATCH /admin/models/{name}",
                    "DELETE /admin/models/{name}", "GET /admin/models/{name}/engine", "GET /admin/upstreams",
                    "GET /admin/upstreams/{name}"]
NO_INPUT = ("GET /admin/models", "GET /admin/upstreams")
ADMIN_CASES = [pytest.param(label, mode, id=f"{label}-{mode.value}") for label in ADMIN_OPERATIONS for mode in MODES
               if mode is GenerationMode.POSITIVE or label not in NO_INPUT]


@pytest.mark.parametrize("label, mode", ADMIN_CASES)
def test_admin_api(admin, label, mode):
    method, path = label.split(" ")
    assert fuzz(admin[path][method], mode, EXAMPLES, headers={"Authorization": f"Bearer {ADMIN_KEY}"})


def test_every_admin_operation_is_fuzzed(admin):
    assert sorted(op.label for op in operations(admin)) == sorted(ADMIN_OPERATIONS)
