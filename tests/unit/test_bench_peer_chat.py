"""benchmarks.peer_chat's pure parts: the peers' request bodies and argv, and the median summary over rounds."""
from __future__ import annotations

import json
from types import SimpleNamespace

from benchmarks.peer_chat import summarize
from benchmarks.peer_servers import END_TOKENS, build_servers


def args(**extra):
    base = dict(servers=["ours", "transformers_serve_cb", "llama_cpp"], port=18400, dtype="auto", threads=None,
                peer_dtype="auto", omp_wait_policy="default", peer_omp_wait_policy="default", worker_niceness=None,
                llama_cpp_python="/peers/bin/python", llama_cpp_threads=2)
    return SimpleNamespace(**{**base, **extra})


def test_llama_cpp_is_started_without_interrupting_streams_and_never_ends_early(tmp_path):
    servers = build_servers(args(), str(tmp_path / "model"), "/m.gguf", str(tmp_path))
    assert list(servers) == ["ours", "transformers_serve_cb", "llama_cpp"]
    llama = servers["llama_cpp"]
    argv = llama.argv
    assert argv[:3] == ["/peers/bin/python", "-m", "llama_cpp.server"]
    assert argv[argv.index("--interrupt_requests") + 1] == "False" and argv[argv.index("--n_threads") + 1] == "2"
    assert llama.port == 18402 and not llama.usage  # its streams carry no usage: content chunks are counted
    body = llama.request([{"role": "user", "content": "hi"}], 96, 0.7)
    assert body["logit_bias"] == {str(t): -100 for t in END_TOKENS} and body["temperature"] == 0.7
    assert body["max_tokens"] == 96 and body["stream"] is True


def test_transformers_serve_samples_only_when_asked(tmp_path):
    peer = build_servers(args(), str(tmp_path / "model"), "/m.gguf", str(tmp_path))["transformers_serve_cb"]
    greedy = json.loads(peer.request([], 8, 0.0)["generation_config"])
    sampled = json.loads(peer.request([], 8, 0.7)["generation_config"])
    assert greedy["do_sample"] is False and "temperature" not in greedy and greedy["max_new_tokens"] == 8
    assert sampled["do_sample"] is True and sampled["temperature"] == 0.7


def test_without_its_python_llama_cpp_is_not_built(tmp_path):
    servers = build_servers(args(llama_cpp_python=None), str(tmp_path / "model"), "/m.gguf", str(tmp_path))
    assert "llama_cpp" not in servers


def test_summary_takes_medians_over_rounds_and_ratios_of_medians():
    def run(decode, many):
        return {"single_stream": {"decode_tokens_per_s": decode, "output_tokens_per_s": decode - 1},
                "concurrent_16": {"output_tokens_per_s": many}}

    report = {"ours": [run(30, 150), run(40, 160), run(35, 100)],
              "llama_cpp": [run(60, 50), run(70, 52), run(66, 54)]}
    summary = summarize(report, 16)
    assert summary["rounds"] == 3
    assert summary["medians"]["ours"]["single_decode_tokens_per_s"] == 35
    assert summary["medians"]["llama_cpp"]["concurrent_output_tokens_per_s"] == 52
    assert summary["ratios"]["concurrent_output_tokens_per_s_ours_over_llama_cpp"] == round(150 / 52, 2)
    assert summary["ratios"]["single_decode_tokens_per_s_ours_over_llama_cpp"] == round(35 / 66, 2)
    assert "long_prompt_ttft_ms" not in summary["medians"]["ours"]  # a phase not run is left out, not zero
