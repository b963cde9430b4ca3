"""A text-to-speech model: synthesis merged across calls (serving/deployments/merge.py), encoding done per call."""
from __future__ import annotations

import asyncio

from ray import serve

from models.speech.encoding import SUPPORTED_FORMATS, encode_audio
from models.speech.types import SpeechBackend, SpeechParams
from serving.clients import EncodedAudio
from serving.config import ModelConfig
from serving.deployments.common import ServedModel, item_result, load_backend
from serving.deployments.placement import place_replica
from serving.errors import InvalidRequestError


class SpeechModel(ServedModel):
    """A text-to-speech model in this process: synthesis merged across calls, encoding done per call."""

    def __init__(self, model: ModelConfig, backend: SpeechBackend):
        super().__init__(model, backend, lambda items: backend.synthesize([t for t, _ in items], [p for _, p in items]))

    async def synthesize(self, text: str, params: SpeechParams, response_format: str) -> EncodedAudio:
        if response_format not in SUPPORTED_FORMATS:  # before synthesis: don't spend compute on a doomed call
            raise InvalidRequestError(
                f"response_format `{response_format}` is not supported here; use one of: {', '.join(SUPPORTED_FORMATS)}",
                param="response_format",
            )
        samples = item_result(await self.merger.submit((text, params)))
        data, media_type = await asyncio.to_thread(encode_audio, samples, self.backend.sample_rate, response_format)
        return EncodedAudio(data, media_type)


@serve.deployment
class SpeechDeployment:
    """One speech model's own replica."""

    def __init__(self, spec: dict, data_dir: str, report_to: str | None = None):
        self.served = SpeechModel(*load_backend(place_replica(spec, report_to), data_dir))

    async def synthesize(self, text: str, params: SpeechParams, response_format: str,
                         model: str | None = None) -> EncodedAudio:
        """SpeechModel.synthesize; `model` (the name the ingress sends every replica) is this replica's own."""
        return await self.served.synthesize(text, params, response_format)
