"""EmbeddingBackend over sentence-transformers: pooling and normalisation come from the model's own modules.json."""
from __future__ import annotations

import torch

from models.embeddings.types import EmbeddingOutput
from models.errors import ModelInputError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class SentenceEmbeddingBackend:
    """Embeds texts, or token-id lists in the model's own vocabulary, with a SentenceTransformer.

    Token ids are fed to the model directly (no decode/re-encode round trip): the tokenizer's special tokens
    ([CLS] ... [SEP] for BERT) and the model's default prompt, if any, are added around them, exactly as for
    text, so `embed([tokenizer(text, add_special_tokens=False).input_ids]) == embed([text])`.
    """

    def __init__(self, location: str, device: str = "cpu", dtype: str = "auto", batch_size: int = 128,
                 max_batch_tokens: int = 8192):
        """batch_size: inputs per forward pass, fewer when they are long (at most about `max_batch_tokens` padded
        tokens per pass, so 512-token inputs go 16 at a time). Through the server on 2 cores (MiniLM, 16 requests x
        32 sentences at once) passes of 128 gave 417 sentences/s against 322 with passes of 32."""
        from sentence_transformers import SentenceTransformer

        self.device = device
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.model = SentenceTransformer(
            location, device=device, model_kwargs={"dtype": _resolve_dtype(dtype, device)}
        )
        self.model.eval()
        # sentence-transformers 6 renamed get_sentence_embedding_dimension; keep working on 5.
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimensions: int = dimension()
        tokenizer = getattr(self.model[0], "tokenizer", None)
        self.max_input_tokens: int = self.model.max_seq_length or getattr(tokenizer, "model_max_length", 512)
        prompt_name = self.model.default_prompt_name
        self._prompt = self.model.prompts.get(prompt_name) if prompt_name else None
        self._ids = _id_features_or_none(tokenizer, self.max_input_tokens, self._prompt)

    def embed(self, inputs: list[str] | list[list[int]]) -> EmbeddingOutput:
        """[N, D] float32 vectors and per-input token counts after truncation; ModelInputError on empty input."""
        texts = _check_inputs(inputs)
        if texts is None and self._ids is None:
            raise ModelInputError("this model does not accept token-id input", param="input")
        # Longest first so each batch pads to similar lengths; results go back to input order.
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
        vectors: list[torch.Tensor | None] = [None] * len(inputs)
        num_tokens = [0] * len(inputs)
        start = 0
        while start < len(order):
            longest = min(_estimated_tokens(inputs[order[start]]), self.max_input_tokens)  # the chunk's first
            chunk = order[start : start + max(1, min(self.batch_size, self.max_batch_tokens // longest))]
            start += len(chunk)
            batch = [inputs[i] for i in chunk]
            features = self._text_features(batch) if texts is not None else self._ids.features(batch)
            batch_vectors = self._forward(features)  # [B, D]
            counts = features["attention_mask"].sum(dim=1).tolist()  # [B]
            for j, i in enumerate(chunk):
                vectors[i] = batch_vectors[j]
                num_tokens[i] = int(counts[j])
        return EmbeddingOutput(vectors=torch.stack(vectors).numpy(), num_tokens=num_tokens)

    def _text_features(self, batch: list[str]) -> dict:
        """Tokenised, truncated features with the model's default prompt (preprocess in v6, tokenize in v5)."""
        if hasattr(self.model, "preprocess"):
            return self.model.preprocess(batch, prompt=self._prompt)
        return self.model.tokenize([self._prompt + t for t in batch] if self._prompt else batch)

    @torch.inference_mode()
    def _forward(self, features: dict) -> torch.Tensor:
        """Run every module (transformer -> pooling -> [dense] -> [normalize]); returns [B, D] float32 on CPU."""
        features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        return self.model(features)["sentence_embedding"].float().cpu()


def _estimated_tokens(item: str | list[int]) -> int:
    """Tokens an input will take, before tokenising: ids as they are, text at about 4 characters a token."""
    return (len(item) if isinstance(item, list) else len(item) // 4) + 2


class _IdFeatures:
    """Builds model features from token-id lists: prompt + special tokens added, truncated, padded."""

    def __init__(self, tokenizer, max_tokens: int, prompt: str | None):
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.with_type_ids = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
        # Learn where the tokenizer puts its special tokens from one tiny encoding, e.g. [CLS] a [SEP].
        probe = tokenizer("a", add_special_tokens=True, return_special_tokens_mask=True)
        mask = probe["special_tokens_mask"]
        content = [k for k, special in enumerate(mask) if not special]
        self.prefix = probe["input_ids"][: content[0]]
        self.suffix = probe["input_ids"][content[-1] + 1 :]
        if prompt:
            self.prefix = self.prefix + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        self.max_content = max_tokens - len(self.prefix) - len(self.suffix)

    def features(self, batch: list[list[int]]) -> dict[str, torch.Tensor]:
        """Padded input_ids / attention_mask (/ token_type_ids) tensors for a batch of id lists."""
        for ids in batch:
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                limit = self.vocab_size - 1
                raise ModelInputError(f"token id {bad[0]} is outside the vocabulary (0..{limit})", param="input")
        rows = [self.prefix + ids[: self.max_content] + self.suffix for ids in batch]
        encoded = {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}
        if self.with_type_ids:
            encoded["token_type_ids"] = [[0] * len(r) for r in rows]
        return dict(self.tokenizer.pad(encoded, return_tensors="pt"))


def _id_features_or_none(tokenizer, max_tokens: int, prompt: str | None) -> _IdFeatures | None:
    """Token-id support needs a transformers tokenizer; models without one (static embeddings) accept text only."""
    try:
        return _IdFeatures(tokenizer, max_tokens, prompt)
    except (TypeError, AttributeError, KeyError, IndexError):
        return None


def _check_inputs(inputs) -> list[str] | None:
    """Return the texts, or None for token-id input; ModelInputError(param="input") on empty or mixed input."""
    if not isinstance(inputs, list) or not inputs:
        raise ModelInputError("input must be a non-empty list", param="input")
    if all(isinstance(x, str) for x in inputs):
        if any(x == "" for x in inputs):
            raise ModelInputError("input must not contain empty strings", param="input")
        return inputs
    for x in inputs:
        if not isinstance(x, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in x):
            raise ModelInputError("input must be all strings or all lists of token ids", param="input")
        if not x:
            raise ModelInputError("input must not contain empty token lists", param="input")
    return None


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """"auto" is float32 on CPU (half precision is slow there) and float16 on a GPU, as for every modality (most
    checkpoints are stored in float32, which would halve a GPU's throughput; vectors are returned as float32)."""
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]
