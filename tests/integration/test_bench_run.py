"""`python -m benchmarks <modality>` end to end against the real FastAPI app on the deterministic fakes, served by
uvicorn on a free port (a real socket, the real aiohttp client): JSON document, table, plots, exact counts."""
from __future__ import annotations

import glob
import json
import os
import socket
import threading
import time

import pytest
import uvicorn

from benchmarks.cli import main
from benchmarks.workloads import Lengths, speech_payloads
from serving.api.app import build_app
from tests.api_fakes import CHAT, EMBED, IMAGE, SPEECH, Fakes


@pytest.fixture(scope="module")
def server_url():
    fakes = Fakes()
    fakes.chat.delay = 0.002  # gaps between tokens, so that ITL and TPOT are not all zero
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(fakes.router()), port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)
    fakes.close()


def run_bench(tmp_path, *argv: str) -> dict:
    assert main([*argv, "--out", str(tmp_path), "--name", "run", "--no-progress", "--warmup", "1"]) == 0
    with open(tmp_path / "run.json") as f:
        return json.load(f)


def test_chat_sweep_reports_vllm_metrics_and_plots(server_url, tmp_path, capsys):
    doc = run_bench(tmp_path, "chat", "--base-url", server_url, "--model", CHAT, "--concurrency", "1,2",
                    "--num-requests", "4", "--input-len", "6", "--output-len", "5", "--goodput", "ttft:5000",
                    "tpot:1000", "--raw")
    assert doc["machine"]["logical_cores"] >= 1 and "commit" in doc["git"]
    assert [r["params"]["concurrency"] for r in doc["runs"]] == [1, 2]
    m = doc["runs"][1]["metrics"]
    # The fake engine replies with the prompt's 6 words, one token per character; max_tokens 5 (and the bench's
    # ignore_eos) make it exactly 5.
    assert (m["completed"], m["failed"], m["total_output_tokens"]) == (4, 0, 20)
    assert m["mean_ttft_ms"] > 0 and m["mean_tpot_ms"] > 0 and m["mean_itl_ms"] > 0
    assert m["request_goodput"] == pytest.approx(m["request_throughput"])
    assert len(doc["runs"][0]["requests"]) == 4 and len(doc["runs"][0]["requests"][0]["itl"]) == 4
    names = {os.path.basename(p) for p in glob.glob(str(tmp_path / "*.png"))}
    assert {"run-chat-cdf-e2el.png", "run-chat-cdf-ttft.png", "run-chat-sweep-output_throughput.png"} <= names
    assert "TTFT p50" in capsys.readouterr().out


def test_embeddings_images_speech(server_url, tmp_path):
    emb = run_bench(tmp_path, "embeddings", "--base-url", server_url, "--model", EMBED, "--concurrency", "2",
                    "--num-requests", "6", "--inputs-per-request", "3", "--no-plots")
    assert emb["runs"][0]["metrics"]["total_inputs"] == 18
    img = run_bench(tmp_path, "images", "--base-url", server_url, "--model", IMAGE, "--concurrency", "2",
                    "--num-requests", "4", "--size", "64x64", "32x32", "--no-plots")
    assert [r["scenario"] for r in img["runs"]] == ["c=2 64x64", "c=2 32x32"]
    assert img["runs"][0]["metrics"]["total_images"] == 4
    speech = run_bench(tmp_path, "speech", "--base-url", server_url, "--model", SPEECH, "--concurrency", "2",
                       "--num-requests", "4", "--input-len", "3", "--no-plots")
    m = speech["runs"][0]["metrics"]
    assert m["completed"] == 4 and m["median_ttfb_ms"] > 0
    # The fake speaks 10 ms per character; the inputs are the same seeded sentences the tool sent.
    sent = speech_payloads(SPEECH, 4, Lengths(3, 3))
    assert m["total_audio_s"] == pytest.approx(sum(len(p["input"]) for p in sent) * 0.01, rel=1e-3)


def test_errors_are_counted_by_kind(server_url, tmp_path):
    code = main(["embeddings", "--base-url", server_url, "--model", "no-such-model", "--concurrency", "2",
                 "--num-requests", "3", "--warmup", "0", "--out", str(tmp_path), "--name", "bad", "--no-progress",
                 "--no-plots"])
    assert code == 1  # nothing completed
    with open(tmp_path / "bad.json") as f:
        assert json.load(f)["runs"][0]["metrics"]["errors"] == {"http_404": 3}
