"""Operating a real server (real local Ray, fake models): a real Prometheus scrapes /metrics and PromQL gives back
exactly what the test sent; /ready and /health while a model deploys; API keys made with `openserve keys` through
the openai client; request ids across processes; no key material in any log or in /metrics. The tests run in order
on one server (`--log-format json`)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.e2e.server_process import REPO, ServerProcess, free_port, wait_for

pytestmark = pytest.mark.ray

CONFIG = os.path.join(REPO, "tests", "e2e", "operate_models.yaml")
CHAT, EMBED = "fake-chat", "fake-embed"
YAML_KEY = "sk-yaml-e2e-3f9c2a7b5d1e8f60"  # server.api_keys in CONFIG
SECRETS: list[str] = [YAML_KEY]  # every key the tests used: none may show up in a log or in /metrics
ADMIN: dict[str, str] = {}  # the admin key, once made (from then on /admin needs it)


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(CONFIG, extra_args=("--log-format", "json"))
    yield srv
    srv.cleanup(remove_data=False)
    with open("/tmp/opx/last_e2e.log", "w") as f:
        f.write(srv.log())
    shutil.rmtree(srv.data_dir, ignore_errors=True)


def oai(server, key: str = YAML_KEY, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=retries, timeout=60)


class Prometheus:
    """Debian's prometheus on loopback, scraping the server every second."""

    def __init__(self, target_port: int):
        self.dir = tempfile.mkdtemp(prefix="prom-", dir="/tmp")
        self.port = free_port()
        with open(os.path.join(self.dir, "prometheus.yml"), "w") as f:
            f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    "scrape_configs:\n  - job_name: openserve\n"
                    f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.dir}/prometheus.yml", f"--storage.tsdb.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def query(self, promql: str) -> dict[tuple, float]:
        """Instant query -> {label values in order of sorted label names: value}."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            result = httpx.get(url, timeout=5).json()["data"]["result"]
        except (httpx.HTTPError, KeyError, ValueError):
            return {}
        return {tuple(v for _, v in sorted(r["metric"].items())): float(r["value"][1]) for r in result}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def prometheus(server):
    if shutil.which("prometheus") is None:
        pytest.skip("the `prometheus` binary is absent (Debian: apt-get install prometheus; `make test` installs it "
                    "when it can)")
    prom = Prometheus(server.port)
    yield prom
    prom.stop()


def send_known_traffic(server) -> dict:
    """A known mix: streamed and plain chats, a chat refused for its input, embeddings, an unknown model."""
    client, sent = oai(server), {"prompt": 0, "completion": 0, "embed_tokens": 0, "ttft": []}
    for i in range(5):
        messages = [{"role": "user", "content": f"count to {i + 3} please"}]
        started = time.monotonic()
        if i < 3:
            chunks = []
            for chunk in client.chat.completions.create(model=CHAT, messages=messages, max_tokens=8, stream=True,
                                                        stream_options={"include_usage": True}):
                if not sent["ttft"][i:] and chunk.choices and chunk.choices[0].delta.content:
                    sent["ttft"].append(time.monotonic() - started)
                chunks.append(chunk)
            usage = chunks[-1].usage
        else:
            usage = client.chat.completions.create(model=CHAT, messages=messages, max_tokens=8).usage
        sent["prompt"] += usage.prompt_tokens
        sent["completion"] += usage.completion_tokens
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=10**6)
    for i in range(7):
        sent["embed_tokens"] += client.embeddings.create(model=EMBED, input=["word " * (i + 1)]).usage.prompt_tokens
    for _ in range(2):
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="no-such-model", input="x")
    return sent


def test_prometheus_sees_exactly_the_requests_tokens_and_a_ttft_quantile(server, prometheus):
    sent = send_known_traffic(server)
    requests = 'sum by (model, endpoint, status) (openserve:requests_total{endpoint=~"/v1/(chat/completions|embeddings)"})'
    expected = {("/v1/chat/completions", CHAT, "200"): 5, ("/v1/chat/completions", CHAT, "400"): 1,
                ("/v1/embeddings", EMBED, "200"): 7, ("/v1/embeddings", "404"): 2}  # unknown model: no model label
    wait_for(lambda: prometheus.query(requests) == expected, 30, f"{requests} == {expected}",
             lambda: prometheus.query(requests))
    tokens = {"openserve:prompt_tokens_total": {(CHAT,): sent["prompt"], (EMBED,): sent["embed_tokens"]},
              "openserve:generation_tokens_total": {(CHAT,): sent["completion"]}}
    for metric, want in tokens.items():
        query = f"sum by (model) ({metric})"
        wait_for(lambda: prometheus.query(query) == want, 30, f"{query} == {want}", lambda: prometheus.query(query))
    ttft = 'histogram_quantile(0.5, sum by (le) (openserve:time_to_first_token_seconds_bucket{model="fake-chat"}))'
    median = wait_for(lambda: prometheus.query(ttft).get(()), 30, ttft)
    # A first token takes one engine step of 50 ms (the bucket below starts at 40 ms), and the replica sees it
    # before the client does: at most the client's slowest time to first token, up to the next bucket bound.
    assert 0.04 <= median <= min(b for b in (0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5) if b >= max(sent["ttft"]))
    success = prometheus.query('sum by (finished_reason) (openserve:request_success_total{model="fake-chat"})')
    assert sum(success.values()) == 5


def test_ready_names_a_deploying_model_while_health_stays_up(server):
    health_codes, stop = [], threading.Event()

    def poll_health():
        while not stop.is_set():
            health_codes.append(httpx.get(server.base_url + "/health", timeout=10).status_code)
            time.sleep(0.1)

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    try:
        model = {"name": "late-embed", "task": "embedding", "source": "fake:", "resources": {"num_cpus": 0.1}}
        assert httpx.post(server.base_url + "/admin/models", json=model, timeout=60).status_code == 201
        r = httpx.get(server.base_url + "/ready", timeout=10)
        assert (r.status_code, r.json()["not_ready"]) == (503, ["late-embed"])
        assert httpx.get(server.base_url + "/ready?model=fake-chat", timeout=10).status_code == 200
        wait_for(lambda: httpx.get(server.base_url + "/ready", timeout=10).status_code == 200, 120, "/ready 200")
    finally:
        stop.set()
        poller.join()
    assert health_codes and set(health_codes) == {200}


def keys_cli(server, *args: str, admin_key: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "serving.cli", "keys", *args, "--url", server.base_url]
    if admin_key:
        command += ["--admin-key", admin_key]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def create_key(server, *args: str, admin_key: str | None = None) -> dict:
    done = keys_cli(server, "create", *args, "--json", admin_key=admin_key)
    assert done.returncode == 0, done.stderr
    key = json.loads(done.stdout)
    SECRETS.append(key["key"])
    return key


def test_keys_scopes_allow_list_and_revocation_through_the_openai_client(server):
    user = create_key(server, "user", "--model", EMBED)
    assert len(oai(server, user["key"]).embeddings.create(model=EMBED, input="hi").data) == 1
    with pytest.raises(openai.NotFoundError):  # not on its allow-list: as unknown as a model that does not exist
        oai(server, user["key"]).chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        oai(server, "sk-os-not-a-key").embeddings.create(model=EMBED, input="hi")
    admin = create_key(server, "ops", "--scope", "admin")
    with pytest.raises(openai.PermissionDeniedError):
        oai(server, admin["key"]).embeddings.create(model=EMBED, input="hi")
    assert keys_cli(server, "list", admin_key=user["key"]).returncode == 1  # 403: no admin scope
    assert keys_cli(server, "revoke", user["id"], admin_key=admin["key"]).returncode == 0
    with pytest.raises(openai.AuthenticationError):  # the very next request: the ring dropped the key at once
        oai(server, user["key"]).embeddings.create(model=EMBED, input="hi")
    listed = keys_cli(server, "list", "--json", admin_key=admin["key"])
    assert {k["id"]: bool(k["revoked_at"]) for k in json.loads(listed.stdout)} == {user["id"]: True,
                                                                                   admin["id"]: False}
    ADMIN["key"] = admin["key"]


def test_n_per_minute_gives_exactly_n_of_3n_concurrent_and_the_client_retries_after_waiting(server):
    limited = create_key(server, "limited", "--rpm", "5", admin_key=ADMIN["key"])
    client = oai(server, limited["key"])
    with ThreadPoolExecutor(15) as pool:
        results = list(pool.map(lambda _: one_of(client), range(15)))
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(refused) == 10 and len(results) - len(refused) == 5
    assert all(r.body["code"] == "rate_limit_exceeded" and int(r.response.headers["retry-after"]) >= 1
               for r in refused)
    bursty = create_key(server, "bursty", "--rpm", "20", admin_key=ADMIN["key"])  # a burst of 20, one more every 3 s
    client = oai(server, bursty["key"])
    refusal: list = []  # (when the refused request was sent, the refusal)

    def refused() -> bool:
        sent = time.monotonic()
        result = one_of(client)
        refusal[:] = [(sent, result)] if isinstance(result, openai.RateLimitError) else []
        return bool(refusal)

    wait_for(refused, 60, "the burst of 20 is used up")
    sent, error = refusal[0]
    wait_s = int(error.response.headers["retry-after-ms"]) / 1000
    assert 0 < wait_s <= 3
    assert len(oai(server, bursty["key"], retries=3).embeddings.create(model=EMBED, input="hi").data) == 1
    # No token before the time retry-after-ms gave: the client's answer came after it (retried, or sent late).
    assert time.monotonic() >= sent + wait_s


def one_of(client):
    """An embedding, or the RateLimitError that refused it."""
    try:
        return client.embeddings.create(model=EMBED, input="hi")
    except openai.RateLimitError as e:
        return e


def test_request_ids_reach_the_model_replica_and_logs_are_json(server):
    key = create_key(server, "tracer", admin_key=ADMIN["key"])["key"]
    r = httpx.post(server.base_url + "/v1/embeddings", json={"model": EMBED, "input": "trace me"},
                   headers={"authorization": f"Bearer {key}", "x-request-id": "e2e-trace-42"}, timeout=60)
    assert r.headers["x-request-id"] == "e2e-trace-42"
    line = wait_for(lambda: next((ln for ln in server.lines if "e2e-trace-42" in ln and "serving.access" in ln),
                                 None), 30, "the access-log line")
    logged = json.loads(line[line.index("{"):])
    assert (logged["request_id"], logged["path"], logged["status"], logged["model"]) == (
        "e2e-trace-42", "/v1/embeddings", 200, EMBED)
    assert logged["key_id"].startswith("key_")
    wait_for(lambda: any("e2e-trace-42" in ln and "ServeReplica:model:fake-embed" in ln for ln in server.lines), 30,
             "the request id on the model replica's own log line (Serve's, relayed by Ray to the console)")


def test_no_key_material_in_any_log_or_in_metrics(server):
    assert len(SECRETS) > 1, "the key tests did not run"
    metrics = httpx.get(server.base_url + "/metrics", timeout=30).text
    logs = glob.glob(os.path.join(server.data_dir, "ray", "session_latest", "logs", "**", "*"), recursive=True)
    texts = [server.log(), metrics] + [open(p, errors="replace").read() for p in logs if os.path.isfile(p)]
    for secret in SECRETS:
        assert not [i for i, text in enumerate(texts) if secret in text or secret[7:27] in text]
