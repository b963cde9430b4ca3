"""A text-to-speech model: synthesis merged across calls (serving/deployments/merge.py), encoding done per call."""
from __future__ import annotations

import asyncio

from ray import serve

from models.speech.encoding import SUPPORTED_FORMATS, encode_audio
from models.speech.types import SpeechParams
from serving.clients import EncodedAudio
from serving.deployments.common import batch_merger, item_result, load_backend
from serving.deployments.placement import place_replica
from serving.errors import InvalidRequestError


@serve.deployment
class SpeechDeployment:
    def __init__(self, spec: dict, data_dir: str, report_to: str | None = None):
        self.model, self.backend = load_backend(place_replica(spec, report_to), data_dir)
        run = lambda items: self.backend.synthesize([t for t, _ in items], [p for _, p in items])  # noqa: E731
        self._merger = batch_merger(self.model, run)

    async def synthesize(self, text: str, params: SpeechParams, response_format: str) -> EncodedAudio:
        if response_format not in SUPPORTED_FORMATS:  # before synthesis: don't spend compute on a doomed call
            raise InvalidRequestError(
                f"response_format `{response_format}` is not supported here; use one of: {', '.join(SUPPORTED_FORMATS)}",
                param="response_format",
            )
        samples = item_result(await self._merger.submit((text, params)))
        data, media_type = await asyncio.to_thread(encode_audio, samples, self.backend.sample_rate, response_format)
        return EncodedAudio(data, media_type)
