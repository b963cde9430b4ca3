"""POST /tokenize and /detokenize over the fake chat model (one token per character, ChatML specials)."""
from tests.api_fakes import CHAT, EMBED, TOKENIZER, app, assert_error, chat_prompt_tokens, fakes, http  # noqa: F401


async def test_tokenize_a_prompt_and_back(http):
    r = await http.post("/tokenize", json={"model": CHAT, "prompt": "hello"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {"count": 5, "max_model_len": None, "tokens": TOKENIZER.encode("hello")}
    r = await http.post("/detokenize", json={"model": CHAT, "tokens": body["tokens"]})
    assert r.status_code == 200 and r.json() == {"prompt": "hello"}


async def test_tokenize_messages_through_the_chat_template(http):
    messages = [{"role": "user", "content": "hi"}]
    r = await http.post("/tokenize", json={"model": CHAT, "messages": messages})
    assert r.status_code == 200 and r.json()["count"] == chat_prompt_tokens(messages)
    r2 = await http.post("/tokenize", json={"model": CHAT, "messages": messages, "add_generation_prompt": False})
    assert r2.json()["count"] < r.json()["count"]


async def test_bad_tokenize_requests_are_400s(http):
    assert_error(await http.post("/tokenize", json={"model": CHAT}), 400, param=None)
    assert_error(await http.post("/detokenize", json={"model": CHAT, "tokens": [10**9]}), 400, param="tokens")
    assert_error(await http.post("/detokenize", json={"model": CHAT, "tokens": [-1]}), 400, param="tokens[0]")
    assert_error(await http.post("/tokenize", json={"model": EMBED, "prompt": "x"}), 400, param="model")
