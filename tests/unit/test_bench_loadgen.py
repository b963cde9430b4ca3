"""The load generator's schedule and concurrency, the workloads, and the response parsing helpers (no server)."""
from __future__ import annotations

import asyncio
import io
import json
import math
import time
import wave

import pytest

from benchmarks import loadgen
from benchmarks.endpoints import _StreamClock, audio_seconds
from benchmarks.loadgen import LoadSpec, arrival_offsets, run_load
from benchmarks.metrics import RequestRecord
from benchmarks.runner import Target
from benchmarks.workloads import Lengths, embedding_payloads, generation_payloads, read_prompts


def test_arrivals_are_poisson_like_and_end_at_n_over_rate():
    times = arrival_offsets(200, rate=20.0, burstiness=1.0, seed=3)
    assert times == sorted(times) and times[-1] == pytest.approx(10.0)  # rescaled to n / rate, as vLLM
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 0.03 < sum(gaps) / len(gaps) < 0.07
    assert arrival_offsets(200, 20.0, 1.0, seed=3) == times  # seeded
    assert arrival_offsets(5, math.inf, 1.0, seed=0) == [0.0] * 5


class HeldSend:
    """A request finishes only while `hold` requests are in flight together, or once the last one was sent: a load
    generator that keeps fewer in flight stalls (the test's deadline fails it), one that keeps more shows in `peak`.
    Records the payload index of every call and never sleeps."""

    def __init__(self, hold: int, total: int | None):
        self.hold, self.total = hold, total
        self.in_flight, self.peak, self.sent = 0, 0, []
        self._changed = asyncio.Condition()

    async def __call__(self, session, url, payload) -> RequestRecord:
        async with self._changed:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.sent.append(payload["i"])
            self._changed.notify_all()
            await self._changed.wait_for(lambda: self.in_flight >= self.hold or len(self.sent) == self.total)
            self.in_flight -= 1
        return RequestRecord(success=payload["ok"], latency=0.0, error_kind=None if payload["ok"] else "x")


class CountingSend:
    """Finishes each request at the next turn of the event loop; records the payload index of every call."""

    def __init__(self):
        self.sent = []

    async def __call__(self, session, url, payload) -> RequestRecord:
        self.sent.append(payload["i"])
        await asyncio.sleep(0)  # yield, as a real request does
        return RequestRecord(success=True, latency=0.0)


def payloads(n: int) -> list[dict]:
    return [{"i": i, "ok": i % 5 != 0} for i in range(n)]


async def test_closed_loop_keeps_exactly_the_concurrency_in_flight():
    send = HeldSend(hold=4, total=20)
    result = await asyncio.wait_for(
        run_load(send, "http://unused", payloads(20), LoadSpec(concurrency=4), progress=False), timeout=30)
    assert send.peak == 4 and send.sent == list(range(20)) and len(result.records) == 20
    assert sum(not r.success for r in result.records) == 4
    assert result.duration_s >= max(r.start for r in result.records) >= 0 and result.client_cpu_s >= 0


async def test_open_loop_sends_no_request_before_its_time_and_honours_the_cap():
    send = HeldSend(hold=2, total=10)
    spec = LoadSpec(concurrency=2, request_rate=200.0, seed=1)
    result = await asyncio.wait_for(run_load(send, "http://unused", payloads(10), spec, progress=False), timeout=30)
    assert send.peak == 2 and sorted(send.sent) == list(range(10)) and len(result.records) == 10
    offsets = arrival_offsets(10, spec.request_rate, spec.burstiness, spec.seed)
    assert all(r.start >= at - 1e-3 for r, at in zip(result.records, offsets))  # records in payload order


class TickingClock:
    """The load generator's clock, made virtual: every reading is `tick` seconds after the previous one, so how
    many requests fit in a duration depends on the code, not on how busy the machine is."""

    def __init__(self, tick: float):
        self.tick, self.now = tick, 0.0

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    process_time = staticmethod(time.process_time)


async def test_duration_mode_reuses_payloads_round_robin_and_sends_nothing_after_the_duration(monkeypatch):
    monkeypatch.setattr(loadgen, "time", TickingClock(tick=0.01))
    send = CountingSend()
    spec = LoadSpec(concurrency=2, duration_s=0.2)
    result = await asyncio.wait_for(run_load(send, "http://unused", payloads(3), spec, progress=False), timeout=30)
    assert len(send.sent) > 3 and send.sent == [i % 3 for i in range(len(send.sent))]
    assert all(r.start < spec.duration_s for r in result.records) and len(result.records) == len(send.sent)
    assert result.duration_s >= spec.duration_s


def test_lengths_parse_and_sample():
    assert Lengths.parse("32") == Lengths(32, 32) == Lengths.parse("fixed:32")
    uniform = Lengths.parse("uniform:4,8")
    import random

    assert {uniform.sample(random.Random(i)) for i in range(200)} == {4, 5, 6, 7, 8}
    with pytest.raises(ValueError):
        Lengths.parse("normal:3")


def test_payloads_have_the_requested_shapes(tmp_path):
    chat = generation_payloads("chat", "m", 3, Lengths(5, 5), Lengths(7, 7))
    assert len(chat) == 3 and all(len(p["messages"][0]["content"].split()) == 5 for p in chat)
    assert chat[0]["max_tokens"] == 7 and chat[0]["ignore_eos"] and chat[0]["stream_options"]["include_usage"]
    assert generation_payloads("chat", "m", 3, Lengths(5, 5), Lengths(7, 7)) == chat  # seeded
    emb = embedding_payloads("e", 4, 32, Lengths(3, 3), encoding_format="base64")
    assert [len(p["input"]) for p in emb] == [32] * 4 and emb[0]["encoding_format"] == "base64"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps("plain text") + "\n" + json.dumps({"prompt": "hi there", "output_len": 9}) + "\n")
    assert read_prompts(str(prompts)) == [{"prompt": "plain text", "output_len": None},
                                          {"prompt": "hi there", "output_len": 9}]
    from_file = generation_payloads("completions", "m", 3, Lengths(5, 5), Lengths(7, 7), prompts_file=str(prompts))
    assert [p["prompt"] for p in from_file] == ["plain text", "hi there", "plain text"]
    assert [p["max_tokens"] for p in from_file] == [7, 9, 7]


def test_audio_seconds_from_wav_header_and_pcm():
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"\0\0" * 8000)
    assert audio_seconds(buf.getvalue(), "wav", 22050) == pytest.approx(0.5)
    assert audio_seconds(b"\0\0" * 22050, "pcm", 22050) == pytest.approx(1.0)


def test_stream_clock_ttft_and_gaps():
    clock = _StreamClock(started=10.0)
    for t in (10.3, 10.4, 10.6):
        clock.text_arrived(t)
    assert clock.ttft == pytest.approx(0.3) and clock.itl == pytest.approx([0.1, 0.2]) and clock.chunks == 3


def test_target_parse():
    assert Target.parse("http://h:1/v1/") == Target("server", "http://h:1")
    assert Target.parse("unbatched=http://h:2") == Target("unbatched", "http://h:2")


class _RenamedProcess:
    """A psutil.Process stand-in whose name changes between reads, as Ray's workers do (ray::X -> ray::X.method)."""

    def __init__(self, pid: int, names: list[str], seconds: list[float]):
        self.pid, self._names, self._seconds = pid, names, seconds

    def name(self) -> str:
        return self._names[0] if len(self._names) == 1 else self._names.pop(0)

    def cpu_times(self):
        user = self._seconds[0] if len(self._seconds) == 1 else self._seconds.pop(0)
        return type("Times", (), {"user": user, "system": 0.5})()


def test_server_cpu_counts_a_renamed_process_by_its_pid_not_its_whole_life():
    from benchmarks.runner import _server_cpu_delta
    from benchmarks.server import cpu_seconds_by_process

    controller = _RenamedProcess(7, ["ray::ServeController.listen_for_change", "ray::ServeController"], [40.0, 41.5])
    replica = _RenamedProcess(9, ["ray::ServeReplica"], [10.0, 12.0])
    before = cpu_seconds_by_process([controller, replica])
    newcomer = _RenamedProcess(11, ["python"], [0.25])  # started during the run: counts from zero
    after = cpu_seconds_by_process([controller, replica, newcomer])
    delta = _server_cpu_delta(before, after, requests=10)
    assert delta["server_cpu_by_process_s"] == {"ray::ServeReplica:9": 2.0, "ray::ServeController:7": 1.5,
                                                "python:11": 0.75}
    assert delta["server_cpu_s"] == pytest.approx(4.25)
    assert delta["server_cpu_ms_per_request"] == pytest.approx(425.0)


@pytest.fixture
def models_server():
    """A local HTTP server whose GET /v1/models answers with `listing["data"]` (set by the test)."""
    import http.server
    import threading

    listing = {"data": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"object": "list", "data": listing["data"]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Target("t", f"http://127.0.0.1:{server.server_address[1]}"), listing
    server.shutdown()


def test_pick_model_takes_the_modalitys_task_and_never_another_tasks_model(models_server):
    from benchmarks.runner import pick_model

    target, listing = models_server
    listing["data"] = [{"id": "llm", "task": "chat"}, {"id": "sd", "task": "image"}, {"id": "tts", "task": "speech"}]
    assert (pick_model(target, "images"), pick_model(target, "speech"), pick_model(target, "completions")) == (
        "sd", "tts", "llm")
    with pytest.raises(RuntimeError, match="no embedding model.*llm \\(chat\\)"):
        pick_model(target, "embeddings")
    listing["data"] = [{"id": "only-one"}]  # another server, no task field: its one model
    assert pick_model(target, "embeddings") == "only-one"
    listing["data"] = [{"id": "a"}, {"id": "b"}]
    with pytest.raises(RuntimeError, match="pass --model"):
        pick_model(target, "chat")
