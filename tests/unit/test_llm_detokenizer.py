"""IncrementalDetokenizer: streamed deltas add up to the full decode, never emitting half a character."""
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from models.llm.detokenizer import IncrementalDetokenizer, decodes_in_backend, window_decoder
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


@pytest.mark.parametrize("skip", [True, False])
def test_the_backend_shortcut_decodes_exactly_like_the_tokenizer(tok, skip):
    import random

    rng = random.Random(0)
    ids = tok.encode(TEXT, add_special_tokens=False) + [tok.eos_token_id, 1, 0]
    decode = window_decoder(tok, skip)
    assert decodes_in_backend(tok) and not decodes_in_backend(FakeTokenizer())
    for _ in range(200):
        window = [rng.choice(ids) if rng.random() < 0.8 else rng.randrange(len(tok)) for _ in range(rng.randrange(7))]
        assert decode(window) == tok.decode(window, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
    fake = FakeTokenizer()  # not a transformers tokenizer: its own decode
    assert window_decoder(fake, True)(fake.encode("a<|im_end|>b")) == "ab"


class PreviousDetokenizer:
    """The algorithm as it was before the backend shortcut and the kept prefix text: two decodes per token through
    the tokenizer's own decode. The current one must give exactly its deltas."""

    def __init__(self, tokenizer, prompt_ids):
        self.tokenizer, self.ids = tokenizer, list(prompt_ids[-5:])
        self.prefix, self.read = 0, len(self.ids)

    def decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) if ids else ""

    def add(self, token_id):
        self.ids.append(token_id)
        prefix_text, full_text = self.decode(self.ids[self.prefix : self.read]), self.decode(self.ids[self.prefix :])
        if full_text == prefix_text:
            self.read = len(self.ids)
            return ""
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return full_text[len(prefix_text) :]

    def flush(self):
        prefix_text, full_text = self.decode(self.ids[self.prefix : self.read]), self.decode(self.ids[self.prefix :])
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""


def test_deltas_are_exactly_the_previous_algorithms_on_random_streams(tok):
    import random

    rng = random.Random(3)
    specials = [tok.eos_token_id, 0, 1]
    for _ in range(60):  # random ids: split characters, invalid UTF-8, special tokens anywhere
        prompt = [rng.randrange(len(tok)) for _ in range(rng.randrange(8))]
        stream = [rng.choice(specials) if rng.random() < 0.1 else rng.randrange(len(tok)) for _ in range(40)]
        new, old = IncrementalDetokenizer(tok, prompt), PreviousDetokenizer(tok, prompt)
        assert [new.add(t) for t in stream] == [old.add(t) for t in stream]
        assert new.flush() == old.flush()
