"""The embedding, image and speech clients over an upstream (serving.clients' protocols), and which one a task
gets. Each sends the OpenAI request the remote expects and decodes its reply into what a local model returns."""
from __future__ import annotations

import base64
import json

import numpy as np

from models.images.types import ImageParams
from models.speech.types import SpeechParams
from serving.clients import EmbeddingResult, EncodedAudio
from serving.errors import UpstreamError
from serving.protocol.images import ImageDefaults
from serving.upstream.chat import UpstreamChatClient
from serving.upstream.transport import UpstreamTransport, read_body

_IMAGE_DEFAULTS = ImageDefaults()


class _Client:
    def __init__(self, transport: UpstreamTransport, remote_model: str):
        self.transport = transport
        self.remote_model = remote_model

    async def _post_json(self, path: str, body: dict) -> dict:
        async with self.transport.request("POST", path, body) as response:
            reply = json.loads(await read_body(response))
        if not isinstance(reply, dict):
            raise UpstreamError(f"the upstream's {path} reply is not a JSON object", code="upstream_error")
        return reply


def _vector(embedding: list[float] | str) -> np.ndarray:
    if isinstance(embedding, str):  # base64 of little-endian float32, as asked
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


class UpstreamEmbeddingClient(_Client):
    async def embed(self, inputs: list[str] | list[list[int]]) -> EmbeddingResult:
        """Asks for base64 (a quarter of the JSON's size, no float parsing); plain lists are accepted too."""
        body = {"model": self.remote_model, "input": inputs, "encoding_format": "base64"}
        reply = await self._post_json("/embeddings", body)
        try:
            data = sorted(reply["data"], key=lambda d: d["index"])
            vectors = np.stack([_vector(d["embedding"]) for d in data])
        except (KeyError, TypeError, ValueError) as e:
            raise UpstreamError(f"the upstream's embeddings are malformed: {e!r}", code="upstream_error") from None
        if len(vectors) != len(inputs):
            raise UpstreamError(f"the upstream returned {len(vectors)} embeddings for {len(inputs)} inputs",
                                code="upstream_error")
        return EmbeddingResult(vectors=vectors, prompt_tokens=int((reply.get("usage") or {}).get("prompt_tokens", 0)))


class UpstreamImageClient(_Client):
    async def generate(self, prompt: str, params: ImageParams, n: int) -> list[bytes]:
        """n images as the remote encodes them. The diffusion extensions are sent only when they differ from the
        defaults, so that a remote that does not know them (OpenAI's) is not refused them."""
        body: dict = {"model": self.remote_model, "prompt": prompt, "n": n,
                      "size": f"{params.width}x{params.height}", "response_format": "b64_json"}
        extensions = {
            "seed": params.seed, "negative_prompt": params.negative_prompt,
            "num_inference_steps": None if params.num_inference_steps == _IMAGE_DEFAULTS.steps
            else params.num_inference_steps,
            "guidance_scale": None if params.guidance_scale == _IMAGE_DEFAULTS.guidance_scale else params.guidance_scale,
        }
        body.update({k: v for k, v in extensions.items() if v is not None})
        reply = await self._post_json("/images/generations", body)
        try:
            images = [base64.b64decode(d["b64_json"]) for d in reply["data"]]
        except (KeyError, TypeError, ValueError) as e:
            raise UpstreamError(f"the upstream's images are malformed: {e!r}", code="upstream_error") from None
        if len(images) != n:
            raise UpstreamError(f"the upstream returned {len(images)} images for n={n}", code="upstream_error")
        return images


class UpstreamSpeechClient(_Client):
    async def synthesize(self, text: str, params: SpeechParams, response_format: str) -> EncodedAudio:
        body = {"model": self.remote_model, "input": text, "voice": params.voice, "speed": params.speed,
                "response_format": response_format}
        async with self.transport.request("POST", "/audio/speech", body) as response:
            audio = await read_body(response)
            media_type = response.headers.get("Content-Type", "application/octet-stream")
        return EncodedAudio(data=audio, media_type=media_type)


UPSTREAM_CLIENTS = {
    "chat": UpstreamChatClient,
    "embedding": UpstreamEmbeddingClient,
    "image": UpstreamImageClient,
    "speech": UpstreamSpeechClient,
}
