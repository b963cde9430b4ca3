"""POST /v1/embeddings: float and base64 encodings, single and batched inputs, text and token ids."""
import base64

import numpy as np
import pytest

from tests.api_fakes import CHAT, EMBED, app, assert_error, fake_vector, fakes, http, oai  # noqa: F401


async def test_single_string_as_floats(http, fakes):
    r = await http.post("/v1/embeddings", json={"model": EMBED, "input": "hello world"})
    body = r.json()
    assert body["object"] == "list" and body["model"] == EMBED
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    [item] = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    np.testing.assert_allclose(item["embedding"], fake_vector("hello world", 8), rtol=1e-6)
    assert fakes.embed.calls == [["hello world"]]


async def test_base64_is_little_endian_float32(http):
    r = await http.post("/v1/embeddings", json={"model": EMBED, "input": ["ab", "abc"], "encoding_format": "base64"})
    data = r.json()["data"]
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
    np.testing.assert_array_equal(decoded[1], fake_vector("abc", 8))


async def test_openai_client_default_base64_and_float(oai):
    inputs = ["one", "three words here"]
    default = await oai.embeddings.create(model=EMBED, input=inputs)  # the client asks for base64 and decodes it
    floats = await oai.embeddings.create(model=EMBED, input=inputs, encoding_format="float")
    for response in (default, floats):
        assert [d.index for d in response.data] == [0, 1]
        np.testing.assert_allclose(response.data[1].embedding, fake_vector(inputs[1], 8), rtol=1e-6)
    assert default.usage.prompt_tokens == 4


@pytest.mark.parametrize("tokens, expected", [([1, 2, 3], [[1, 2, 3]]), ([[1, 2], [3]], [[1, 2], [3]])])
async def test_token_id_inputs(oai, fakes, tokens, expected):
    response = await oai.embeddings.create(model=EMBED, input=tokens, encoding_format="float")
    assert len(response.data) == len(expected) and fakes.embed.calls == [expected]


async def test_dimensions(http):
    ok = await http.post("/v1/embeddings", json={"model": EMBED, "input": "x", "dimensions": 8})
    assert ok.status_code == 200
    r = await http.post("/v1/embeddings", json={"model": EMBED, "input": "x", "dimensions": 4})
    assert "8-dimensional" in assert_error(r, 400, param="dimensions")


@pytest.mark.parametrize("body, param", [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["a", ""]}, "input"),
    ({"input": [[1], []]}, "input"),
    ({"input": 5}, "input"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({}, "input"),
])
async def test_invalid_input(http, body, param):
    assert_error(await http.post("/v1/embeddings", json={"model": EMBED, **body}), 400, param=param)


async def test_chat_model_is_not_an_embedding_model(http):
    r = await http.post("/v1/embeddings", json={"model": CHAT, "input": "x"})
    assert "chat model" in assert_error(r, 400, param="model")
