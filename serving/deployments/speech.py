"""A text-to-speech model: synthesis batched with @serve.batch, encoding done per call."""
from __future__ import annotations

import asyncio

from ray import serve

from models.errors import ModelInputError
from models.speech.encoding import SUPPORTED_FORMATS, encode_audio
from models.speech.types import SpeechParams
from serving.clients import EncodedAudio
from serving.deployments.common import configure_batching, load_backend
from serving.errors import InvalidRequestError


def check_speech(voices: list[str], text: str, params: SpeechParams, response_format: str) -> None:
    if not text.strip():
        raise InvalidRequestError("input must not be empty", param="input")
    if params.voice not in voices:
        raise InvalidRequestError(f"unknown voice `{params.voice}`; this model has: {', '.join(voices)}", param="voice")
    if response_format not in SUPPORTED_FORMATS:
        raise InvalidRequestError(
            f"response_format `{response_format}` is not supported here; use one of: {', '.join(SUPPORTED_FORMATS)}",
            param="response_format",
        )


@serve.deployment
class SpeechDeployment:
    def __init__(self, spec: dict, data_dir: str):
        self.model, self.backend = load_backend(spec, data_dir)
        configure_batching(self._synthesize_batch, self.model)

    async def synthesize(self, text: str, params: SpeechParams, response_format: str) -> EncodedAudio:
        check_speech(self.backend.voices, text, params, response_format)
        samples = await self._synthesize_batch((text, params))
        try:
            data, media_type = await asyncio.to_thread(encode_audio, samples, self.backend.sample_rate, response_format)
        except ModelInputError as e:
            raise InvalidRequestError(e.message, param=e.param) from None
        return EncodedAudio(data, media_type)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _synthesize_batch(self, items: list[tuple[str, SpeechParams]]) -> list:
        return await asyncio.to_thread(self.backend.synthesize, [t for t, _ in items], [p for _, p in items])

    def voices(self) -> list[str]:
        return list(self.backend.voices)
