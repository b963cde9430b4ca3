"""POST /v1/audio/speech: the audio bytes, with the speech client's media type."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from serving.api.common import get_router
from serving.protocol.audio import SpeechRequest
from serving.router import ModelRouter

router = APIRouter(tags=["audio"])

# What the speech clients answer with, by response_format: mp3, opus (Ogg), wav, flac, pcm (16-bit LE mono).
AUDIO_MEDIA_TYPES = ("audio/mpeg", "audio/ogg", "audio/wav", "audio/flac", "audio/pcm")
_AUDIO = {200: {"description": "The audio file itself, in the requested response_format",
                "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in AUDIO_MEDIA_TYPES}}}


@router.post("/v1/audio/speech", response_class=Response, responses=_AUDIO)
async def create_speech(body: SpeechRequest, models: ModelRouter = Depends(get_router)) -> Response:
    """Synthesize `input`; a response_format the model cannot encode is the speech client's 400."""
    client = models.client(body.model, "speech")
    audio = await client.synthesize(body.input, body.to_speech_params(), body.response_format)
    return Response(content=audio.data, media_type=audio.media_type)
