"""A chat/completion model: one LLMService per replica, streaming over the handle; the engine in its own process."""
from __future__ import annotations

import os
from typing import AsyncIterator

from ray import serve

from serving.clients import GenerationChunk, GenerationRequest
from serving.config import ModelConfig
from serving.deployments.common import load_backend
from serving.services.engine_process import EngineProcess
from serving.services.llm import LLMService


def engine_process_env() -> dict[str, str]:
    """Environment for the engine process, read as it starts. Its OpenMP threads spin a bounded while between
    parallel regions (GOMP_SPINCOUNT) instead of sleeping: the process runs at nice 0 above Ray's nice-15 workers,
    so a spinning thread no longer starves its partner's peers. Measured here (SmolLM2 bf16, 2 cores, through the
    server): passive waits 15.0 tok/s for one stream and 156 for 16; spin count 100,000 21.0 and 188. An operator's
    own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return {}
    return {"GOMP_SPINCOUNT": "100000"}


def build_engine(spec: dict, data_dir: str):
    """Runs in the engine process: torch threads, the model, the engine (see load_backend)."""
    return load_backend(spec, data_dir, passive_openmp=False)[1]


@serve.deployment
class ChatDeployment:
    """Admission: the engine runs `max_running` sequences and queues `max_queued` more (model `options`); past
    that the service answers 429 (ServerOverloadedError) before the request reaches the engine.

    Real models run in a child process (serving/services/engine_process.py: in the replica the engine would share
    the GIL with Ray's streaming threads); `fake:` engines are pure Python and stay in the replica."""

    def __init__(self, spec: dict, data_dir: str):
        self.model = ModelConfig.model_validate(spec)
        if self.model.source.startswith("fake:"):
            engine = load_backend(spec, data_dir)[1]
        else:
            engine = EngineProcess(build_engine, (spec, data_dir), env=engine_process_env())
        self.service = LLMService(engine)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[list[GenerationChunk]]:
        """Streams lists of chunks (all those ready at once: one Ray stream item each); when the caller goes away
        Ray cancels this generator and the service aborts the request, freeing its KV slot within one step."""
        async for chunks in self.service.generate_batches(request):
            yield chunks

    def check_health(self) -> None:
        if not self.service.is_alive():
            raise RuntimeError(f"engine loop stopped: {self.service.error!r}")

    def __del__(self):
        service = getattr(self, "service", None)
        if service is not None:
            service.shutdown()
