"""One chat stream against a running server: time to first token, tokens/s, and the server's memory.

    python -m benchmarks.chat_stream --base-url http://127.0.0.1:8000/v1 --model smollm2-135m-instruct

Prints one JSON document. Memory is the summed RSS/PSS of every process whose command line mentions Ray
(raylet, GCS, Serve controller, proxy, replicas) plus the `openserve up` driver, read with psutil.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import openai
import psutil

PROMPT = "Write a short paragraph about the history of the bicycle."


def one_stream(client: openai.OpenAI, model: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    arrivals, usage = [], None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},  # a fixed output length makes runs comparable
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
        if chunk.usage:
            usage = chunk.usage
    end = time.perf_counter()
    tokens = usage.completion_tokens if usage else len(arrivals)
    ttft = arrivals[0] - start
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {
        "ttft_s": round(ttft, 4),
        "output_tokens": tokens,
        "e2e_s": round(end - start, 3),
        "tokens_per_s": round(tokens / (end - start), 2),
        "decode_tokens_per_s": round((tokens - 1) / (end - arrivals[0]), 2) if tokens > 1 else None,
        "itl_p50_ms": round(1000 * statistics.median(gaps), 2) if gaps else None,
    }


def server_memory_mb() -> dict:
    rss = pss = 0
    count = 0
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ray" in cmd.lower() or "openserve up" in cmd or "serving.cli up" in cmd:
            try:
                mem = p.memory_full_info()
            except psutil.Error:
                continue
            rss, pss, count = rss + mem.rss, pss + getattr(mem, "pss", mem.rss), count + 1
    return {"processes": count, "rss_mb": round(rss / 2**20), "pss_mb": round(pss / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=600)
    one_stream(client, args.model, 8)  # warm-up
    runs = [one_stream(client, args.model, args.max_tokens) for _ in range(args.runs)]
    summary = {k: statistics.median(r[k] for r in runs) for k in ("ttft_s", "tokens_per_s", "decode_tokens_per_s")}
    print(json.dumps({"model": args.model, "max_tokens": args.max_tokens, "runs": runs, "median": summary,
                      "server_memory": server_memory_mb(), "cpus": psutil.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
