"""The Ollama API's request and response bodies (/api/chat, /api/generate, /api/embed, /api/embeddings, /api/show,
/api/tags, /api/ps, /api/version), as the official clients send and read them, and their mapping onto the same
engine requests as the OpenAI API's."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.llm.types import SamplingParams, TokenLogprob
from serving.clients import GenerationRequest, ModelCard
from serving.errors import InvalidRequestError
from serving.protocol.common import SamplingFields, stop_sequences
from serving.protocol.limits import (
    MAX_EMBEDDING_DIMENSIONS, MAX_EMBEDDING_INPUTS, MAX_MESSAGES, MAX_NAME_CHARS, MAX_TEXT_CHARS, MAX_TOKENS,
    MAX_TOP_K, MAX_TOP_LOGPROBS, Name, Prompt, Seed, StopString, bounded_list, check_total, one_message, text,
)

OLLAMA_API_VERSION = "0.13.0"  # the Ollama release whose API (routes and fields) this mirrors
OLLAMA_TASKS = ("chat", "embedding")  # what Ollama's API can use; image and speech models are not listed
# Ollama's own defaults for a model whose Modelfile sets none (its docs, "Valid Parameters and Values").
DEFAULT_TEMPERATURE, DEFAULT_TOP_P, DEFAULT_TOP_K = 0.8, 0.9, 40
NEVER_EXPIRES = "2318-01-01T00:00:00Z"  # /api/ps: models here stay loaded (as Ollama with keep_alive -1)
_NEUTRAL = {"repeat_penalty": 1.0, "tfs_z": 1.0, "typical_p": 1.0, "min_p": 0.0, "mirostat": 0}


class OllamaError(BaseModel):
    """Ollama's error body, on every route under /api/ (serving/api/errors.py makes it)."""

    error: str


class OllamaRequest(BaseModel):
    """Base of request bodies: unknown top-level fields are ignored, as Ollama does; the OpenAI API's caps
    (serving/protocol/limits.py) apply, NaN and Infinity are refused."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class OllamaOptions(BaseModel):
    """Ollama's `options`. Sampling options map onto the engine; load-time and resource options (num_ctx,
    num_gpu, num_thread, ...) are accepted and have no effect here (the server's configuration decides them); a
    sampling option this engine lacks is refused unless it has its neutral value; an unknown key is refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_predict: int | None = Field(None, ge=-2, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0.0, le=100.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, le=MAX_TOP_K)
    seed: Seed | None = None
    stop: Annotated[
        StopString | list[StopString] | None, one_message("stop must be a string or a list of strings")
    ] = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    # Without effect here: how the model is loaded and run.
    numa: bool | None = None
    num_ctx: int | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding_only: bool | None = None
    num_thread: int | None = None
    num_keep: int | None = None
    # Sampling this engine does not do: only their neutral values are accepted.
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    penalize_newline: bool | None = None
    tfs_z: float | None = None
    typical_p: float | None = None
    min_p: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        return stop_sequences(stop)

    def sampling_params(self, logprobs: bool = False, top_logprobs: int = 0) -> SamplingParams:
        """The engine's parameters, with Ollama's defaults for what is not set."""
        for name, neutral in _NEUTRAL.items():
            value = getattr(self, name)
            if value is not None and value != neutral:
                raise InvalidRequestError(f"options.{name} is not supported by this server (only {neutral}).",
                                          param=f"options.{name}")
        if self.num_predict == 0:
            raise InvalidRequestError("options.num_predict must be at least 1, or -1 / -2 for no limit.",
                                      param="options.num_predict")
        return SamplingParams(
            max_tokens=None if self.num_predict in (None, -1, -2) else self.num_predict,
            temperature=DEFAULT_TEMPERATURE if self.temperature is None else self.temperature,
            top_p=DEFAULT_TOP_P if not self.top_p else self.top_p,  # 0 disables top-p in Ollama
            top_k=DEFAULT_TOP_K if self.top_k is None else (self.top_k if self.top_k > 0 else -1),
            seed=self.seed if self.seed is not None and self.seed >= 0 else None,  # Ollama: negative is random
            stop=list(self.stop or []),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )


class _Generating(OllamaRequest):
    """What /api/chat and /api/generate share."""

    model: text(MAX_NAME_CHARS, min_chars=1)
    stream: bool = True  # Ollama streams unless told not to
    format: Any = None
    options: OllamaOptions = OllamaOptions()
    keep_alive: float | str | None = None  # models here are always loaded: accepted, no effect
    think: bool | str | None = None
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS)

    def _sampling(self, prompts: list[str], param: str, context: int | None) -> SamplingParams:
        """The engine's parameters, after what the model's context size (None: unknown) rules out."""
        if self.format not in (None, ""):
            raise InvalidRequestError("format (JSON mode, JSON schemas) is not supported by this server.",
                                      param="format")
        if self.think not in (None, False):
            raise InvalidRequestError(f'"{self.model}" does not support thinking', param="think")
        params = self.options.sampling_params(self.logprobs, self.top_logprobs)
        SamplingFields.check_context(prompts, param, params.max_tokens, context)
        top = self.top_logprobs if self.logprobs else None
        SamplingFields.check_logprob_entries(top, 1, params.max_tokens or context)
        return params


class OllamaMessage(OllamaRequest):
    role: Literal["system", "user", "assistant", "tool"]
    content: Prompt = ""
    images: list[str] | None = None
    tool_calls: list[Any] | None = None

    def to_engine_message(self) -> dict:
        if self.role == "tool" or self.tool_calls:
            raise InvalidRequestError("Tool calling is not supported by this server.", param="messages")
        if self.images:
            raise InvalidRequestError("Images are not supported by this server's models.", param="messages")
        return {"role": self.role, "content": self.content}


class OllamaChatRequest(_Generating):
    """POST /api/chat. No messages: Ollama's way of loading a model, answered at once."""

    messages: bounded_list(OllamaMessage, MAX_MESSAGES) = Field(default_factory=list)
    tools: list[Any] | None = None

    @field_validator("messages")
    @classmethod
    def _bounded_text(cls, messages: list[OllamaMessage]) -> list[OllamaMessage]:
        check_total((m.content for m in messages), "the messages' text")
        return messages

    def to_generation_request(self, request_id: str, context: int | None = None) -> GenerationRequest:
        if self.tools:
            raise InvalidRequestError("Tool calling is not supported by this server.", param="tools")
        messages = [m.to_engine_message() for m in self.messages]
        params = self._sampling(["".join(m["content"] for m in messages)], "messages", context)
        return GenerationRequest(request_id=request_id, params=params, messages=messages)


class OllamaGenerateRequest(_Generating):
    """POST /api/generate: `prompt` in the model's chat template (with `system`), or as is with `raw`. No prompt:
    Ollama's way of loading a model, answered at once."""

    prompt: Prompt | None = None
    system: Prompt | None = None
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[str] | None = None

    @field_validator("system")
    @classmethod
    def _bounded_text(cls, system: str | None, info: Any) -> str | None:
        check_total([info.data.get("prompt") or "", system or ""], "prompt and system")
        return system

    def to_generation_request(self, request_id: str, context: int | None = None) -> GenerationRequest:
        params = self._sampling([(self.system or "") + (self.prompt or "")], "prompt", context)
        unsupported = {"suffix": self.suffix, "template": self.template, "context": self.context, "images": self.images}
        for name, value in unsupported.items():
            if value:
                raise InvalidRequestError(f"{name} is not supported by this server.", param=name)
        if self.raw:
            return GenerationRequest(request_id=request_id, params=params, prompt=self.prompt)
        messages = ([{"role": "system", "content": self.system}] if self.system else [])
        messages.append({"role": "user", "content": self.prompt or ""})
        return GenerationRequest(request_id=request_id, params=params, messages=messages)


class OllamaEmbedRequest(OllamaRequest):
    """POST /api/embed: one or more inputs, vectors normalized to unit length (as Ollama's)."""

    model: text(MAX_NAME_CHARS, min_chars=1)
    input: Annotated[
        text(MAX_TEXT_CHARS) | bounded_list(text(MAX_TEXT_CHARS), MAX_EMBEDDING_INPUTS),
        one_message("input must be a string or a list of strings"),
    ]
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1, le=MAX_EMBEDDING_DIMENSIONS)
    options: OllamaOptions | None = None
    keep_alive: float | str | None = None

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str | list[str]) -> str | list[str]:
        check_total([value] if isinstance(value, str) else value, "input")
        return value

    def inputs(self) -> list[str]:
        inputs = [self.input] if isinstance(self.input, str) else list(self.input)
        if any(not text for text in inputs):
            raise InvalidRequestError("input must not contain empty strings.", param="input")
        if not self.truncate:
            raise InvalidRequestError("truncate=false is not supported: inputs beyond the model's length are "
                                      "truncated.", param="truncate")
        return inputs


class OllamaEmbeddingsRequest(OllamaRequest):
    """POST /api/embeddings (Ollama's older route): one prompt, its vector as the model gives it."""

    model: text(MAX_NAME_CHARS, min_chars=1)
    prompt: Prompt = ""
    options: OllamaOptions | None = None
    keep_alive: float | str | None = None


class OllamaShowRequest(OllamaRequest):
    model: Name | None = None
    name: Name | None = None  # the field's older name

    def model_name(self) -> str:
        if not (self.model or self.name):
            raise InvalidRequestError("model is required", param="model")
        return self.model or self.name  # type: ignore[return-value]


def timestamp(moment: float | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes `created_at`."""
    when = datetime.now(timezone.utc) if moment is None else datetime.fromtimestamp(moment, timezone.utc)
    return when.isoformat().replace("+00:00", "Z")


def ollama_logprobs(logprobs: list[TokenLogprob] | None) -> list[dict] | None:
    if not logprobs:
        return None
    return [{"token": lp.token, "logprob": lp.logprob,
             "top_logprobs": [{"token": tok, "logprob": val} for _, tok, val in lp.top]} for lp in logprobs]


def ollama_name(card: ModelCard) -> str:
    """Ollama names carry a tag; a model id without one is listed with Ollama's default, `:latest`."""
    return card.id if ":" in card.id else card.id + ":latest"


def details(card: ModelCard) -> dict:
    source = str(card.metadata.get("source", ""))
    fmt = "remote" if card.metadata.get("upstream") else ("gguf" if source.endswith(".gguf") else "safetensors")
    return {"parent_model": "", "format": fmt, "family": card.task, "families": [card.task],
            "parameter_size": "", "quantization_level": ""}


def listed_model(card: ModelCard) -> dict:
    """One entry of /api/tags and /api/ps. Sizes are unknown here (0); the digest names the entry, not weights."""
    name = ollama_name(card)
    return {"name": name, "model": name, "modified_at": timestamp(card.created), "size": 0,
            "digest": hashlib.sha256(f"{card.id}:{card.created}".encode()).hexdigest(), "details": details(card)}


def show(card: ModelCard) -> dict:
    info: dict[str, Any] = {"general.architecture": "openserve", "general.basename": card.id}
    for key, name in (("max_model_len", "context_length"), ("dimensions", "embedding_length")):
        if key in card.metadata:
            info[f"openserve.{name}"] = card.metadata[key]
    source = card.metadata.get("upstream") or card.metadata.get("source", "")
    return {
        "modelfile": f"# served by openserve: Modelfile settings do not apply\nFROM {source}\n",
        "parameters": "", "template": "", "license": "", "details": details(card), "model_info": info,
        "capabilities": ["completion"] if card.task == "chat" else ["embedding"],
        "modified_at": timestamp(card.created),
    }


class OllamaResponse(BaseModel):
    """Base of the generation replies; None fields are left out of the JSON (Ollama's omitempty)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None  # nanoseconds, as every duration here
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[dict] | None = None

    def json_line(self) -> str:
        return self.model_dump_json(exclude_none=True) + "\n"


class OllamaChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class OllamaChatResponse(OllamaResponse):
    message: OllamaChatMessage


class OllamaGenerateResponse(OllamaResponse):
    response: str


class OllamaEmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int = 0
    prompt_eval_count: int
