"""A chat/completion model: one LLMService per replica, streaming over the handle; the engine in its own process."""
from __future__ import annotations

from typing import AsyncIterator

from ray import serve

from serving.clients import GenerationChunk, GenerationRequest
from serving.config import ModelConfig
from serving.deployments.chat_engine import build_engine
from serving.deployments.observability import model_replica
from serving.deployments.placement import place_replica
from serving.metrics.models import engine_load, observe_generation, watch_engine
from serving.services.engine_process import EngineProcess
from serving.services.llm import LLMService
from serving.services.prompts import import_tokenizer_library


@serve.deployment
class ChatDeployment:
    """Admission: the engine runs `max_running` sequences and queues `max_queued` more (model `options`); past
    that the service answers 429 (ServerOverloadedError) before the request reaches the engine.

    Every engine, `fake:` ones included, runs in a child process (serving/services/engine_process.py): in the
    replica it would share the GIL with Ray's streaming threads, and a dead or hung engine is restarted there
    while this replica answers 503 (serving/services/llm.py)."""

    def __init__(self, spec: dict, data_dir: str, report_to: str | None = None):
        spec = place_replica(spec, report_to)
        self.model = ModelConfig.model_validate(spec)
        if not self.model.source.startswith("fake:"):  # a fake engine's tokenizer is the fake's own
            import_tokenizer_library()
        self.service = LLMService(lambda: EngineProcess(build_engine, (spec, data_dir)))
        model_replica(self.model.name)
        # Read at each scrape from the engine's last report (a restarted engine's too): never a call into it.
        watch_engine(self.model.name, lambda: engine_load(self.service.engine.stats))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[list[GenerationChunk]]:
        """Streams lists of chunks (all those ready at once: one Ray stream item each); when the caller goes away
        Ray cancels this generator and the service aborts the request, freeing its KV slot within one step."""
        async for chunks in observe_generation(self.model.name, self.service.generate_batches(request)):
            yield chunks

    def engine_stats(self) -> dict | None:
        """The engine's last stats report as a dict (models.llm.types.EngineStats: its path included), None before
        the first; read from the report, never a call into the engine."""
        return self.service.engine_stats()

    async def tokenize(self, request: GenerationRequest, special: bool) -> list[int]:
        return await self.service.tokenize(request, special)

    async def detokenize(self, token_ids: list[int]) -> str:
        return await self.service.detokenize(token_ids)

    def check_health(self) -> None:
        """Unhealthy only when restarting the engine cannot help; Serve then replaces the replica."""
        self.service.check_health()

    def __del__(self):
        service = getattr(self, "service", None)
        if service is not None:
            service.shutdown()
