"""The whole path: `openserve up` on the embedded default config (real local Ray, real packaged models),
driven over HTTP by the official openai client. Ends by stopping the server with Ctrl-C."""
from __future__ import annotations

import io
import ipaddress
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time

import httpx
import numpy as np
import ollama
import openai
import pytest
import soundfile
from PIL import Image

from tests.e2e.server_process import REPO, ServerProcess

pytestmark = pytest.mark.ray

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
IMAGE = "tiny-random-sd"
SPEECH = "piper-joe-medium"


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess()
    yield srv
    srv.cleanup()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_every_default_model(client):
    ids = {m.id for m in client.models.list().data}
    assert ids == {CHAT, EMBED, IMAGE, SPEECH}
    assert client.models.retrieve(EMBED).id == EMBED


def test_chat_answers_relevant_english(client):
    r = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0, max_tokens=32
    )
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 32


def test_chat_streams_token_by_token(client):
    stream = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 5, "expected many small deltas, not one block"
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 24
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])


def test_chat_seeded_sampling_is_reproducible_and_n_gives_choices(client):
    kwargs = dict(model=CHAT, messages=[{"role": "user", "content": "Tell me a word."}], max_tokens=8, temperature=1.0)
    a = client.chat.completions.create(seed=7, n=2, **kwargs)
    b = client.chat.completions.create(seed=7, n=2, **kwargs)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1]


def test_completions(client):
    r = client.completions.create(model=CHAT, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.choices[0].text.strip()
    assert r.usage.completion_tokens <= 8


def test_embeddings_rank_paraphrase_above_unrelated(client):
    texts = ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell sharply today."]
    r = client.embeddings.create(model=EMBED, input=texts)  # the client asks for base64 and decodes it
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    single = client.embeddings.create(model=EMBED, input=texts[0], encoding_format="float")
    np.testing.assert_allclose(single.data[0].embedding, v[0], atol=1e-4)


def test_concurrent_embedding_requests_are_batched_and_each_gets_its_own_vectors(client):
    """24 requests at once (1 to 4 sentences each) are merged into shared forward passes; every request must get
    back exactly its own vectors, and one bad request (a token id outside the vocabulary) fails alone."""
    from concurrent.futures import ThreadPoolExecutor

    requests = [[f"sentence {i}-{k} about topic {i % 5}" for k in range(1 + i % 4)] for i in range(24)]
    alone = [np.array([d.embedding for d in client.embeddings.create(model=EMBED, input=r).data]) for r in requests]

    def embed(i):
        if i == 24:
            with pytest.raises(openai.BadRequestError):
                client.embeddings.create(model=EMBED, input=[[10**7]])
            return None
        return np.array([d.embedding for d in client.embeddings.create(model=EMBED, input=requests[i]).data])

    with ThreadPoolExecutor(25) as pool:
        together = list(pool.map(embed, range(25)))
    for mine, expected in zip(together[:24], alone):
        np.testing.assert_allclose(mine, expected, atol=1e-4)


def test_image_is_a_png_of_the_requested_size(client):
    import base64

    r = client.images.generate(model=IMAGE, prompt="a red square", size="128x64", n=2, response_format="b64_json")
    assert len(r.data) == 2
    for d in r.data:
        im = Image.open(io.BytesIO(base64.b64decode(d.b64_json)))
        assert im.format == "PNG" and im.size == (128, 64)


def test_speech_is_a_wav_of_speech_length(client):
    r = client.audio.speech.create(
        model=SPEECH, voice="alloy", input="Hello! This is a test of the local speech model.", response_format="wav"
    )
    samples, rate = soundfile.read(io.BytesIO(r.content))
    assert rate == 22050
    assert 1.0 < len(samples) / rate < 15.0
    assert np.abs(samples).max() > 0.05


@pytest.mark.parametrize(
    "path, body, status",
    [
        ("/v1/chat/completions", {"model": CHAT}, 400),  # missing messages
        ("/v1/chat/completions", {"model": CHAT, "messages": "hi"}, 400),  # wrong type
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404),
        ("/v1/chat/completions", {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400),
        ("/v1/chat/completions", {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400),
        ("/v1/embeddings", {"model": EMBED, "input": ""}, 400),
        ("/v1/embeddings", {"model": EMBED, "input": []}, 400),
        ("/v1/embeddings", {"model": CHAT, "input": "x"}, 400),  # a chat model on the embeddings endpoint
        ("/v1/images/generations", {"model": IMAGE, "prompt": "x", "size": "100x7"}, 400),
        ("/v1/audio/speech", {"model": SPEECH, "input": "hi", "voice": "nobody"}, 400),
    ],
)
def test_bad_input_gets_openai_error_and_4xx(server, path, body, status):
    r = httpx.post(server.base_url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("path, body, param, code", [
    ("/v1/chat/completions", {"model": CHAT, "messages": HI, "seed": 2**70}, "seed", None),
    ("/v1/chat/completions", {"model": CHAT, "messages": HI, "seed": -(2**63) - 1}, "seed", None),
    ("/v1/chat/completions", {"model": CHAT, "messages": HI, "max_tokens": 10**9}, "max_tokens",
     "context_length_exceeded"),
    ("/v1/completions", {"model": CHAT, "prompt": "hi", "max_tokens": 10**9}, "max_tokens", "context_length_exceeded"),
    ("/v1/images/generations", {"model": IMAGE, "prompt": "x", "seed": 2**70}, "seed", None),
    ("/v1/images/generations", {"model": IMAGE, "prompt": "x", "size": "100000x100000"}, "size", None),
])
def test_hostile_values_are_400s_before_the_models(server, path, body, param, code):
    r = httpx.post(server.base_url + path, json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code), r.text


def test_the_real_engines_take_the_whole_seed_range(client):
    """int64 seeds at both ends, with n > 1 (choice i uses seed + i, past 2**63 - 1): answered, and the engines
    keep serving (a seed out of torch's range used to kill the LLM's engine process)."""
    for seed in (2**63 - 1, -(2**63)):
        r = client.chat.completions.create(model=CHAT, messages=HI, seed=seed, n=2, max_tokens=4, temperature=1.0)
        assert [c.index for c in r.choices] == [0, 1]
        images = client.images.generate(model=IMAGE, prompt="a red square", n=2, response_format="b64_json",
                                        extra_body={"seed": seed})
        assert len(images.data) == 2
    question = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model=CHAT, messages=question, temperature=0, max_tokens=16)
    assert "Paris" in r.choices[0].message.content


def test_oversized_body_gets_413(server):
    body = json.dumps({"model": EMBED, "input": "x" * (11 * 2**20)})
    r = httpx.post(server.base_url + "/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["message"]


def test_client_leaving_mid_stream_does_not_hurt_the_server(client):
    stream = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Write a long story."}], max_tokens=400, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    r = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0, max_tokens=16
    )
    assert "Paris" in r.choices[0].message.content


def test_ollama_client_lists_chats_generates_embeds_and_shows(server, client):
    """The official ollama client, unchanged, on the same port (OLLAMA_HOST would point it here)."""
    o = ollama.Client(host=server.base_url, timeout=120)
    assert {m.model for m in o.list().models} == {f"{CHAT}:latest", f"{EMBED}:latest"}
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = o.chat(model=CHAT, messages=question, options={"temperature": 0, "num_predict": 32})
    assert "Paris" in reply.message.content and reply.done and reply.eval_count <= 32
    parts = list(o.chat(model=f"{CHAT}:latest", messages=question, options={"temperature": 0, "num_predict": 32},
                        stream=True))
    assert "".join(p.message.content for p in parts) == reply.message.content and len(parts) > 5
    generated = o.generate(model=CHAT, prompt="What is the capital of France?", options={"temperature": 0,
                                                                                        "num_predict": 32})
    assert "Paris" in generated.response
    texts = ["A man is playing a guitar.", "The stock market fell sharply today."]
    vectors = np.array(o.embed(model=EMBED, input=texts).embeddings)
    direct = np.array([d.embedding for d in client.embeddings.create(model=EMBED, input=texts).data])
    np.testing.assert_allclose(vectors, direct, atol=1e-4)
    assert o.show(CHAT).capabilities == ["completion"] and o.show(EMBED).capabilities == ["embedding"]
    with pytest.raises(ollama.ResponseError) as missing:
        o.chat(model="llama3", messages=question)
    assert missing.value.status_code == 404


def test_health(server):
    assert httpx.get(server.base_url + "/health").status_code == 200


def readme_commands() -> list[str]:
    """The `openserve models ...` commands of the README's worked example, continuation lines joined."""
    text = open(os.path.join(REPO, "README.md")).read().replace("\\\n", " ")
    example = text.split("### Worked example", 1)[1].split("\n## ", 1)[0]
    commands = [re.sub(r"\s+#.*$", "", line.removeprefix("$ ")).strip() for line in example.splitlines()
                if line.removeprefix("$ ").startswith("openserve models ")]
    return [" ".join(c.split()) for c in commands]


def test_the_readme_worked_example_passes_as_written(server, client):
    """add -> ready in under 60 s -> answers by its alias -> update -> undeploy -> rm, the README's own commands
    run against the default server (OPENSERVE_URL points them at it)."""
    commands = readme_commands()
    assert [c.split()[2] for c in commands] == ["add", "list", "update", "undeploy", "rm"], commands
    env = dict(os.environ, OPENSERVE_URL=server.base_url)
    openserve = os.path.join(os.path.dirname(sys.executable), "openserve")

    def run(command: str) -> str:
        done = subprocess.run([openserve, *shlex.split(command)[1:]], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    started = time.monotonic()
    assert run(commands[0]).splitlines()[-1] == "minilm: ready"
    took = time.monotonic() - started
    print(f"\nREADME worked example: add -> ready in {took:.1f} s")
    assert took < 60
    rows = [line.split() for line in run(commands[1]).splitlines()]
    assert rows[0][:4] == ["NAME", "TASK", "STATUS", "REPLICAS"] and ["minilm", "embedding", "ready", "1/1"] in [
        row[:4] for row in rows]
    vectors = client.embeddings.create(model="text-embedding-3-small", input=["a sentence"]).data
    assert len(vectors) == 1 and len(vectors[0].embedding) == 384
    started = time.monotonic()
    assert run(commands[2]).splitlines()[-1] == "minilm: ready"
    print(f"README worked example: update -> ready in {time.monotonic() - started:.1f} s")
    assert len(client.embeddings.create(model="minilm", input=["again"]).data[0].embedding) == 384
    assert run(commands[3]).splitlines()[-1] == "minilm: stopped"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input=["gone"])
    assert run(commands[4]).strip() == "minilm: deleted"


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def test_nothing_listens_beyond_loopback_and_ray_requires_its_token(server):
    sockets = server.listening_sockets()
    assert any(port == server.port for _, _, port in sockets)
    assert [s for s in sockets if not is_loopback(s[1])] == []
    gcs = [p for p in server.processes() if p.name() == "gcs_server"]
    assert gcs and gcs[0].environ()["RAY_AUTH_MODE"] == "token"
    for name in ("ray_auth_token", "secrets.json"):
        assert stat.S_IMODE(os.stat(os.path.join(server.data_dir, name)).st_mode) == 0o600


def test_ctrl_c_stops_everything(server):
    code = server.stop()
    assert code is not None, "server did not exit within 90 s of SIGINT:\n" + server.log()[-3000:]
    assert server.leftover_processes() == []
