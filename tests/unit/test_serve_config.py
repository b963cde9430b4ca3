"""`openserve serve-config`: the registry's deployed models as a Ray Serve config file and a KubeRay RayService,
both accepted by Ray's own schema (ServeDeploySchema)."""
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.cli import main
from serving.config import ModelConfig
from serving.registry.store import RegistryStore

SCALED = {"name": "org/e", "task": "embedding", "source": "fake:", "aliases": ["e"],
          "resources": {"num_cpus": 0.1, "num_gpus": 0.5, "custom": {"special": 1}},
          "autoscaling": {"min_replicas": 0, "max_replicas": 3, "downscale_delay_s": 5, "cold_start_timeout_s": 20}}


def write_registry(data_dir) -> None:
    store = RegistryStore.open(f"sqlite:///{data_dir}/registry.db")
    store.create(ModelConfig.model_validate(SCALED), deployed=True, actor="t")
    store.create(ModelConfig(name="off", task="chat", source="fake:"), deployed=False, actor="t")
    store.close()


def test_the_registrys_deployed_models_become_a_serve_config_ray_accepts(tmp_path, capsys):
    write_registry(tmp_path)
    out = tmp_path / "serve.yaml"
    assert main(["serve-config", "--data-dir", str(tmp_path), "--port", "9123", "-o", str(out)]) == 0
    assert "1 model(s) (org/e)" in capsys.readouterr().err
    config = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(config)
    apps = {a["name"]: a for a in config["applications"]}
    assert set(apps) == {"openserve", "model:org~e"} and config["proxy_location"] == "Disabled"
    ingress = apps["openserve"]["args"]
    assert ingress["server"]["port"] == 9123 and [m["name"] for m in ingress["models"]] == ["org/e"]
    deployment = apps["model:org~e"]["deployments"][0]
    assert deployment["ray_actor_options"] == {"num_cpus": 0.1, "num_gpus": 0.5, "resources": {"special": 1.0}}
    scaling = deployment["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["downscale_delay_s"]) == (0, 3, 5)
    assert "cold_start_timeout_s" not in scaling  # the ingress' own bound, not a Serve setting
    assert ModelConfig.model_validate(apps["model:org~e"]["args"]["model"]) == ModelConfig.model_validate(SCALED)


def test_without_a_registry_the_configuration_files_models_are_written(tmp_path, capsys):
    assert main(["serve-config", "--data-dir", str(tmp_path / "fresh")]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    names = [a["name"] for a in config["applications"]]
    assert names == ["openserve", "model:smollm2-135m-instruct", "group:cpu-models"]  # the three others share one
    group = config["applications"][2]
    assert group["import_path"] == "serving.serve_apps:group_app" and group["args"]["group"] == "cpu-models"
    members = group["deployments"][0]["user_config"]["members"]
    assert [m["name"] for m in members] == ["all-minilm-l6-v2", "piper-joe-medium", "tiny-random-sd"]
    assert group["deployments"][0]["ray_actor_options"]["num_cpus"] == 0.25  # the largest share, not the sum
    assert not (tmp_path / "fresh").exists()  # looking did not create a registry


def test_a_kuberay_rayservice_embeds_the_same_serve_config(tmp_path, capsys):
    write_registry(tmp_path)
    assert main(["serve-config", "--data-dir", str(tmp_path), "--format", "kuberay", "--image", "reg/os:1"]) == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    cluster = manifest["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "reg/os:1" and {"containerPort": 8000, "name": "openserve"} in head["ports"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"] == {"nvidia.com/gpu": 1}


def test_a_group_application_builds_from_the_file_as_serve_deploy_would(tmp_path):
    """`serve deploy` calls the import path with the file's args; the members arrive later, as user_config."""
    from serving.serve_apps import group_app

    app = group_app({"group": "cpu-models", "data_dir": str(tmp_path)})
    assert app._bound_deployment.name == "group:cpu-models"
    assert app._bound_deployment.init_args == ("cpu-models", str(tmp_path))
