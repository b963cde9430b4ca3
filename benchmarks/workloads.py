"""Request bodies per modality from length distributions (fixed, uniform) or a JSONL file of prompts. Seeded."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass

# Common short English words: roughly one token each for BPE and WordPiece vocabularies, so a prompt of N words is
# about N tokens. The server's usage counts give the exact figure the report uses.
WORDS = (
    "the of and to in is was for on that with as by at from his her they this have had are not but one all were "
    "when we there can an your which their said if do will each about how up out them then she many some so these "
    "would other into has more two like him see time could no make than first been its who now people my made over "
    "did down only way find use may water long little very after words called just where most know get through back "
    "much before go good new write our used me man too any day same right look think also around another came come "
    "work three word must because does part even place well such here take why things help put years different away "
    "again off went old number great tell men say small every found still between name should home big give air line "
    "set own under read last never us left end along while might next sound below saw something thought both few "
    "those always looked show large often together asked house world going want school important until form food keep "
    "children feet land side without boy once animals life enough took sometimes four head above kind began almost "
    "live page got earth need far hand high year mother light parts country father let night following picture being "
    "study second eyes soon times story boys since white days ever paper hard near sentence better best across during "
    "today others however sure means knew try told young miles sun ways thing whole hear example heard several change "
    "answer room sea against top turned learn point city play toward five using himself usually"
).split()


@dataclass(frozen=True)
class Lengths:
    """A length distribution: fixed N, or uniform over [low, high]. Parsed from "32", "fixed:32", "uniform:8,64"."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str | int) -> "Lengths":
        text = str(text).strip()
        kind, _, value = text.partition(":") if ":" in text else ("fixed", "", text)
        if kind == "fixed":
            n = int(value)
            return cls(n, n)
        if kind == "uniform":
            low, high = (int(v) for v in value.split(","))
            if not 0 < low <= high:
                raise ValueError(f"uniform:{value} needs 0 < low <= high")
            return cls(low, high)
        raise ValueError(f"length `{text}`: use N, fixed:N or uniform:LOW,HIGH")

    def sample(self, rng: random.Random) -> int:
        return self.low if self.low == self.high else rng.randint(self.low, self.high)

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"uniform:{self.low},{self.high}"


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def read_prompts(path: str) -> list[dict]:
    """JSONL: a string per line, or an object with "prompt" (or "text"/"input") and optionally "output_len"."""
    prompts = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            if isinstance(item, str):
                item = {"prompt": item}
            text = item.get("prompt") or item.get("text") or item.get("input")
            if not isinstance(text, str) or not text:
                raise ValueError(f"{path}:{n}: expected a string or an object with a `prompt`")
            prompts.append({"prompt": text, "output_len": item.get("output_len") or item.get("max_tokens")})
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def _texts(n: int, lengths: Lengths, seed: int, prompts_file: str | None) -> list[dict]:
    """n prompts: cycled from the file when given, else random word sentences of the given lengths."""
    rng = random.Random(seed)
    if prompts_file:
        pool = read_prompts(prompts_file)
        return [pool[i % len(pool)] for i in range(n)]
    return [{"prompt": sentence(rng, lengths.sample(rng)), "output_len": None} for _ in range(n)]


def generation_payloads(
    endpoint: str, model: str, n: int, input_len: Lengths, output_len: Lengths, *, stream: bool = True,
    ignore_eos: bool = True, seed: int = 0, prompts_file: str | None = None,
) -> list[dict]:
    """Chat or completions bodies; greedy, `ignore_eos` so each request makes exactly its output length."""
    rng = random.Random(seed + 1)
    bodies = []
    for item in _texts(n, input_len, seed, prompts_file):
        body: dict = {"model": model, "max_tokens": item["output_len"] or output_len.sample(rng), "temperature": 0}
        if endpoint == "chat":
            body["messages"] = [{"role": "user", "content": item["prompt"]}]
        else:
            body["prompt"] = item["prompt"]
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        if ignore_eos:
            body["ignore_eos"] = True
        bodies.append(body)
    return bodies


def embedding_payloads(
    model: str, n: int, inputs_per_request: int, input_len: Lengths, *, encoding_format: str = "float", seed: int = 0,
    prompts_file: str | None = None,
) -> list[dict]:
    texts = _texts(n * inputs_per_request, input_len, seed, prompts_file)
    return [
        {
            "model": model,
            "input": [t["prompt"] for t in texts[i * inputs_per_request : (i + 1) * inputs_per_request]],
            "encoding_format": encoding_format,
        }
        for i in range(n)
    ]


def image_payloads(model: str, n: int, size: str, steps: int | None, *, images_per_request: int = 1,
                   seed: int = 0, prompt_len: Lengths = Lengths(8, 8)) -> list[dict]:
    bodies = []
    for item in _texts(n, prompt_len, seed, None):
        body = {"model": model, "prompt": item["prompt"], "size": size, "n": images_per_request,
                "response_format": "b64_json"}
        if steps:
            body["num_inference_steps"] = steps
        bodies.append(body)
    return bodies


def speech_payloads(model: str, n: int, input_len: Lengths, *, voice: str = "alloy", response_format: str = "wav",
                    seed: int = 0, prompts_file: str | None = None) -> list[dict]:
    return [
        {"model": model, "input": item["prompt"], "voice": voice, "response_format": response_format}
        for item in _texts(n, input_len, seed, prompts_file)
    ]
