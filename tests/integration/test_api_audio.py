"""POST /v1/audio/speech: audio bytes with the speech client's media type."""
import io
import wave

import pytest

import openai
from tests.api_fakes import SPEECH, app, assert_error, fakes, http, oai  # noqa: F401


async def test_openai_client_wav(oai, fakes):
    response = await oai.audio.speech.create(model=SPEECH, voice="alloy", input="hello", response_format="wav")
    data = response.content
    assert response.response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getframerate(), wav.getnframes()) == (16_000, 5 * 160)
    text, params, fmt = fakes.speech.calls[-1]
    assert (text, params.voice, params.speed, fmt) == ("hello", "alloy", 1.0, "wav")


async def test_speed_voice_object_and_pcm(http, fakes):
    body = {"model": SPEECH, "voice": {"id": "echo"}, "input": "hello", "speed": 2.0, "response_format": "pcm"}
    r = await http.post("/v1/audio/speech", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/pcm"
    assert len(r.content) == 2 * 5 * 160 // 2
    assert fakes.speech.calls[-1][1].voice == "echo"


async def test_default_mp3_unsupported_by_the_model_is_a_400(http, oai):
    r = await http.post("/v1/audio/speech", json={"model": SPEECH, "voice": "alloy", "input": "hi"})
    assert "mp3" in assert_error(r, 400, param="response_format")
    with pytest.raises(openai.BadRequestError):
        await oai.audio.speech.create(model=SPEECH, voice="alloy", input="hi")


@pytest.mark.parametrize("body, param, code", [
    ({"speed": 5}, "speed", None), ({"speed": 0.1}, "speed", None), ({"input": ""}, "input", None),
    ({"input": "x" * 4097}, "input", "string_above_max_length"), ({"voice": "nobody"}, "voice", None),
    ({"response_format": "ogg"}, "response_format", None), ({"stream_format": "sse"}, "stream_format", None),
    ({"voice": 3}, "voice", None),
])
async def test_invalid_requests(http, body, param, code):
    base = {"model": SPEECH, "voice": "alloy", "input": "hi", "response_format": "wav"}
    assert_error(await http.post("/v1/audio/speech", json=base | body), 400, param=param, code=code)
