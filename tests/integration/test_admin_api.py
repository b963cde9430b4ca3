"""/admin/models in-process: the real admin app, registry (SQLite file), routes and controller; Serve is faked."""
import httpx
import openai
import pytest

from tests.api_fakes import openai_httpx
from tests.registry_fakes import admin_stack

CHAT = {"name": "org/tiny-chat", "task": "chat", "source": "fake:", "aliases": ["tiny"]}


def client_for(app, host: str = "127.0.0.1", base_url: str = "http://127.0.0.1:8000", **headers) -> httpx.AsyncClient:
    """A client at address `host`; every request says Content-Type: application/json, as the admin API requires of
    writes."""
    transport = httpx.ASGITransport(app=app, client=(host, 50000))
    return httpx.AsyncClient(transport=transport, base_url=base_url,
                             headers={"content-type": "application/json", **headers})


@pytest.fixture
async def stack(tmp_path):
    s = admin_stack(str(tmp_path / "registry.db"))
    yield s
    await s.controller.wait_idle()
    s.store.close()


@pytest.fixture
async def http(stack):
    async with client_for(stack.app, **{"x-openserve-user": "alice"}) as c:
        yield c


async def ready(stack, http, name: str) -> dict:
    await stack.controller.wait_idle()
    r = await http.get(f"/admin/models/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def assert_error(r, status: int, param=None, code=None):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param:
        assert error["param"] == param
    if code:
        assert error["code"] == code


async def test_register_then_chat_through_the_openai_client_by_name_and_alias(stack, http):
    r = await http.post("/admin/models", json=CHAT)
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["created_by"]) == ("deploying", "alice via loopback")
    entry = await ready(stack, http, CHAT["name"])
    assert (entry["status"], entry["deployed"], entry["config"]["aliases"]) == ("ready", True, ["tiny"])
    oai_http = openai_httpx.AsyncClient(transport=openai_httpx.ASGITransport(app=stack.app), base_url="http://test")
    oai = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=oai_http, max_retries=0)
    assert [m.id async for m in oai.models.list()] == [CHAT["name"]]
    for model in (CHAT["name"], "tiny"):
        reply = await oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi there"}],
                                                  temperature=0)
        assert reply.choices[0].message.content == "hi there"  # the fake engine answers with the user's message


async def test_the_engine_route_reports_a_chat_models_path_after_its_first_request(stack, http):
    await http.post("/admin/models", json=CHAT)
    await ready(stack, http, CHAT["name"])
    r = await http.get(f"/admin/models/{CHAT['name']}/engine")
    assert r.status_code == 200 and r.json() == {"model": CHAT["name"], "stats": None}  # no report yet
    chat = {"model": CHAT["name"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
    stats = (await http.get(f"/admin/models/{CHAT['name']}/engine")).json()["stats"]
    assert (stats["batched"], stats["device"], stats["cuda_graphs_on"], stats["cuda_graphs"]) == (True, "cpu", False, 0)
    assert stats["generated_tokens"] >= 1
    assert_error(await http.get("/admin/models/nope/engine"), 404)
    await http.post("/admin/models", json={"name": "emb", "task": "embedding", "source": "fake:"})
    await ready(stack, http, "emb")
    assert_error(await http.get("/admin/models/emb/engine"), 400, param="model")


async def test_register_only_then_deploy(stack, http):
    r = await http.post("/admin/models", json={**CHAT, "deploy": False})
    assert r.json()["status"] == "registered"
    assert (await http.get("/v1/models")).json()["data"] == []
    r = await http.post(f"/admin/models/{CHAT['name']}/deploy")
    assert (r.status_code, r.json()["status"]) == (202, "deploying")
    assert (await ready(stack, http, CHAT["name"]))["status"] == "ready"


@pytest.mark.parametrize(
    "body, param",
    [
        ({**CHAT, "batchin": {}}, "batchin"),
        ({**CHAT, "task": "video"}, "task"),
        ({**CHAT, "resources": {"num_gpus": -1}}, "resources.num_gpus"),
        ({**CHAT, "source": "/no/such/dir"}, "source"),
        ({**CHAT, "aliases": [CHAT["name"]]}, None),
        ({"name": "x"}, "task"),
    ],
)
async def test_invalid_registrations_are_400_and_store_nothing(stack, http, body, param):
    assert_error(await http.post("/admin/models", json=body), 400, param=param)
    assert (await http.get("/admin/models")).json()["data"] == []


@pytest.mark.parametrize("field", ['"description": "\\ud800"', '"options": {"k\\udc00": 1}', '"source": "fake:\\ud800"'])
async def test_text_that_is_not_unicode_is_400_on_create_and_update(stack, http, field):
    """JSON escapes can carry lone surrogates, which the database cannot store (they were a 500)."""
    raw = lambda text: http.request(method, url, content=text.encode(), headers={"content-type": "application/json"})
    method, url = "POST", "/admin/models"
    assert_error(await raw('{"name": "u", "task": "embedding", "source": "fake:", %s}' % field), 400)
    assert (await http.post("/admin/models", json={"name": "u", "task": "embedding", "source": "fake:"})).status_code == 201
    method, url = "PATCH", "/admin/models/u"
    assert_error(await raw("{%s}" % field), 400)
    assert (await http.get("/admin/models/u")).json()["config"]["description"] is None


async def test_a_description_is_bounded(stack, http):
    assert_error(await http.post("/admin/models", json={**CHAT, "description": "x" * 5000}), 400, param="description")


async def test_taken_name_or_alias_is_409(stack, http):
    await http.post("/admin/models", json=CHAT)
    assert_error(await http.post("/admin/models", json={**CHAT, "aliases": []}), 409, code="model_exists")
    r = await http.post("/admin/models", json={"name": "tiny", "task": "embedding", "source": "fake:"})
    assert_error(r, 409, code="model_exists")
    assert "alias of `org/tiny-chat`" in r.json()["error"]["message"]


async def test_unknown_model_is_404_everywhere(http):
    for method, path in [("GET", "nope"), ("PATCH", "nope"), ("DELETE", "a/b"), ("POST", "nope/deploy"),
                         ("POST", "nope/undeploy")]:
        r = await http.request(method, f"/admin/models/{path}", json={} if method == "PATCH" else None)
        assert_error(r, 404, code="model_not_found")


async def test_update_batching_redeploys_and_alias_only_does_not(stack, http):
    await http.post("/admin/models", json={"name": "emb", "task": "embedding", "source": "fake:"})
    await ready(stack, http, "emb")
    r = await http.patch("/admin/models/emb", json={"batching": {"max_batch_size": 4}})
    assert (r.status_code, r.json()["status"], r.json()["version"]) == (200, "updating", 2), r.text
    assert r.json()["config"]["batching"] == {"max_batch_size": 4, "batch_wait_timeout_s": 0.01}
    assert (await http.get("/v1/models")).json()["data"][0]["id"] == "emb"  # still served while it rolls
    assert (await ready(stack, http, "emb"))["status"] == "ready"
    await http.patch("/admin/models/emb", json={"aliases": ["e"], "description": "x"})
    await ready(stack, http, "emb")
    assert stack.ops.runs == [("emb", 8), ("emb", 4)]


async def test_invalid_update_is_400_naming_the_field(stack, http):
    await http.post("/admin/models", json=CHAT)
    r = await http.patch(f"/admin/models/{CHAT['name']}", json={"batching": {"max_batch_size": 0}})
    assert_error(r, 400, param="batching.max_batch_size")
    assert_error(await http.patch(f"/admin/models/{CHAT['name']}", json={"task": "image"}), 400, param="task")


async def test_undeploy_stops_routing_at_once_then_delete(stack, http):
    await http.post("/admin/models", json=CHAT)
    await ready(stack, http, CHAT["name"])
    r = await http.post(f"/admin/models/{CHAT['name']}/undeploy")
    assert (r.status_code, r.json()["status"]) == (202, "stopping")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    assert_error(await http.post("/v1/chat/completions", json=body), 404, code="model_not_found")
    assert (await ready(stack, http, CHAT["name"]))["status"] == "stopped"
    r = await http.delete(f"/admin/models/{CHAT['name']}")
    assert r.json() == {"id": CHAT["name"], "object": "model", "deleted": True}
    assert_error(await http.get(f"/admin/models/{CHAT['name']}"), 404)
    await stack.controller.wait_idle()
    assert stack.ops.running == {}


async def test_without_admin_keys_only_loopback_clients_get_in(stack):
    async with client_for(stack.app, host="10.1.2.3") as remote:
        for path in ("/admin/models", "/admin/openapi.json", "/admin/docs"):
            assert_error(await remote.get(path), 403, code="admin_loopback_only")
    async with client_for(stack.app, host="::1", base_url="http://[::1]:8000") as local:
        assert (await local.get("/admin/models")).status_code == 200
        assert (await local.get("/admin/docs")).status_code == 200


async def test_admin_keys_are_required_and_api_keys_do_not_count(tmp_path):
    stack = admin_stack(str(tmp_path / "r.db"), admin_api_keys=["adm-1"], api_keys=["user-1"])
    async with client_for(stack.app, host="10.1.2.3") as c:
        assert_error(await c.get("/admin/models"), 401, code="invalid_api_key")
        assert_error(await c.get("/admin/models", headers={"Authorization": "Bearer user-1"}), 401)
        r = await c.post("/admin/models", json={**CHAT, "deploy": False},
                         headers={"Authorization": "Bearer adm-1", "X-Openserve-User": "bob"})
        assert r.status_code == 201 and r.json()["created_by"].startswith("bob via key:")
        assert_error(await c.get("/v1/models", headers={"Authorization": "Bearer adm-1"}), 401)
    stack.store.close()


async def test_openapi_documents_every_admin_route(http):
    paths = (await http.get("/admin/openapi.json")).json()["paths"]
    assert set(paths) == {"/admin/models", "/admin/models/{name}", "/admin/models/{name}/deploy",
                          "/admin/models/{name}/undeploy", "/admin/upstreams", "/admin/upstreams/{name}",
                          "/admin/models/{name}/engine"}
    assert set(paths["/admin/models/{name}"]) == {"get", "patch", "delete"}


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8000", "127.0.0.1", "127.0.0.1:1", "[::1]", "[::1]:8000"])
async def test_a_loopback_host_header_is_accepted(stack, host):
    async with client_for(stack.app) as c:
        assert (await c.get("/admin/models", headers={"host": host})).status_code == 200


@pytest.mark.parametrize("host", ["evil.example:8000", "localhost.evil.example", "10.0.0.5:8000", "0.0.0.0:8000", ""])
async def test_without_admin_keys_a_host_header_that_is_not_loopback_is_refused(stack, host):
    """DNS rebinding: a page's own name, re-pointed at 127.0.0.1, reaches us as a same-origin request."""
    async with client_for(stack.app) as c:
        for path in ("/admin/models", "/admin/openapi.json", "/admin/docs"):
            r = await c.get(path, headers={"host": host})
            assert_error(r, 403, code="admin_host_not_loopback")
            assert "Host header" in r.json()["error"]["message"]


@pytest.mark.parametrize("headers", [
    {"origin": "https://evil.example"}, {"origin": "null"}, {"origin": "http://[::1"},
    {"origin": "file://"}, {"sec-fetch-site": "cross-site"},
])
async def test_without_admin_keys_a_cross_site_request_is_refused(stack, http, headers):
    await http.post("/admin/models", json={**CHAT, "deploy": False})
    for method, path in [("GET", "/admin/models"), ("POST", f"/admin/models/{CHAT['name']}/deploy"),
                         ("DELETE", f"/admin/models/{CHAT['name']}")]:
        r = await http.request(method, path, headers=headers)
        assert_error(r, 403, code="admin_cross_site")
        assert "cross-site" in r.json()["error"]["message"]
    assert (await http.get(f"/admin/models/{CHAT['name']}")).json()["status"] == "registered"  # nothing happened


async def test_a_same_machine_origin_is_accepted(http):
    for headers in ({"origin": "http://localhost:3000"}, {"origin": "http://127.0.0.1:8000"},
                    {"sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"}):
        assert (await http.get("/admin/models", headers=headers)).status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
async def test_every_write_needs_a_json_content_type(stack, content_type, tmp_path):
    """What a page may send cross-origin without a preflight (a "simple request") is refused, with keys or not."""
    keyed = admin_stack(str(tmp_path / "keyed.db"), admin_api_keys=["adm"])
    headers = {"content-type": content_type} if content_type else {}
    for app, auth in ((stack.app, {}), (keyed.app, {"authorization": "Bearer adm"})):
        async with client_for(app) as c:
            await c.post("/admin/models", json={**CHAT, "deploy": False}, headers=auth)
            for method, path, body in [("POST", "/admin/models", b'{"name": "x", "task": "chat", "source": "fake:"}'),
                                       ("POST", f"/admin/models/{CHAT['name']}/deploy", b""),
                                       ("PATCH", f"/admin/models/{CHAT['name']}", b'{"description": "x"}'),
                                       ("DELETE", f"/admin/models/{CHAT['name']}", b"")]:
                request = c.build_request(method, path, content=body, headers=auth)
                if content_type is None:
                    del request.headers["content-type"]
                else:
                    request.headers["content-type"] = content_type
                r = await c.send(request)
                assert_error(r, 403, code="admin_json_required")
                assert "Content-Type: application/json" in r.json()["error"]["message"]
            entry = (await c.get(f"/admin/models/{CHAT['name']}", headers=auth)).json()
            assert (entry["status"], entry["config"]["description"]) == ("registered", None)
    keyed.store.close()


async def test_json_with_a_charset_is_json(stack, http):
    r = await http.post("/admin/models", content=b'{"name": "e", "task": "embedding", "source": "fake:"}',
                        headers={"content-type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 201, r.text
    r = await http.post("/admin/models/e/undeploy", headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text


async def test_with_admin_keys_the_host_and_origin_do_not_matter(tmp_path):
    """A key is not sent by a browser on its own, so a page cannot forge a keyed request."""
    stack = admin_stack(str(tmp_path / "r.db"), admin_api_keys=["adm"])
    async with client_for(stack.app, host="10.1.2.3", base_url="http://gpu-box.example:8000",
                          authorization="Bearer adm", origin="https://dashboard.example") as c:
        assert (await c.get("/admin/models")).status_code == 200
        assert (await c.get("/admin/openapi.json")).status_code == 200
    async with client_for(stack.app, host="10.1.2.3") as c:
        assert_error(await c.get("/admin/openapi.json"), 401, code="invalid_api_key")
    stack.store.close()
