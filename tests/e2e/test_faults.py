"""Faults on a real server (real local Ray, fake chat models whose engines run in engine processes, as real ones
do): a client that leaves a non-streaming request frees its slot; kill -9 of the engine process under load gives
only 503s with Retry-After until it is back (within 15 s); kill -9 of the model replica ends what was in flight
cleanly and new requests succeed. One server for the module."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx
import psutil
import pytest

from tests.e2e.server_process import REPO, ServerProcess

pytestmark = pytest.mark.ray

CONFIG = os.path.join(REPO, "tests", "e2e", "fault_models.yaml")
MAX_TOKENS = 30  # 0.6 s per request at fake-chat's 50 tokens a second


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(CONFIG)
    yield srv
    srv.cleanup()


def replica_process(server: ServerProcess, model: str) -> psutil.Process:
    """The Ray worker process of the model's replica (Ray titles it ServeReplica:model:<name>:...)."""
    for p in psutil.process_iter(["pid", "cmdline"]):  # the title Ray gives it (not name(): psutil caches that)
        try:
            title = " ".join(p.info["cmdline"] or [])
            if f"ServeReplica:model:{model}:" in title and os.getsid(p.pid) == server.proc.pid:
                return p
        except (OSError, psutil.Error):
            continue
    raise AssertionError(f"no replica process for {model}")


def engine_process(server: ServerProcess, model: str) -> psutil.Process:
    children = [c for c in replica_process(server, model).children()
                if "serving.services.engine_child" in " ".join(c.cmdline())]
    assert len(children) == 1, children
    return children[0]


def chat_body(model: str, stream: bool, max_tokens: int = MAX_TOKENS, text: str = "hello") -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0, "stream": stream}
    return body | ({"stream_options": {"include_usage": True}} if stream else {})


@dataclass
class Outcome:
    """One request under load: its status and, for a 200, whether it ended complete or with an error event."""

    stream: bool
    started: float
    ended: float = 0.0
    status: int = 0
    retry_after: str | None = None
    complete: bool = False
    error_event: dict | None = None
    body: str = ""


def one_request(client: httpx.Client, base_url: str, stream: bool) -> Outcome:
    out = Outcome(stream, time.monotonic())
    body = chat_body("fake-chat", stream)
    try:
        if stream:
            with client.stream("POST", base_url + "/v1/chat/completions", json=body) as r:
                out.status, out.retry_after = r.status_code, r.headers.get("retry-after")
                lines = list(r.iter_lines()) if r.status_code == 200 else [r.read().decode()]
            _read_sse(out, lines)
        else:
            r = client.post(base_url + "/v1/chat/completions", json=body)
            out.status, out.retry_after, out.body = r.status_code, r.headers.get("retry-after"), r.text
            out.complete = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == MAX_TOKENS
    except httpx.HTTPError as e:  # a transport error: the server broke the connection, recorded as status 0
        out.body = repr(e)
    out.ended = time.monotonic()
    return out


def _read_sse(out: Outcome, lines: list[str]) -> None:
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    if out.status != 200:
        out.body = "".join(lines)
        return
    usage = None
    for event in events:
        if event == "[DONE]":
            out.complete = usage is not None and usage["completion_tokens"] == MAX_TOKENS
            return
        payload = json.loads(event)
        if "error" in payload:
            out.error_event = payload["error"]
            return
        usage = payload.get("usage") or usage


class Load:
    """`clients` threads, half streaming, each sending one request after another until stopped."""

    def __init__(self, base_url: str, clients: int = 4):
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(base_url, i % 2 == 0), daemon=True)
                         for i in range(clients)]
        for t in self._threads:
            t.start()

    def _client(self, base_url: str, stream: bool) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                out = one_request(client, base_url, stream)
                self.outcomes.append(out)
                if out.status != 200:
                    self._stop.wait(0.2)  # pacing after a refusal, as a client honouring Retry-After would

    def wait_for(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(list(self.outcomes)):
            assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
            self._stop.wait(0.05)

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for t in self._threads:
            t.join(90)
        return list(self.outcomes)


def successes_after(t: float):
    return lambda outcomes: [o for o in outcomes if o.started > t and o.status == 200 and o.complete]


def test_a_client_leaving_a_non_streaming_request_frees_its_slot(server):
    """one-slot-chat runs one request and queues none: while the long request holds the slot others get 429; once
    its client hangs up the service aborts it in the engine and the next request is admitted."""
    url = server.base_url + "/v1/chat/completions"
    long = socket.create_connection(("127.0.0.1", server.port))
    data = json.dumps(chat_body("one-slot-chat", False, max_tokens=1000)).encode()  # 50 s at 20 tokens a second
    long.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    probe = chat_body("one-slot-chat", False, max_tokens=1)
    deadline = time.monotonic() + 60
    while httpx.post(url, json=probe, timeout=60).status_code != 429:  # the long request has the slot
        assert time.monotonic() < deadline, "the long request never held the slot"
    long.close()
    left = time.monotonic()
    while (status := httpx.post(url, json=probe, timeout=60).status_code) == 429:
        assert time.monotonic() - left < 10, "the slot was not freed after the client left"
    assert status == 200


def kill_under_load(server: ServerProcess, kill, back_within_s: float) -> tuple[float, list[Outcome]]:
    """Run the load, `kill()` once requests complete, wait for a request sent after it to succeed: (seconds from
    the kill to that success, every outcome)."""
    load = Load(server.base_url)
    try:
        load.wait_for(lambda o: len([x for x in o if x.complete]) >= 4, 60, "the load to run")
        killed = time.monotonic()
        kill()
        load.wait_for(successes_after(killed), back_within_s, "a request to succeed after the kill")
        back_s = min(o.ended for o in successes_after(killed)(load.outcomes)) - killed
    finally:
        outcomes = load.stop()
    print(f"\nback after {back_s:.1f} s; {_summary(outcomes)}")
    return back_s, outcomes


def test_killing_the_engine_process_under_load_gives_only_503s_until_it_is_back(server):
    old = engine_process(server, "fake-chat")
    back_s, outcomes = kill_under_load(server, old.kill, 30)
    _assert_clean(outcomes)
    assert any(o.status == 503 or o.error_event for o in outcomes), "the kill went unnoticed"
    assert back_s < 15
    assert engine_process(server, "fake-chat").pid != old.pid


def test_killing_the_model_replica_ends_requests_cleanly_and_new_ones_succeed(server):
    replica, orphan = replica_process(server, "fake-chat"), engine_process(server, "fake-chat")
    _, outcomes = kill_under_load(server, lambda: os.kill(replica.pid, signal.SIGKILL), 120)
    _assert_clean(outcomes)
    orphan.wait(30)  # the dead replica's engine process saw its pipe close and exited (raises if it did not)


def _assert_clean(outcomes: list[Outcome]) -> None:
    """Every request complete, or refused with 503 + Retry-After, or a started stream ended by a 503's event."""
    for o in outcomes:
        if o.status == 200:
            assert o.complete or (o.error_event and o.error_event["type"] == "server_error"
                                  and "internal error" not in o.error_event["message"]), o
        else:
            assert o.status == 503 and o.retry_after and int(o.retry_after) >= 1, o
            assert json.loads(o.body)["error"]["message"], o


def _summary(outcomes: list[Outcome]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        key = f"{o.status}{'-stream' if o.stream else ''}{'-error-event' if o.error_event else ''}"
        counts[key] = counts.get(key, 0) + 1
    return json.dumps(counts, sort_keys=True)
