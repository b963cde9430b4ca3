"""`openserve models ...` against the in-process admin stack served by uvicorn."""
import json
import threading
import time
import urllib.request
from contextlib import contextmanager

import pytest

from serving.cli import main
from serving.config import ServerConfig
from serving.deployments.ingress import http_server
from tests.e2e.server_process import free_port
from tests.registry_fakes import admin_stack

START_DEADLINE_S = 30


@contextmanager
def served(app):
    """`app` behind the ingress' own uvicorn settings (serving.deployments.ingress.http_server), on a free port."""
    port = free_port()
    server = http_server(app, "127.0.0.1", port, max_connections=ServerConfig().max_connections)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_DEADLINE_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)  # polling a predicate under a deadline: uvicorn offers no event to wait on
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    stack = admin_stack(str(tmp_path_factory.mktemp("cli") / "registry.db"), admin_api_keys=["adm"])
    with served(stack.app) as base:
        yield base
    stack.store.close()


def run(capsys, url, *argv, key="adm"):
    code = main(["models", *argv, "--url", url] + (["--admin-key", key] if key else []))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_add_waits_until_ready_then_list_and_show(capsys, url):
    code, out, _ = run(capsys, url, "add", "emb", "--task", "embedding", "--source", "fake:", "--alias", "e",
                       "--max-batch-size", "4", "--num-cpus", "0.25", "--option", "dims=8")
    assert code == 0 and out.splitlines()[-1] == "emb: ready"
    code, out, _ = run(capsys, url, "list")
    assert code == 0
    assert out.split()[:12] == ["NAME", "TASK", "STATUS", "REPLICAS", "SOURCE", "ALIASES",
                                "emb", "embedding", "ready", "1/1", "fake:", "e"]
    code, out, _ = run(capsys, url, "show", "emb")
    entry = json.loads(out)
    assert entry["config"]["batching"]["max_batch_size"] == 4 and entry["config"]["options"] == {"dims": 8}
    assert entry["config"]["resources"]["num_cpus"] == 0.25
    assert " via key:" in entry["created_by"]  # who, and a fingerprint of the key (never the key)


def test_update_undeploy_deploy_rm(capsys, url):
    run(capsys, url, "add", "m", "--task", "chat", "--source", "fake:", "--no-deploy")
    assert run(capsys, url, "deploy", "m")[1].splitlines()[-1] == "m: ready"
    assert run(capsys, url, "update", "m", "--description", "hello")[0] == 0
    assert run(capsys, url, "undeploy", "m")[1].splitlines()[-1] == "m: stopped"
    assert run(capsys, url, "rm", "m")[1].strip() == "m: deleted"
    code, _, err = run(capsys, url, "show", "m")
    assert code == 1 and "404: The model `m` is not in the registry." in err


def test_errors_are_reported_with_the_servers_message(capsys, url):
    code, _, err = run(capsys, url, "add", "x", "--task", "chat", "--source", "/no/such/dir")
    assert code == 1 and "400: source: local model path `/no/such/dir` does not exist" in err
    code, _, err = run(capsys, url, "list", key="wrong")
    assert code == 1 and "401: Incorrect admin key provided." in err


def test_a_model_no_node_can_hold_is_refused_with_the_reason(capsys, url):
    code, _, err = run(capsys, url, "add", "big", "--task", "chat", "--source", "fake:", "--num-gpus", "2")
    assert code == 1 and "400: resources: one replica asks 2 GPU and 0.25 CPU, but no Ray node has that much" in err


def test_autoscaling_and_custom_resource_flags(capsys, url):
    code, out, _ = run(capsys, url, "add", "auto", "--task", "embedding", "--source", "fake:", "--num-cpus", "0.1",
                       "--min-replicas", "0", "--max-replicas", "3", "--downscale-delay-s", "5")
    assert code == 0 and out.splitlines()[-1] == "auto: ready"
    assert run(capsys, url, "update", "auto", "--target-ongoing-requests", "1", "--cold-start-timeout-s", "30")[0] == 0
    scaling = json.loads(run(capsys, url, "show", "auto")[1])["config"]["autoscaling"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["downscale_delay_s"]) == (0, 3, 5)
    assert (scaling["target_ongoing_requests"], scaling["cold_start_timeout_s"]) == (1, 30)
    row = [line.split() for line in run(capsys, url, "list")[1].splitlines() if line.startswith("auto ")][0]
    assert row[3:5] == ["0/0", "(0-3)"]
    code, _, err = run(capsys, url, "add", "sp", "--task", "embedding", "--source", "fake:", "--resource", "special=1")
    assert code == 1 and "lower resources.custom.special" in err
    with pytest.raises(SystemExit):
        main(["models", "add", "x", "--resource", "special"])


def test_health_asks_health_or_ready(capsys, url):
    assert main(["health", "--url", url]) == 0
    assert main(["health", "--url", url, "--ready"]) == 0  # every deployed model is routed
    assert main(["health", "--url", "http://127.0.0.1:9"]) == 1
    assert "not answering" in capsys.readouterr().err


def test_the_ingress_server_ignores_proxy_headers(tmp_path):
    """X-Forwarded-For must not change who the client is: loopback trust would follow it."""
    stack = admin_stack(str(tmp_path / "registry.db"))
    with served(stack.app) as base:
        request = urllib.request.Request(base + "/admin/models",
                                         headers={"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200  # still the loopback client it is (with proxy headers on: 403)
    stack.store.close()


def test_deploy_and_undeploy_without_a_body_pass_the_json_rule_in_loopback_mode(capsys, tmp_path):
    """The CLI sends Content-Type: application/json on every request, a body or not."""
    stack = admin_stack(str(tmp_path / "registry.db"))
    with served(stack.app) as base:
        assert run(capsys, base, "add", "m", "--task", "chat", "--source", "fake:", "--no-deploy", key=None)[0] == 0
        assert run(capsys, base, "deploy", "m", key=None)[1].splitlines()[-1] == "m: ready"
        assert run(capsys, base, "undeploy", "m", key=None)[1].splitlines()[-1] == "m: stopped"
        assert run(capsys, base, "rm", "m", key=None)[1].strip() == "m: deleted"
    stack.store.close()
