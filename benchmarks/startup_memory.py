"""Start-up time and memory of the default server (`openserve up`, no config): what a new user's `make run` gives.

Each round starts the server, times `openserve up` to its "ready in" line, sends one request per modality (chat,
embeddings, image, speech: every model has then served once), and sums the PSS (proportional set size: shared
pages split among their users) of every process of the server's session, by process. The first round runs with an
empty HOME (no converted GGUF, no built tiny-SD pipeline: a fresh machine's first start); later rounds reuse it.

    python -m benchmarks.startup_memory --rounds 3 --out bench-results
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from benchmarks.runner import stamp
from benchmarks.server import server_processes, start_openserve


def warm_requests(base_url: str) -> dict[str, float]:
    """One request per default model (seconds each): memory is measured after every model served once."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url + "/v1", api_key="unused", timeout=300)
    calls = {
        "chat": lambda: client.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8),
        "embeddings": lambda: client.embeddings.create(model="all-minilm-l6-v2", input=["hello world"]),
        "image": lambda: client.images.generate(model="tiny-random-sd", prompt="a cat", size="64x64"),
        "speech": lambda: client.audio.speech.create(model="piper-joe-medium", voice="alloy", input="Hello there."),
    }
    took = {}
    for name, call in calls.items():
        started = time.perf_counter()
        call()
        took[name] = round(time.perf_counter() - started, 3)
    return took


def memory(pid: int) -> dict:
    """Summed PSS and RSS of the server's processes (MB), and the PSS of each, largest first."""
    per, pss, rss = [], 0, 0
    for p in server_processes(pid):
        try:
            info = p.memory_full_info()
            per.append((p.name(), round(info.pss / 2**20)))
            pss, rss = pss + info.pss, rss + info.rss
        except Exception:  # noqa: BLE001 - a process that ended holds nothing
            continue
    per.sort(key=lambda x: -x[1])
    return {"pss_mb": round(pss / 2**20), "rss_mb": round(rss / 2**20), "by_process": per}


def one_round(home: str, first: bool) -> dict:
    server = start_openserve(None, env={"HOME": home})
    try:
        ready_s = server.ready_after_s
        requests = warm_requests(server.base_url)
        return {"first_start": first, "ready_s": round(ready_s, 2), "first_requests_s": requests,
                **memory(server.proc.pid)}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="starts in all: the first with an empty HOME")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="osb-home-") as home:
        for i in range(args.rounds):
            rounds.append(one_round(home, first=i == 0))
            print(json.dumps(rounds[-1]), flush=True)
    doc = {"benchmark": "startup_memory", "rounds": rounds,
           "later_ready_s_median": sorted(r["ready_s"] for r in rounds[1:])[len(rounds[1:]) // 2] if rounds[1:] else None}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"startup-memory-{stamp()}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
