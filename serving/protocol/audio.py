"""/v1/audio/speech: the request model mirroring OpenAI's text-to-speech API."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from models.speech.types import SpeechParams
from serving.errors import InvalidRequestError
from serving.protocol.common import OpenAIRequest
from serving.protocol.limits import MAX_SPEECH_CHARS, MAX_SPEED, MIN_SPEED, Name, one_message, text

AudioFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class VoiceId(OpenAIRequest):
    id: Name


class SpeechRequest(OpenAIRequest):
    """POST /v1/audio/speech body; the response is the audio bytes themselves."""

    model: Name
    input: text(MAX_SPEECH_CHARS, min_chars=1)
    voice: Annotated[Name | VoiceId, one_message("voice must be a voice name or an object with an 'id'")]
    response_format: AudioFormat = "mp3"  # OpenAI's default; the speech client refuses formats it cannot encode
    speed: float = Field(default=1.0, ge=MIN_SPEED, le=MAX_SPEED)
    instructions: text(MAX_SPEECH_CHARS) | None = None  # a style hint; models here have no way to follow it
    stream_format: Literal["sse", "audio"] | None = None

    def to_speech_params(self) -> SpeechParams:
        if self.stream_format == "sse":
            raise InvalidRequestError("stream_format 'sse' is not supported; use 'audio'.", param="stream_format")
        voice = self.voice.id if isinstance(self.voice, VoiceId) else self.voice
        return SpeechParams(voice=voice, speed=self.speed)
