"""`openserve models ...` against the in-process admin stack served by uvicorn."""
import json
import sys
import threading
import time
import types

import pytest
import uvicorn

from serving.cli import main
from tests.e2e.server_process import free_port
from tests.registry_fakes import admin_stack


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    stack = admin_stack(str(tmp_path_factory.mktemp("cli") / "registry.db"), admin_api_keys=["adm"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(stack.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
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
    assert out.split()[:10] == ["NAME", "TASK", "STATUS", "SOURCE", "ALIASES", "emb", "embedding", "ready", "fake:", "e"]
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


def test_a_failed_deploy_exits_1_with_the_reason(capsys, url):
    code, out, _ = run(capsys, url, "add", "big", "--task", "chat", "--source", "fake:", "--num-gpus", "2")
    assert code == 1 and "big: failed: one replica needs 2 GPU" in out
