"""GET /v1/models, /v1/models/{id}, /health, and API-key auth."""
import openai
import pytest

from serving.api.app import build_app
from tests.api_fakes import (  # noqa: F401 - fixtures
    CHAT, CREATED, EMBED, app, asgi_client, assert_error, fakes, http, oai, openai_client,
)


async def test_list_models(oai):
    models = [m async for m in oai.models.list()]
    assert [(m.id, m.object, m.created, m.owned_by, m.task) for m in models][:2] == [
        (CHAT, "model", CREATED, "local", "chat"), (EMBED, "model", CREATED, "local", "embedding"),
    ]
    assert sorted(m.task for m in models) == ["chat", "embedding", "image", "speech"]


async def test_retrieve_model_with_a_slash_in_its_id(oai, http):
    model = await oai.models.retrieve(CHAT)
    assert (model.id, model.object) == (CHAT, "model")
    r = await http.get(f"/v1/models/{CHAT}")
    assert r.json() == {"id": CHAT, "object": "model", "created": CREATED, "owned_by": "local", "task": "chat",
                        "state": "ready"}


async def test_retrieve_unknown_model_is_404(oai, http):
    assert_error(await http.get("/v1/models/nope/nothing"), 404, param="model", code="model_not_found")
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("nope")


async def test_health(http):
    r = await http.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


@pytest.fixture
async def guarded(fakes):
    async with asgi_client(build_app(fakes.router(), api_keys=["key-one", "key-two"])) as client:
        yield client


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "key-one"},
                                     {"Authorization": "Basic key-one"}, {"Authorization": "Bearer "}])
async def test_missing_or_bad_key_is_401(guarded, headers):
    r = await guarded.get("/v1/models", headers=headers)
    assert_error(r, 401, type_="authentication_error", code="invalid_api_key")
    r = await guarded.post("/v1/chat/completions", headers=headers, json={"model": CHAT})
    assert_error(r, 401, type_="authentication_error", code="invalid_api_key")


async def test_good_keys_pass_and_health_is_open(guarded):
    for key in ("key-one", "key-two"):
        r = await guarded.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
    assert (await guarded.get("/health")).status_code == 200
    assert_error(await guarded.get("/v1/models"), 401, type_="authentication_error", code="invalid_api_key")
    assert (await guarded.get("/v1/models", headers={"Authorization": "Bearer key-two"})).status_code == 200


async def test_openai_client_with_keys(fakes):
    app = build_app(fakes.router(), api_keys=["sk-local"])
    async with openai_client(app, api_key="sk-local") as good, openai_client(app, api_key="sk-other") as bad:
        completion = await good.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}],
                                                        temperature=0)
        assert completion.choices[0].message.content == "hi"  # the fake engine answers with the user's message
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()
