"""Scaling times of a running `openserve up`, through its admin API: cold start from zero replicas, back to zero,
and a burst's scale-out and scale-in. Writes <out>/scaling.json and prints it.

    python -m benchmarks.scaling                        # the default server: chat and embedding defaults, fake burst
    python -m benchmarks.scaling --cold-start all-minilm-l6-v2 --repeat 3 --skip-burst

Cold start: a copy of each named model is registered with autoscaling min 0 / max 1 (`<name>-cold`), and the time
from a request to its answer is measured while the copy is at zero replicas (a new Ray worker process loads the
model); then the time until it is back at zero (its downscale delay plus Serve's look-back window), --repeat times.
Burst: a fake chat model (min 1 / max 3, target 1 request per replica, each request ~2 s) gets --burst-clients
concurrent clients; times until 2 and 3 replicas run, then until it is back at 1 once they stop. Serve's handles
report load every RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S (10 s by default) in the server's
environment: the scale-out time includes that.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
import urllib.error
import urllib.request

from benchmarks.report import git_revision, machine_info, write_json

COLD = {"min_replicas": 0, "max_replicas": 1, "cold_start_timeout_s": 900}
BURST = {"name": "bench-burst", "task": "chat", "source": "fake:", "resources": {"num_cpus": 0.1},
         "options": {"step_delay": 0.05},
         "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1, "upscale_delay_s": 0}}


class Server:
    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/").removesuffix("/v1")

    def call(self, method: str, path: str, body: dict | None = None, timeout_s: float = 900) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.load(response)

    def replicas(self, name: str) -> dict:
        return self.call("GET", f"/admin/models/{name}").get("replicas") or {"running": -1, "target": -1}

    def at_zero(self, name: str) -> bool:
        """No replica wanted and none running (the view may be a second old: `target` 0 rules out a replica that
        was still starting when it was taken)."""
        replicas = self.replicas(name)
        return replicas["target"] == 0 and replicas["running"] == 0

    def wait(self, predicate, timeout_s: float, what: str) -> float:
        """Seconds until predicate() held (polled every 0.25 s); raises past timeout_s."""
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"not within {timeout_s:.0f} s: {what}")
            time.sleep(0.25)
        return time.monotonic() - started

    def ask(self, name: str, task: str) -> None:
        """One minimal request of the model's task (1 input, or 1 output token)."""
        if task == "embedding":
            self.call("POST", "/v1/embeddings", {"model": name, "input": ["cold start"]})
        else:
            self.call("POST", "/v1/chat/completions", {"model": name, "max_tokens": 1,
                                                       "messages": [{"role": "user", "content": "Hi"}]})


def cold_starts(server: Server, model: str, repeat: int, idle_s: float) -> dict:
    config = server.call("GET", f"/admin/models/{model}")["config"]
    name = model + "-cold"
    scaling = {**COLD, "downscale_delay_s": idle_s, "look_back_period_s": max(idle_s, 1)}
    body = {**config, "name": name, "aliases": [], "autoscaling": scaling}
    server.call("POST", "/admin/models", body)
    try:
        server.wait(lambda: server.call("GET", f"/admin/models/{name}")["status"] == "ready", 300, f"{name} ready")
        runs = []
        for _ in range(repeat):
            server.wait(lambda: server.at_zero(name), 600, f"{name} at zero")
            started = time.monotonic()
            server.ask(name, config["task"])
            cold = time.monotonic() - started
            back = server.wait(lambda: server.at_zero(name), 900, f"{name} back at zero")
            runs.append({"cold_start_s": round(cold, 2), "back_to_zero_s": round(back, 2)})
        return {"model": model, "task": config["task"], "idle_delay_s": idle_s, "runs": runs}
    finally:
        server.call("DELETE", f"/admin/models/{name}")


def burst(server: Server, clients: int, idle_s: float) -> dict:
    body = {**BURST, "autoscaling": {**BURST["autoscaling"], "downscale_delay_s": idle_s,
                                     "look_back_period_s": max(idle_s, 1)}}
    server.call("POST", "/admin/models", body)
    name, stop = BURST["name"], threading.Event()

    def client():
        while not stop.is_set():
            server.call("POST", "/v1/chat/completions", {"model": name, "max_tokens": 40, "ignore_eos": True,
                                                         "messages": [{"role": "user", "content": "Hi"}]})

    try:
        server.wait(lambda: server.call("GET", f"/admin/models/{name}")["status"] == "ready", 300, "burst ready")
        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        two = server.wait(lambda: server.replicas(name)["running"] >= 2, 600, "2 replicas")
        three = two + server.wait(lambda: server.replicas(name)["running"] >= 3, 600, "3 replicas")
        stop.set()
        for t in threads:
            t.join(60)
        down = server.wait(lambda: (r := server.replicas(name))["target"] == 1 and r["running"] == 1, 900,
                           "back to 1 replica")
        return {"clients": clients, "idle_delay_s": idle_s, "to_2_running_s": round(two, 2),
                "to_3_running_s": round(three, 2), "back_to_1_s": round(down, 2)}
    finally:
        stop.set()
        server.call("DELETE", f"/admin/models/{name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--cold-start", nargs="*", default=["all-minilm-l6-v2", "smollm2-135m-instruct"],
                   help="models whose cold start is measured (copies of them are registered)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--idle-s", type=float, default=10.0, help="downscale delay (and look-back) of the measured copies")
    p.add_argument("--burst-clients", type=int, default=6)
    p.add_argument("--skip-burst", action="store_true")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    server, started = Server(args.base_url), time.time()
    results = {"cold_start": [cold_starts(server, m, args.repeat, args.idle_s) for m in args.cold_start]}
    if not args.skip_burst:
        results["burst"] = burst(server, args.burst_clients, args.idle_s)
    doc = {"tool": "benchmarks.scaling", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
           "wall_s": round(time.time() - started, 1), "machine": machine_info(), "git": git_revision(),
           "args": vars(args), "results": results}
    write_json(doc, os.path.join(args.out, "scaling.json"))
    print(json.dumps(doc["results"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
