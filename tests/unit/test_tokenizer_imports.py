"""import_tokenizer_library: the chat replica imports its tokenizer's library while the engine loads."""
from __future__ import annotations

import subprocess
import sys

from serving.services import prompts


def test_imports_what_exists_and_skips_what_does_not(monkeypatch):
    monkeypatch.setattr(prompts, "TOKENIZER_MODULES", ("no_such_module_for_this_test", "colorsys"))
    sys.modules.pop("colorsys", None)
    thread = prompts.import_tokenizer_library()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert "colorsys" in sys.modules


def test_a_real_tokenizer_unpickles_without_importing_after_the_thread():
    """In a fresh interpreter: after the thread, unpickling a transformers tokenizer imports nothing from
    transformers' tokenizer modules again (they are the slow part), so the thread imported the right ones."""
    code = """
import pickle, sys
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
raw = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
raw.pre_tokenizer = pre_tokenizers.Whitespace()
blob = pickle.dumps(PreTrainedTokenizerFast(tokenizer_object=raw))
for name in [m for m in sys.modules if m.startswith("transformers")]:
    del sys.modules[name]
from serving.services.prompts import import_tokenizer_library
import_tokenizer_library().join(timeout=120)
before = set(sys.modules)
tokenizer = pickle.loads(blob)
assert tokenizer("a a").input_ids == [1, 1]
print(sorted(m for m in set(sys.modules) - before if m.startswith("transformers.tokenization")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
