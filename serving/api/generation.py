"""Turning a chat client's chunk streams into choices and usage, shared by chat and completions."""
from __future__ import annotations

from dataclasses import dataclass, field

from models.llm.types import TokenLogprob
from serving.api.streaming import MergedStream
from serving.clients import ChatClient, GenerationChunk, GenerationRequest
from serving.protocol.common import UsageInfo


async def open_generation(client: ChatClient, requests: list[GenerationRequest]) -> MergedStream:
    """Start every request and wait for each one's first chunk, so that input errors raise here, before any reply."""
    return await MergedStream.open([client.generate(request) for request in requests])


@dataclass
class ChoiceState:
    """Everything one choice has produced so far."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, chunk: GenerationChunk) -> None:
        self.text += chunk.text
        self.logprobs += chunk.logprobs or []
        self.finish_reason = chunk.finish_reason or self.finish_reason


@dataclass
class UsageCounter:
    """Token counts over several requests (sources) of n choices each; a prompt is counted once per request."""

    prompt_tokens: dict[int, int] = field(default_factory=dict)
    completion_tokens: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, source: int, chunk: GenerationChunk) -> None:
        self.prompt_tokens[source] = max(self.prompt_tokens.get(source, 0), chunk.prompt_tokens)
        key = (source, chunk.index)
        self.completion_tokens[key] = max(self.completion_tokens.get(key, 0), chunk.completion_tokens)

    def info(self) -> UsageInfo:
        return UsageInfo.of(sum(self.prompt_tokens.values()), sum(self.completion_tokens.values()))


async def collect(stream: MergedStream, n: int) -> tuple[list[tuple[int, ChoiceState]], UsageInfo]:
    """Drain and close a generation: (index, state) per choice, index = source * n + chunk.index; and the usage."""
    usage = UsageCounter()
    choices: dict[int, ChoiceState] = {}
    try:
        async for source, chunk in stream:
            usage.add(source, chunk)
            choices.setdefault(source * n + chunk.index, ChoiceState()).add(chunk)
    finally:
        await stream.aclose()
    return sorted(choices.items()), usage.info()
