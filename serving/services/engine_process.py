"""An LLM engine in its own process, behind an LLMEngine-shaped proxy that LLMService drives as usual.

Why: inside a Ray Serve replica the engine thread shares the GIL with Ray's threads and the replica's event loops,
which hand every streamed token along. HF models run thousands of small Python-level ops per step, each a GIL
hand-off, so the engine stalls: measured on this 2-core box, 16 streams x 96 tokens through the server gave 86
tok/s with the engine in the replica, while the same engine in a plain Ray actor ran 190-250 tok/s. In its own
process the engine has a GIL of its own; the replica keeps only the streaming (as vLLM splits API server and core).

Protocol over one duplex Pipe (pickled tuples), parent -> child: ("add", rid, prompt_ids, params), ("abort", rids),
("stop",); child -> parent: ("ready", EngineInfo) once, then ("outputs", [RequestOutput]) after every step (empty
lists included, so the parent never waits on a step that produced nothing), or ("error", text) if the engine
broke. The proxy validates requests itself, with the engine's own rules and numbers, so `add_request` still raises
ModelInputError / EngineOverloadedError synchronously; the child never refuses what the proxy accepted.
"""
from __future__ import annotations

import logging
import multiprocessing
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from models.errors import EngineOverloadedError
from models.llm.types import RequestOutput, SamplingParams
from models.llm.validation import validate_request

log = logging.getLogger(__name__)


@dataclass
class EngineInfo:
    """What the parent needs from the engine built in the child (the tokenizer pickles across)."""

    tokenizer: Any
    max_model_len: int
    vocab_size: int | None
    max_running: int
    max_queued: int


class EngineProcess:
    """LLMEngine proxy (add_request / step / abort / has_unfinished_requests) for an engine in a child process."""

    def __init__(self, build: Callable[..., Any], args: tuple = ()):
        """Start the child, which runs `build(*args)` (a picklable top-level function); wait until it is ready."""
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or locks
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_child_main, args=(child_conn, build, args), daemon=True,
                                        name="llm-engine")
        self._process.start()
        child_conn.close()
        kind, payload = self._recv()
        if kind != "ready":
            self.close()
            raise RuntimeError(f"the engine process failed to start:\n{payload}")
        info: EngineInfo = payload
        self.tokenizer = info.tokenizer
        self.max_model_len = info.max_model_len
        self.vocab_size = info.vocab_size
        self.max_running = info.max_running
        self.max_queued = info.max_queued
        self._unfinished: set[str] = set()

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if request_id in self._unfinished:
            raise ValueError(f"duplicate request id {request_id!r}")
        prompt = [int(t) for t in prompt_token_ids]
        validate_request(prompt, params, self.max_model_len, self.vocab_size)
        if len(self._unfinished) >= self.max_running + self.max_queued:
            raise EngineOverloadedError(f"the model is at capacity ({self.max_running} running + "
                                        f"{self.max_queued} queued); retry later")
        self._send(("add", request_id, prompt, params))
        self._unfinished.add(request_id)

    def step(self) -> list[RequestOutput]:
        """Outputs of the child's next step (and of any later steps already sent, so a slow reader catches up)."""
        outputs = self._outputs(self._recv())
        while self._conn.poll(0):
            outputs += self._outputs(self._recv())
        live = [o for o in outputs if o.request_id in self._unfinished]  # drop what arrives after an abort
        for out in live:
            if out.finished:
                self._unfinished.discard(out.request_id)
        return live

    def abort(self, request_id: str) -> None:
        if request_id in self._unfinished:
            self._unfinished.discard(request_id)
            try:
                self._send(("abort", [request_id]))
            except RuntimeError:  # the child is gone, and its KV memory with it
                pass

    def has_unfinished_requests(self) -> bool:
        return bool(self._unfinished)

    def is_alive(self) -> bool:
        return self._process.is_alive()

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, ConnectionResetError):
            raise RuntimeError(f"the engine process exited (code {self._process.exitcode})") from None

    def _recv(self) -> tuple:
        try:
            return self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the engine process exited (code {self._process.exitcode})") from None

    @staticmethod
    def _outputs(message: tuple) -> list[RequestOutput]:
        kind, payload = message
        if kind != "outputs":
            raise RuntimeError(f"engine process error:\n{payload}")
        return payload


def _child_main(conn, build: Callable[..., Any], args: tuple) -> None:
    """The child: build the engine, report it, then serve commands and step until told to stop or orphaned."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = build(*args)
        conn.send(("ready", EngineInfo(engine.tokenizer, engine.max_model_len, getattr(engine, "vocab_size", None),
                                       engine.max_running, getattr(engine, "max_queued", 0))))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    try:
        _serve(conn, engine)
    except EOFError:  # the parent is gone
        return
    except BaseException:  # noqa: BLE001 - the parent fails its requests and reports unhealthy
        conn.send(("error", traceback.format_exc()))


def _serve(conn, engine) -> None:
    while True:
        if not engine.has_unfinished_requests():
            conn.poll(None)  # idle: sleep until a command comes
        while conn.poll(0):
            command = conn.recv()
            if command[0] == "add":
                engine.add_request(command[1], command[2], command[3])
            elif command[0] == "abort":
                for request_id in command[1]:
                    engine.abort(request_id)
            else:
                return
        if engine.has_unfinished_requests():
            conn.send(("outputs", engine.step()))
