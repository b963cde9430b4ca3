"""FakeTokenizer and FakeEngine behave exactly as their docstring says (serving tests rely on it)."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

from models.errors import ModelInputError
from models.llm.fake import FakeEngine, FakeTokenizer
from models.llm.types import SamplingParams

QUESTION = "What is the capital of France?"


def chat_ids(content=QUESTION):
    return FakeTokenizer().apply_chat_template([{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": content}])


def run(engine, requests):
    """Add {rid: (prompt_ids, params)} and step to completion; return {rid: (text, outputs)}."""
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    results = {rid: ("", []) for rid in requests}
    while engine.has_unfinished_requests():
        for out in engine.step():
            text, outs = results[out.request_id]
            results[out.request_id] = (text + out.new_text, outs + [out])
    return results


def test_tokenizer_is_character_level_with_chatml_specials():
    tok = FakeTokenizer()
    assert tok.encode("ab") == [3 + ord("a"), 3 + ord("b")]
    assert tok.encode("<|im_start|>x<|im_end|>") == [1, 3 + ord("x"), 2]
    assert tok.decode(tok.encode("héllo 😀<|im_end|>")) == "héllo 😀<|im_end|>"
    assert tok.decode([3 + ord("a"), 2, 0], skip_special_tokens=True) == "a"
    assert tok.convert_ids_to_tokens([1, 3 + ord("z")]) == ["<|im_start|>", "z"]
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == tok.encode(text)
    assert (tok.eos_token_id, tok.pad_token_id) == (2, 0)


def test_greedy_answer_is_the_last_user_message_then_eos():
    text, outs = run(FakeEngine(), {"a": (chat_ids(), SamplingParams(temperature=0.0, max_tokens=100))})["a"]
    assert text == QUESTION
    assert [o.new_text for o in outs] == list(QUESTION) + [""]
    assert outs[-1].new_token_ids == [2] and outs[-1].finish_reason == "stop"
    assert outs[-1].num_output_tokens == len(QUESTION) + 1 and outs[-1].num_prompt_tokens == len(chat_ids())
    assert all(o.finish_reason is None and not o.finished for o in outs[:-1])


def test_plain_prompt_is_echoed_whole():
    prompt = FakeTokenizer().encode("Say this")
    assert run(FakeEngine(), {"a": (prompt, SamplingParams(temperature=0))})["a"][0] == "Say this"


def test_max_tokens_stop_strings_and_stop_token_ids():
    engine = FakeEngine()
    text, outs = run(engine, {"a": (chat_ids(), SamplingParams(max_tokens=4, temperature=0))})["a"]
    assert (text, outs[-1].finish_reason, len(outs)) == ("What", "length", 4)
    text, outs = run(engine, {"b": (chat_ids(), SamplingParams(stop=["capital"], temperature=0, max_tokens=100))})["b"]
    assert (text, outs[-1].finish_reason) == ("What is the ", "stop")
    params = SamplingParams(stop=["capital"], temperature=0, max_tokens=16)
    text, outs = run(engine, {"h": (chat_ids(), params)})["h"]
    assert (text, outs[-1].finish_reason) == ("What is the capi", "length")  # held-back "capi" released at the end
    q_id = FakeTokenizer().encode("?")[0]
    params = SamplingParams(stop_token_ids=[q_id], temperature=0, max_tokens=100)
    text, outs = run(engine, {"c": (chat_ids(), params)})["c"]
    assert (text, outs[-1].new_token_ids, outs[-1].finish_reason) == (QUESTION[:-1], [q_id], "stop")


def test_ignore_eos_cycles_until_length():
    params = SamplingParams(max_tokens=7, ignore_eos=True, temperature=0)
    text, outs = run(FakeEngine(), {"a": (chat_ids("abc"), params)})["a"]
    assert text == "abcabc" and outs[-1].finish_reason == "length" and outs[3].new_token_ids == [2]


def test_seed_decides_the_sampled_suffix():
    def sample(seed):
        return run(FakeEngine(), {"a": (chat_ids("hi"), SamplingParams(temperature=0.7, seed=seed, max_tokens=50))})

    text = sample(1)["a"][0]
    assert text.startswith("hi ") and text[3:].isdigit()
    assert sample(1)["a"][0] == text and sample(2)["a"][0] != text


def test_logprobs_shape_and_values():
    params = SamplingParams(temperature=0, max_tokens=2, logprobs=True, top_logprobs=3)
    _, outs = run(FakeEngine(), {"a": (chat_ids("ab"), params)})["a"]
    lp = outs[0].logprobs[0]
    assert (lp.token_id, lp.token, lp.logprob) == (3 + ord("a"), "a", pytest.approx(-math.log(2)))
    assert [(t, s) for t, s, _ in lp.top] == [(3 + ord("a"), "a"), (3 + ord("b"), "b"), (3 + ord("c"), "c")]
    assert [x[2] for x in lp.top] == pytest.approx([-math.log(2), -2 * math.log(2), -3 * math.log(2)])
    assert run(FakeEngine(), {"b": (chat_ids(), SamplingParams(max_tokens=1))})["b"][1][0].logprobs is None


def test_validation_scheduling_and_abort():
    engine = FakeEngine(max_model_len=10, max_running=1)
    with pytest.raises(ModelInputError) as info:
        engine.add_request("x", [5] * 8, SamplingParams(max_tokens=3))
    assert info.value.param == "max_tokens"
    with pytest.raises(ModelInputError):
        engine.add_request("x", [], SamplingParams())
    engine.add_request("a", [50, 51], SamplingParams(max_tokens=5))
    engine.add_request("b", [50, 51], SamplingParams(max_tokens=5))
    assert [o.request_id for o in engine.step()] == ["a"]  # "b" waits: max_running=1
    engine.abort("a")
    engine.abort("nope")
    assert engine.aborted == ["a"] and engine.unfinished_request_ids() == ["b"]
    assert [o.request_id for o in engine.step()] == ["b"]
    engine.abort("b")
    assert not engine.has_unfinished_requests() and engine.num_unfinished_requests() == 0


def test_fake_module_does_not_import_torch():
    code = "import sys, models.llm.fake; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).parents[2]))


def test_the_fake_implements_the_whole_engine_protocol_with_stats_and_close():
    from tests.unit.test_llm_engine import assert_implements_llm_engine

    engine = FakeEngine(max_running=1, max_queued=2)
    assert_implements_llm_engine(engine)
    assert engine.vocab_size == FakeTokenizer.vocab_size
    prompt = chat_ids("ab")
    for rid in ("a", "b", "c"):
        engine.add_request(rid, prompt, SamplingParams(temperature=0, max_tokens=100))
    engine.step()
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.kv_slots_used, stats.kv_slots_total) == (1, 2, 1, 1)
    assert (stats.prompt_tokens, stats.generated_tokens, stats.steps) == (len(prompt), 1, 1)
    engine.abort("c")
    while engine.has_unfinished_requests():
        engine.step()
    stats = engine.stats()
    assert (stats.finished_requests, stats.aborted_requests, stats.generated_tokens) == (2, 1, 2 * 3)
    assert engine.is_alive()
    engine.close()
    assert not engine.is_alive()
    with pytest.raises(RuntimeError):
        engine.add_request("d", prompt, SamplingParams())
