"""A chat/completion model: one LLMService (engine thread) per replica, streaming over the handle."""
from __future__ import annotations

from typing import AsyncIterator

from ray import serve

from serving.clients import GenerationChunk, GenerationRequest
from serving.deployments.common import load_backend
from serving.services.llm import LLMService


@serve.deployment
class ChatDeployment:
    def __init__(self, spec: dict, data_dir: str):
        self.model, engine = load_backend(spec, data_dir)
        self.service = LLMService(engine, max_pending=int(self.model.options.get("max_pending", 256)))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Streams chunks; when the caller goes away Ray cancels this generator and the service aborts."""
        async for chunk in self.service.generate(request):
            yield chunk

    def check_health(self) -> None:
        if not self.service.is_alive():
            raise RuntimeError(f"engine loop stopped: {self.service.error!r}")

    def __del__(self):
        service = getattr(self, "service", None)
        if service is not None:
            service.shutdown()
