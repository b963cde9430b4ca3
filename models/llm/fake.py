"""Deterministic stand-ins for an LLM backend: FakeTokenizer (character level) and FakeEngine (echoes the prompt).

Pure Python (no torch), so serving tests that use them start fast and can assert exact text.

FakeTokenizer
    ids 0, 1, 2 are the specials "<|endoftext|>" (pad), "<|im_start|>", "<|im_end|>" (eos); every other
    character c is the single token 3 + ord(c). `encode` maps the special strings to their ids; `decode` skips the
    specials when skip_special_tokens=True. `apply_chat_template` renders ChatML:
    "<|im_start|>{role}\\n{content}<|im_end|>\\n" per message, then "<|im_start|>assistant\\n" when
    add_generation_prompt; it returns ids when tokenize=True (a plain list, not a BatchEncoding), else the text.

FakeEngine, per request:
    * the *answer* is the content of the last user message of a ChatML prompt (the text between the last
      "<|im_start|>user\\n" and the next "<|im_end|>"), or the whole decoded prompt if it has no user turn;
    * when temperature > 0, the answer gets " {n}" appended, n = random.Random(seed).randrange(1_000_000)
      (a fresh random seed when params.seed is None): same seed → same text, different seeds → different text;
      top_p, top_k and the penalties are accepted and ignored;
    * the token stream is the answer's characters, then eos (id 2), repeated forever; so it finishes with "stop"
      right after the answer, unless ignore_eos (then it cycles until "length");
    * one token per running request per `step()`, at most `max_running` running, the rest wait in FIFO order;
      beyond `max_running + max_queued` unfinished requests, add_request raises EngineOverloadedError;
    * stop strings, stop_token_ids, max_tokens, eos text (not emitted) and the finish reasons follow the same
      `Sequence` rules as HFEngine; add_request validates like HFEngine (ModelInputError);
    * logprobs: the token at rank r (0 = the emitted token, then ids token+1, token+2, ... mod vocab) has logprob
      -(r + 1) * ln 2; `top` holds `top_logprobs` entries, the emitted token first.
    `aborted` lists the ids that `abort` removed while unfinished; `step_delay` (seconds) makes each non-empty
    step sleep, to let tests act while a request is in flight. Its options (a model's `options`) are
    FakeEngineConfig's.
"""
from __future__ import annotations

import math
import random
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from models.errors import EngineOverloadedError
from models.llm.config import options_to_config
from models.llm.sequence import Sequence
from models.llm.stats import StepCounters
from models.llm.types import EngineStats, RequestOutput, SamplingParams, TokenLogprob
from models.llm.validation import validate_request

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")
_FIRST_CHAR_ID = len(SPECIALS)


class FakeTokenizer:
    """Character-level tokenizer with ChatML specials; see the module docstring for the exact mapping."""

    pad_token = "<|endoftext|>"
    pad_token_id = 0
    eos_token = "<|im_end|>"
    eos_token_id = 2
    bos_token_id = None
    vocab_size = _FIRST_CHAR_ID + 0x110000  # every Unicode code point

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True, **kwargs: Any) -> list[int]:
        """One id per character; special-token strings become their single id. Never adds a bos."""
        ids: list[int] = []
        for part in _SPECIAL_RE.split(text):
            if part in SPECIALS:
                ids.append(SPECIALS.index(part))
            else:
                ids.extend(_FIRST_CHAR_ID + ord(c) for c in part)
        return ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False, **kwargs: Any) -> str:
        return "".join(self._token(t) for t in token_ids if not (skip_special_tokens and t < _FIRST_CHAR_ID))

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | list[str]:
        return self._token(ids) if isinstance(ids, int) else [self._token(t) for t in ids]

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, tokenize: bool = True, **kwargs: Any
    ) -> list[int] | str:
        """ChatML text of `messages` (content may be a string or OpenAI text parts); ids when tokenize."""
        text = "".join(f"<|im_start|>{m['role']}\n{_content_text(m.get('content'))}<|im_end|>\n" for m in messages)
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        return self.encode(text) if tokenize else text

    @staticmethod
    def _token(token_id: int) -> str:
        t = int(token_id)
        return SPECIALS[t] if 0 <= t < _FIRST_CHAR_ID else chr(t - _FIRST_CHAR_ID)


@dataclass(frozen=True)
class FakeEngineConfig:
    """The options of a `fake:` chat model."""

    max_model_len: int = 2048
    max_running: int = 16
    max_queued: int = 256
    step_delay: float = 0.0  # seconds each non-empty step sleeps (to act while a request is in flight)

    def running_on(self, device_type: str) -> int:
        """max_running, whatever the device (EngineConfig.running_on's contract)."""
        return self.max_running

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "FakeEngineConfig":
        """The config a model's `options` ask for; ValueError("options.<key>: ...") naming an unknown or bad key."""
        return options_to_config(cls, options)


class FakeEngine:
    """Deterministic LLMEngine that answers with the last user message; see the module docstring."""

    def __init__(self, tokenizer: FakeTokenizer | None = None, max_model_len: int = 2048, max_running: int = 16,
                 max_queued: int = 256, step_delay: float = 0.0):
        self.tokenizer = tokenizer or FakeTokenizer()
        self.max_model_len = max_model_len
        self.vocab_size = self.tokenizer.vocab_size
        self.max_running = max_running
        self.max_queued = max_queued
        self.step_delay = step_delay
        self.aborted: list[str] = []
        self._waiting: OrderedDict[str, tuple[Sequence, list[int]]] = OrderedDict()
        self._running: OrderedDict[str, tuple[Sequence, list[int]]] = OrderedDict()
        self._counters = StepCounters()
        self._closed = False

    @classmethod
    def from_config(cls, config: FakeEngineConfig) -> "FakeEngine":
        return cls(**asdict(config))

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if self._closed:
            raise RuntimeError("the engine is closed")
        if request_id in self._waiting or request_id in self._running:
            raise ValueError(f"duplicate request id {request_id!r}")
        budget = validate_request(list(prompt_token_ids), params, self.max_model_len, self.vocab_size)
        if len(self._waiting) + len(self._running) >= self.max_running + self.max_queued:
            raise EngineOverloadedError(f"the model is at capacity ({self.max_running} + {self.max_queued})")
        eos = [self.tokenizer.eos_token_id]
        seq = Sequence(request_id, list(prompt_token_ids), params, self.tokenizer, eos, budget)
        cycle = self.tokenizer.encode(self.answer(prompt_token_ids, params)) + eos
        self._waiting[request_id] = (seq, cycle)

    def step(self) -> list[RequestOutput]:
        start, prompt_tokens = time.perf_counter(), 0
        while self._waiting and len(self._running) < self.max_running:
            request_id, entry = self._waiting.popitem(last=False)
            self._running[request_id] = entry
            prompt_tokens += entry[0].num_prompt_tokens
        if not self._running:
            return []
        if self.step_delay > 0:
            time.sleep(self.step_delay)
        outputs = []
        for request_id, (seq, cycle) in list(self._running.items()):
            token_id = cycle[seq.num_output_tokens % len(cycle)]
            out = seq.append(token_id, self._logprob(token_id, seq.params))
            if out.finished:
                del self._running[request_id]
            outputs.append(out)
        self._counters.record(start, prompt_tokens, len(outputs), sum(o.finished for o in outputs),
                              len(self._running), len(self._waiting))
        return outputs

    def abort(self, request_id: str) -> None:
        if self._waiting.pop(request_id, None) or self._running.pop(request_id, None):
            self.aborted.append(request_id)
            self._counters.aborted_requests += 1

    def has_unfinished_requests(self) -> bool:
        return bool(self._waiting or self._running)

    def stats(self) -> EngineStats:
        c = self._counters
        return EngineStats(
            running=len(self._running), waiting=len(self._waiting), kv_slots_used=len(self._running),
            kv_slots_total=self.max_running, kv_tokens_used=sum(len(s.token_ids) for s, _ in self._running.values()),
            steps=c.steps, busy_s=c.busy_s, prompt_tokens=c.prompt_tokens, generated_tokens=c.generated_tokens,
            finished_requests=c.finished_requests, aborted_requests=c.aborted_requests, batched=True, cuda_graphs=0,
        )

    def is_alive(self) -> bool:
        return not self._closed

    def close(self) -> None:
        self._waiting.clear()
        self._running.clear()
        self._closed = True

    def num_unfinished_requests(self) -> int:
        return len(self._waiting) + len(self._running)

    def unfinished_request_ids(self) -> list[str]:
        return [*self._running, *self._waiting]

    def answer(self, prompt_token_ids: list[int], params: SamplingParams) -> str:
        """The text this engine will generate for the prompt (before eos, stop strings and max_tokens)."""
        text = self.tokenizer.decode(list(prompt_token_ids))
        marker = "<|im_start|>user\n"
        if marker in text:
            text = text.rsplit(marker, 1)[1].split("<|im_end|>", 1)[0]
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            text += f" {random.Random(seed).randrange(1_000_000)}"
        return text

    def _logprob(self, token_id: int, params: SamplingParams) -> TokenLogprob | None:
        if not params.logprobs:
            return None
        ids = [(token_id + r) % self.tokenizer.vocab_size for r in range(params.top_logprobs)]
        top = [(t, self.tokenizer.decode([t]), -(r + 1) * math.log(2)) for r, t in enumerate(ids)]
        return TokenLogprob(token_id, self.tokenizer.decode([token_id]), -math.log(2), top)


def _content_text(content: Any) -> str:
    """A message's content as text: a string, None, or a list of OpenAI parts ({"type": "text", "text": ...})."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
