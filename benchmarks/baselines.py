"""In-process baselines: the same model, built the way a replica builds it (models.factory.build_backend on
models.sources.resolve_source), called directly with no HTTP and no Ray. Beside a server run they show what serving
costs. Each function returns a flat dict of figures for the report."""
from __future__ import annotations

import os
import time

from benchmarks.workloads import Lengths, sentence
from serving.config import ModelConfig, load_config

DEFAULT_CACHE = os.path.join("~", ".cache", "openserve", "cache")  # the default data dir's cache, shared with `up`


def model_spec(config_path: str | None, name: str) -> ModelConfig:
    """The model `name` of a config file (None: the embedded default)."""
    config = load_config(config_path)
    for model in config.models:
        if model.name == name:
            return model
    raise ValueError(f"model `{name}` is not in {config_path or 'the default config'}; "
                     f"it has: {', '.join(m.name for m in config.models)}")


def build(model: ModelConfig, cache_dir: str = DEFAULT_CACHE, **option_overrides):
    """The backend a replica of `model` would build (options overridable, e.g. batch_size), timed."""
    from models.factory import build_backend
    from models.sources import resolve_source

    options = {**model.options, **option_overrides}
    started = time.perf_counter()
    backend = build_backend(model.task, resolve_source(model.source), model.dtype, model.device,
                            os.path.expanduser(cache_dir), options, model.resources.num_gpus)
    return backend, time.perf_counter() - started


def _repeat(fn, min_seconds: float, min_calls: int = 2) -> tuple[int, float]:
    """Call fn() until min_seconds and min_calls have passed; (calls, seconds)."""
    calls, started = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < min_seconds:
        fn()
        calls += 1
    return calls, time.perf_counter() - started


def embeddings_encode(backend, texts: list[str], batch_size: int, min_seconds: float = 4.0) -> dict:
    """Raw throughput: sentence-transformers' own `encode` at `batch_size` when the backend has one, else
    backend.embed over chunks of batch_size."""
    encode = getattr(getattr(backend, "model", None), "encode", None)
    if encode is not None:
        run = lambda: encode(texts, batch_size=batch_size, convert_to_numpy=True)  # noqa: E731
        how = "SentenceTransformer.encode"
    else:
        run = lambda: [backend.embed(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]  # noqa: E731
        how = "backend.embed"
    run()  # warm-up
    calls, seconds = _repeat(run, min_seconds)
    return {"name": f"in-process {how} batch {batch_size}", "modality": "embeddings", "batch_size": batch_size,
            "inputs": len(texts) * calls, "seconds": seconds, "input_throughput": len(texts) * calls / seconds}


def images_generate(backend, batch: int, size: str, steps: int | None, min_seconds: float = 3.0) -> dict:
    """backend.generate of `batch` images in one call (batch 1 = one image per call)."""
    import random

    from models.images.types import ImageParams

    width, height = (int(v) for v in size.lower().split("x"))
    params = ImageParams(width, height, steps or backend.default_steps, backend.default_guidance_scale, seed=0)
    prompts = [sentence(random.Random(i), 8) for i in range(batch)]
    backend.generate(prompts, [params] * batch)  # warm-up
    calls, seconds = _repeat(lambda: backend.generate(prompts, [params] * batch), min_seconds)
    return {"name": f"in-process generate batch {batch} {size} {params.num_inference_steps} steps",
            "modality": "images", "batch_size": batch, "seconds": seconds, "image_throughput": batch * calls / seconds,
            "latency_ms_per_call": 1000 * seconds / calls}


def speech_synthesize(backend, n: int, input_len: Lengths, voice: str = "alloy", batch: int = 1) -> dict:
    """backend.synthesize over n texts, `batch` per call: audio seconds per wall second."""
    import random

    from models.speech.types import SpeechParams

    rng = random.Random(0)
    texts = [sentence(rng, input_len.sample(rng)) for _ in range(n)]
    params = [SpeechParams(voice=voice)] * batch
    backend.synthesize(texts[:1], params[:1])  # warm-up
    started, audio = time.perf_counter(), 0.0
    for i in range(0, n, batch):
        chunk = texts[i : i + batch]
        audio += sum(len(w) for w in backend.synthesize(chunk, params[: len(chunk)])) / backend.sample_rate
    seconds = time.perf_counter() - started
    return {"name": f"in-process synthesize batch {batch}", "modality": "speech", "batch_size": batch,
            "requests": n, "seconds": seconds, "rtfx": audio / seconds, "latency_ms_per_text": 1000 * seconds / n}


def chat_hf_generate(model: ModelConfig, prompts: list[str], max_tokens: int, cache_dir: str = DEFAULT_CACHE) -> dict:
    """Sequential Hugging Face `generate` (batch 1, greedy, exactly max_tokens new tokens): the LLM reference a
    serving engine should beat under concurrency."""
    import torch

    from models.llm.loader import load_causal_lm
    from models.sources import resolve_source

    src = resolve_source(model.source)
    lm, tokenizer = load_causal_lm(src.location, gguf_file=src.file, dtype=model.dtype, device="cpu",
                                   cache_dir=os.path.join(os.path.expanduser(cache_dir), "llm"))
    encoded = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)["input_ids"] for p in prompts]
    kwargs = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                  pad_token_id=tokenizer.eos_token_id)
    with torch.inference_mode():
        lm.generate(encoded[0], **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
        started, latencies, tokens = time.perf_counter(), [], 0
        for ids in encoded:
            t = time.perf_counter()
            out = lm.generate(ids, **kwargs)
            latencies.append(time.perf_counter() - t)
            tokens += out.shape[1] - ids.shape[1]
    seconds = time.perf_counter() - started
    return {"name": "in-process HF generate, sequential (batch 1)", "modality": "chat", "requests": len(prompts),
            "seconds": seconds, "output_throughput": tokens / seconds, "request_throughput": len(prompts) / seconds,
            "mean_e2el_ms": 1000 * seconds / len(prompts)}
