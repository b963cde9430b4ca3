"""POST /v1/images/generations: b64_json PNGs of the requested size; size, n and extension fields."""
import base64
import io

import pytest
from PIL import Image

from tests.api_fakes import IMAGE, app, assert_error, fakes, http, oai  # noqa: F401


def png_size(b64: str) -> tuple[int, int]:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image.size


async def test_openai_client_b64_pngs_of_requested_size(oai, fakes):
    response = await oai.images.generate(model=IMAGE, prompt="a cat", size="128x64", n=2, response_format="b64_json")
    assert [png_size(d.b64_json) for d in response.data] == [(128, 64), (128, 64)]
    assert response.created > 0
    prompt, params, n = fakes.image.calls[-1]
    assert (prompt, params.width, params.height, n) == ("a cat", 128, 64, 2)


async def test_defaults_from_the_model_card(http, fakes):
    r = await http.post("/v1/images/generations", json={"model": IMAGE, "prompt": "a dog"})
    body = r.json()
    assert png_size(body["data"][0]["b64_json"]) == (64, 64) and body["size"] == "64x64"
    params = fakes.image.calls[-1][1]
    # The card sets default_steps only: guidance stays unset, for the backend to fill with its pipeline's own.
    assert (params.num_inference_steps, params.guidance_scale, params.seed) == (2, None, None)


async def test_extension_fields(http, fakes):
    body = {
        "model": IMAGE, "prompt": "x", "seed": 9, "steps": 3, "guidance": 1.5,
        "negative_prompt": "blurry", "quality": "hd", "style": "vivid", "size": "auto",
    }
    assert (await http.post("/v1/images/generations", json=body)).status_code == 200
    params = fakes.image.calls[-1][1]
    assert (params.seed, params.num_inference_steps, params.guidance_scale, params.negative_prompt) == (
        9, 3, 1.5, "blurry"
    )


async def test_url_response_format_is_refused_clearly(http):
    r = await http.post("/v1/images/generations", json={"model": IMAGE, "prompt": "x", "response_format": "url"})
    assert "does not host files" in assert_error(r, 400, param="response_format")


@pytest.mark.parametrize("size, hint", [
    ("big", "1024x1024"), ("64x", "1024x1024"), ("100x100", "multiples of 8"), ("0x64", "multiples of 8"),
    ("1024x1024", "too large"),
])
async def test_bad_sizes(http, size, hint):
    r = await http.post("/v1/images/generations", json={"model": IMAGE, "prompt": "x", "size": size})
    assert hint in assert_error(r, 400, param="size")


@pytest.mark.parametrize("body, param", [
    ({"n": 11}, "n"), ({"n": 0}, "n"), ({"prompt": ""}, "prompt"), ({"steps": 0}, "steps"),
    ({"output_format": "jpeg"}, "output_format"), ({"stream": True}, "stream"),
])
async def test_invalid_requests(http, body, param):
    r = await http.post("/v1/images/generations", json={"model": IMAGE, "prompt": "x", **body})
    assert_error(r, 400, param=param)
