"""/tokenize and /detokenize for chat models, in vLLM's shapes (an extension: OpenAI has no such endpoints)."""
from __future__ import annotations

from pydantic import model_validator

from models.llm.types import SamplingParams
from serving.clients import GenerationRequest
from serving.protocol.chat import ChatMessage
from serving.protocol.common import OpenAIRequest, OpenAIResponse
from serving.protocol.limits import MAX_MESSAGES, MAX_TEXT_CHARS, Name, Prompt, TokenId, bounded_list


class TokenizeRequest(OpenAIRequest):
    """POST /tokenize: a prompt (completions) or messages (chat, through the model's chat template)."""

    model: Name
    prompt: Prompt | None = None
    messages: bounded_list(ChatMessage, MAX_MESSAGES, min_items=1) | None = None
    add_special_tokens: bool = True  # prompt: the tokenizer's special tokens around it
    add_generation_prompt: bool = True  # messages: the assistant's turn opener after them

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self

    def to_generation_request(self, request_id: str) -> tuple[GenerationRequest, bool]:
        """(the request whose prompt is tokenized, the `special` flag for ChatClient.tokenize)."""
        if self.messages is not None:
            messages = [m.to_engine_message() for m in self.messages]
            return GenerationRequest(request_id, SamplingParams(), messages=messages), self.add_generation_prompt
        return GenerationRequest(request_id, SamplingParams(), prompt=self.prompt), self.add_special_tokens


class TokenizeResponse(OpenAIResponse):
    count: int
    max_model_len: int | None
    tokens: list[int]


class DetokenizeRequest(OpenAIRequest):
    model: Name
    tokens: bounded_list(TokenId, MAX_TEXT_CHARS)


class DetokenizeResponse(OpenAIResponse):
    prompt: str
