import pytest

from serving.config import ConfigError, load_config, parse_config

MINIMAL = {"models": [{"name": "m", "task": "embedding", "source": "fake:"}]}


def test_embedded_default_loads_and_names_the_four_modalities():
    cfg = load_config()
    assert {m.task for m in cfg.models} == {"chat", "embedding", "image", "speech"}
    assert cfg.server.port == 8000 and cfg.server.host == "127.0.0.1"
    names = {m.name for m in cfg.models}
    assert {"smollm2-135m-instruct", "all-minilm-l6-v2", "tiny-random-sd", "piper-joe-medium"} == names


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError) as e:
        parse_config({"models": [{**MINIMAL["models"][0], "batchin": {}}]})
    assert "models.0.batchin: unknown key" in str(e.value)


def test_bad_values_are_listed():
    data = {"server": {"port": 0}, "models": [{"name": "m", "task": "video", "source": "fake:"}]}
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert "server.port" in str(e.value) and "models.0.task" in str(e.value)


def test_duplicate_names_rejected():
    with pytest.raises(ConfigError, match="repeated: m"):
        parse_config({"models": MINIMAL["models"] * 2})


def test_defaults_and_deployment_name():
    cfg = parse_config({"models": [{"name": "org/model", "task": "chat", "source": "fake:"}]})
    m = cfg.models[0]
    assert m.batching.max_batch_size == 8 and m.resources.num_gpus == 0
    assert "/" not in m.deployment_name


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_registry_defaults_and_settings():
    cfg = parse_config({"server": {"data_dir": "/srv/os", "admin_api_keys": ["k"]}})
    assert cfg.models == []  # a server may start with the registry alone
    assert cfg.server.resolved_registry_url == "sqlite:////srv/os/registry.db"
    assert cfg.server.admin_api_keys == ["k"]
    url = "postgresql+psycopg://u:p@db/openserve"
    assert parse_config({"server": {"registry_url": url}}).server.resolved_registry_url == url


def test_aliases_autoscaling_and_revision():
    m = parse_config({"models": [{**MINIMAL["models"][0], "aliases": ["a", "b"], "revision": "main",
                                  "autoscaling": {"min_replicas": 0, "max_replicas": 4}}]}).models[0]
    assert m.aliases == ["a", "b"] and m.autoscaling.max_replicas == 4 and m.revision == "main"
    assert "aliases" not in m.deployment_spec() and "description" not in m.deployment_spec()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"aliases": ["m"]}, "must differ from its name"),
        ({"aliases": ["x", "x"]}, "must be unique"),
        ({"aliases": ["bad name"]}, "aliases use letters"),
        ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas must not exceed"),
    ],
)
def test_bad_aliases_and_autoscaling(changes, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"models": [{**MINIMAL["models"][0], **changes}]})


def test_an_alias_may_not_repeat_another_models_name():
    other = {"name": "n", "task": "chat", "source": "fake:", "aliases": ["m"]}
    with pytest.raises(ConfigError, match="repeated: m"):
        parse_config({"models": [MINIMAL["models"][0], other]})


def test_deployment_names_are_one_to_one():
    names = ["a/b", "a--b", "a-b"]
    built = {parse_config({"models": [{"name": n, "task": "chat", "source": "fake:"}]}).models[0].deployment_name
             for n in names}
    assert len(built) == 3 and all("/" not in b for b in built)


def test_colocated_models_share_their_groups_application():
    models = parse_config({"models": [
        {**MINIMAL["models"][0], "colocate": "small"},
        {"name": "v", "task": "speech", "source": "fake:", "colocate": "small"},
        {"name": "alone", "task": "speech", "source": "fake:"},
    ]}).models
    assert models[0].deployment_name == models[1].deployment_name == "group:small"
    assert models[2].deployment_name == "model:alone"
    assert models[0].deployment_spec()["colocate"] == "small"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"task": "chat"}, "only embedding, image, speech models"),
        ({"num_replicas": 2}, "one replica"),
        ({"autoscaling": {"min_replicas": 0, "max_replicas": 2}}, "no autoscaling"),
        ({"colocate": "a b"}, "colocate names use"),
    ],
)
def test_bad_colocation(changes, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"models": [{**MINIMAL["models"][0], "colocate": "small", **changes}]})
