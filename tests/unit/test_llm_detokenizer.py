"""IncrementalDetokenizer: streamed deltas add up to the full decode, never emitting half a character."""
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from models.llm.detokenizer import IncrementalDetokenizer
from models.llm.fake import FakeTokenizer
from tests.fixtures.tiny_llm import build_tokenizer

TEXT = "Hello café 😀 é 日本語 ok"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def deltas_for(tokenizer, prompt_ids, output_ids):
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    deltas = [detok.add(t) for t in output_ids]
    return deltas, detok.flush()


def test_byte_level_stream_equals_full_decode_without_replacement_chars(tok):
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert any("\ufffd" in tok.decode([t]) for t in ids)  # some characters really are split across tokens
    deltas, rest = deltas_for(tok, [], ids)
    assert "".join(deltas) + rest == TEXT
    assert rest == ""
    assert not any("\ufffd" in d for d in deltas)


def test_emoji_is_held_until_its_last_byte_arrives(tok):
    prompt = tok.encode("Hi", add_special_tokens=False)
    ids = tok.encode(" 😀", add_special_tokens=False)
    assert len(ids) >= 3  # " " and the emoji's 4 bytes are not merged in this tiny vocab
    deltas, _ = deltas_for(tok, prompt, ids)
    assert "".join(deltas) == " 😀"
    assert deltas[-1].endswith("😀") and all(d in ("", " ") for d in deltas[:-1])


def test_special_tokens_are_skipped_and_flush_releases_an_incomplete_character(tok):
    eos = tok.eos_token_id
    partial = tok.encode("😀", add_special_tokens=False)[:2]  # two of the emoji's four bytes
    deltas, rest = deltas_for(tok, [], tok.encode("ok", add_special_tokens=False) + [eos] + partial)
    assert "".join(deltas) == "ok"
    assert rest == "\ufffd" * len(tok.decode(partial))  # the sequence ended mid-character: shown as U+FFFD


def test_left_context_keeps_sentencepiece_leading_spaces():
    t = Tokenizer(models.WordLevel({"▁Hello": 0, "▁world": 1, "<unk>": 2, "!": 3}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.decoder = decoders.Metaspace()
    sp = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>")
    assert sp.decode([1]) == "world"  # decoded alone, the leading space is lost
    deltas, _ = deltas_for(sp, [0], [1, 3, 1])
    assert deltas == [" world", "!", " world"]


def test_long_streams_keep_a_bounded_window(tok):
    ids = tok.encode("one two three " * 50, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [])
    text = "".join(detok.add(t) for t in ids)
    assert text == "one two three " * 50
    assert len(detok._ids) <= 8  # only the decode window is kept, not the whole output


def test_works_with_the_fake_character_tokenizer():
    fake = FakeTokenizer()
    ids = fake.encode("héllo 😀")
    deltas, rest = deltas_for(fake, fake.encode("<|im_start|>assistant\n"), ids + [fake.eos_token_id])
    assert deltas == list("héllo 😀") + [""]
    assert rest == ""
