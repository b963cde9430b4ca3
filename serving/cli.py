"""`openserve up`: open the registry (seeding it from the YAML on first start), start (or join) Ray, serve HTTP and
deploy every model marked deployed, until Ctrl-C. Also `openserve models ...` (serving/admin/cli.py) and
`openserve serve-config` (the same as a Ray Serve config file or KubeRay manifest). The benchmarks have their own
entry point (`openserve-bench`, `python -m benchmarks`): the product never imports them."""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import sys
import time

from serving.config import DEFAULT_CONFIG, AppConfig, ConfigError, ServerConfig, load_config
from serving.imports import import_on_thread


def _parser() -> argparse.ArgumentParser:
    from serving.admin import cli as admin_cli
    from serving.admin import keys_cli

    p = argparse.ArgumentParser(prog="openserve", description="OpenAI-compatible model server on Ray Serve")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the server on a configuration (default: the embedded default models)")
    up.add_argument("--config", help="YAML configuration (default: configs/default.yaml, embedded)")
    up.add_argument("--host", help="listen address (default from config: 127.0.0.1)")
    up.add_argument("--port", type=int, help="listen port (default from config: 8000)")
    up.add_argument("--address", help="join a running Ray cluster (e.g. auto, or head-ip:6379) instead of starting one")
    up.add_argument("--data-dir", help="where caches, the registry and Ray's files go (default from config)")
    up.add_argument("--registry-url", help="SQLAlchemy URL of the registry (default: sqlite in the data dir)")
    up.add_argument(
        "--apply-config", action="store_true",
        help="write the configuration's models into the registry (over same-named entries) and deploy them; "
        "without it they only seed an empty registry",
    )
    up.add_argument("--log-format", choices=["text", "json"], help="the server's own log lines (default: text)")
    up.add_argument(
        "--allow-unauthenticated", action="store_true",
        help="serve on a non-loopback address with no API key: anyone who reaches the port may use every model",
    )
    check = sub.add_parser("check-config", help="validate a configuration and print it (keys as their hashes)")
    check.add_argument("--config")
    check.add_argument("--sources", action="store_true", help="also check that every model's source resolves")
    health = sub.add_parser("health", help="exit 0 when a running server answers (e.g. a container HEALTHCHECK)")
    health.add_argument("--url", default=os.environ.get("OPENSERVE_URL", "http://127.0.0.1:8000"))
    health.add_argument("--ready", action="store_true",
                        help="ask /ready instead of /health: every model marked deployed is served")
    _serve_config_parser(sub)
    admin_cli.add_parser(sub)
    keys_cli.add_parser(sub)
    return p


def _serve_config_parser(sub) -> None:
    p = sub.add_parser(
        "serve-config", help="write the running configuration as a Ray Serve config file (serve deploy) or a "
        "KubeRay RayService manifest",
    )
    p.add_argument("--config", help="YAML configuration (default: configs/default.yaml, embedded)")
    p.add_argument("--host", help="listen address of the ingress (default from config)")
    p.add_argument("--port", type=int, help="listen port of the ingress (default from config)")
    p.add_argument("--data-dir", help="the data dir whose registry says which models run (default from config)")
    p.add_argument("--registry-url", help="SQLAlchemy URL of the registry (default: sqlite in the data dir)")
    p.add_argument("--from-config", action="store_true",
                   help="the configuration file's models, not the registry's deployed ones")
    p.add_argument("--format", choices=["serve", "kuberay"], default="serve")
    p.add_argument("--output", "-o", help="file to write (default: standard output)")
    p.add_argument("--image", default="openserve:gpu", help="kuberay: the container image (Dockerfile.gpu)")
    p.add_argument("--name", default="openserve", help="kuberay: the RayService name")
    p.add_argument("--gpu-workers", type=int, default=2, help="kuberay: at most this many one-GPU worker pods")


def _with_overrides(config: AppConfig, args: argparse.Namespace) -> AppConfig:
    values = {"host": args.host, "port": args.port, "data_dir": args.data_dir, "registry_url": args.registry_url,
              "log_format": getattr(args, "log_format", None)}
    server = {k: v for k, v in values.items() if v}
    return config.model_copy(update={"server": config.server.model_copy(update=server)})


_JSON_LINES = False  # --log-format json: the CLI's own lines are JSON objects too


def _say(message: str, level: str = "INFO") -> None:
    if _JSON_LINES:
        now = time.gmtime()
        print(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", now), "level": level,
                          "logger": "openserve", "message": message}), flush=True)
    else:
        print(f"[openserve {time.strftime('%H:%M:%S')}] {message}", flush=True)


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses; any other name or address (0.0.0.0 included) is reachable from
    elsewhere, or may be."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_problem(server: ServerConfig, registry_has_inference_key: bool, allowed: bool) -> str | None:
    """Why `up` must not start: a non-loopback address with no inference key anywhere and no
    --allow-unauthenticated. None when it may."""
    if is_loopback_host(server.host) or server.api_keys or registry_has_inference_key or allowed:
        return None
    return (f"refusing to serve on {server.host}: no API key is set, so anyone who can reach this address could use "
            "every model. Set server.api_keys (or create a key with `openserve keys create` on a loopback start), "
            "or pass --allow-unauthenticated to serve it open on purpose.")


def _check_exposure(config: AppConfig, store, args: argparse.Namespace) -> str | None:
    """The refusal (see exposure_problem), or None after warning loudly when the server is open on purpose."""
    from serving.keys.store import KeyStore

    has_key = any(k.allows("inference") for k in KeyStore(store.engine).list())  # revoked too: auth stays on
    problem = exposure_problem(config.server, has_key, args.allow_unauthenticated)
    if problem:
        return problem
    if not (is_loopback_host(config.server.host) or config.server.api_keys or has_key):
        for line in ("*" * 78, f"WARNING: serving on {config.server.host} with NO API KEY "
                     "(--allow-unauthenticated):", "anyone who can reach this address can use every model.",
                     "*" * 78):
            _say(line, level="WARNING")
    return None


def redacted(config: AppConfig) -> dict:
    """The configuration with every API key replaced by its stored form (sha256:<hex>), for printing."""
    from serving.keys.records import stored_form

    data = config.model_dump(mode="json")
    for field in ("api_keys", "admin_api_keys"):
        data["server"][field] = [stored_form(k) for k in data["server"][field]]
    return data


def serve_config_command(config: AppConfig, args: argparse.Namespace) -> int:
    """Write the Serve config (or RayService) for the registry's deployed models, or the file's (--from-config)."""
    from serving.registry.startup import running_models
    from serving.serve_config import dump, rayservice, serve_config

    models = config.models if args.from_config else running_models(config)
    document = serve_config(config.server, models)
    if args.format == "kuberay":
        document = rayservice(document, args.name, args.image, args.gpu_workers)
    text = dump(document)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}: {len(models)} model(s) ({', '.join(m.name for m in models)})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _check_sources(config: AppConfig) -> int:
    from serving.registry.checks import source_problem

    problems = [(m.name, source_problem(m)) for m in config.models]
    for name, problem in problems:
        if problem:
            print(f"model {name}: {problem}", file=sys.stderr)
    return 1 if any(problem for _, problem in problems) else 0


def health(url: str, ready: bool) -> int:
    """0 when the server answers /health (with `ready`: /ready, every deployed model routed); 1 with the reason."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + ("/ready" if ready else "/health"), timeout=5):
            return 0
    except urllib.error.HTTPError as e:
        print(f"not ready: {e.code} {e.read()[:500].decode(errors='replace')}", file=sys.stderr)
    except OSError as e:
        print(f"not answering: {e}", file=sys.stderr)
    return 1


def _ray_environment(config: AppConfig, address: str | None) -> None:
    """Ray's settings that travel by environment; set before Ray is imported (it reads some of them then)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        return  # the joined cluster's own settings (its authentication included) apply
    _lock_down_local_ray(config.server.resolved_data_dir)
    # Serve's controller loop every 0.5 s, not 0.1: a third less idle CPU (docs/benchmarks.md).
    os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.5")


def _start_ray(config: AppConfig, address: str | None) -> None:
    """Join the cluster at `address`, or start a local one locked down (see _lock_down_local_ray)."""
    import ray

    if address:
        # Ray's own way in: a cluster with token auth takes the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
        # ~/.ray/auth_token (`ray get-auth-token`); RAY_AUTH_MODE is left as the operator set it.
        ray.init(address=address, log_to_driver=True)
        return
    from serving.deployments.loopback import LOOPBACK

    temp_dir = os.path.join(config.server.resolved_data_dir, "ray")
    os.makedirs(temp_dir, mode=0o700, exist_ok=True)  # Ray's sockets and logs: this user's only
    ray.init(
        num_cpus=config.server.ray_num_cpus or os.cpu_count(),
        num_gpus=config.server.ray_num_gpus,  # None: the GPUs Ray detects
        include_dashboard=False,
        object_store_memory=config.server.ray_object_store_mb * 2**20,
        _temp_dir=temp_dir,
        _node_ip_address=LOOPBACK,
        runtime_env={"worker_process_setup_hook": "serving.deployments.loopback.serve_replicas_on_loopback"},
        log_to_driver=True,
        # Ray starts one idle worker per CPU for the first driver; every process here is an actor with a worker of
        # its own (Serve's controller, replicas, the metrics hub), so those idle ones only held memory.
        _system_config={"prestart_worker_first_driver": False},
    )


def _head_ip() -> str | None:
    """The address of the cluster's head node (None if Ray does not say)."""
    import ray

    heads = [n for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})]
    return heads[0]["NodeManagerAddress"] if heads else None


RAY_TOKEN_FILE = "ray_auth_token"


def _lock_down_local_ray(data_dir: str) -> None:
    """Whoever reaches Ray can run code on the machine: the local cluster requires Ray's token (a fresh one per
    start, in a 0600 file of the data dir; Ray's processes inherit its path) and listens on 127.0.0.1 only."""
    import secrets

    from serving.secrets import write_private

    token_path = os.path.join(data_dir, RAY_TOKEN_FILE)
    write_private(token_path, secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = token_path
    # Ray turns a node address of 127.0.0.1 into the machine's outward address unless it runs a one-machine
    # cluster, which it assumes on Windows and macOS only; this variable says so on Linux.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def up(config: AppConfig, args: argparse.Namespace) -> int:
    from serving.registry import startup
    from serving.secrets import remove_secrets, write_secrets

    global _JSON_LINES
    _JSON_LINES = config.server.log_format == "json"
    started = time.perf_counter()
    _install_signal_handlers()
    store = startup.open_registry(config, args.config or DEFAULT_CONFIG, args.apply_config, _say)
    problem = _check_exposure(config, store, args)
    if problem:
        store.close()
        print(f"openserve up: {problem}", file=sys.stderr)
        return 2
    _ray_environment(config, args.address)  # before Ray is imported: it reads some of these then
    import ray  # only now: refusing to start must not wait for Ray's import

    # ray.init spends its ~4 s waiting on the processes it starts: Serve's and the application's imports (~2 CPU-s)
    # run meanwhile.
    preload = import_on_thread("ray.serve", "serving.application", name="openserve-imports")
    _start_ray(config, args.address)
    preload.join()
    from ray import serve

    from serving.application import APP_NAME, build_application, for_replicas, placement_here

    _install_signal_handlers()  # again: ray.init installs its own SIGTERM handler, which aborts the process
    try:
        serve.start(proxy_location="Disabled")  # the ingress replica serves HTTP itself (deployments/ingress.py)
        settings, secrets_path = write_secrets(for_replicas(config.server))
        app = build_application(settings, secrets_path, placement_here(ray.util.get_node_ip_address(), _head_ip()))
        ingress = serve.run(app, name=APP_NAME, route_prefix=None)
        if not ingress.ready.remote().result():
            raise RuntimeError(f"the HTTP server did not start on {config.server.host}:{config.server.port}")
        entries = startup.wait_for_models(store, config.server, _say)
        failed = [e.name for e in entries if e.status == "failed"]
        url = f"http://{config.server.host}:{config.server.port}/v1"
        _say(f"ready in {time.perf_counter() - started:.1f} s: {url}" + (f" ({len(failed)} failed)" if failed else ""))
        for e in entries:
            _say(f"  model {e.name:<28} {e.spec.task:<10} {e.status:<8} {e.spec.source}")
        _say("Ctrl-C to stop")
        _wait_for_signal()
        return 0
    finally:
        _say("shutting down")
        store.close()
        try:
            _shutdown()
        finally:
            remove_secrets(config.server)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _install_signal_handlers() -> None:
    """`kill` cleans up like Ctrl-C, even while models load; SIGINT too when a shell started us with it ignored."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def _wait_for_signal() -> None:
    while True:  # until SIGINT / SIGTERM raise KeyboardInterrupt
        time.sleep(3600)


def _shutdown() -> None:
    import ray
    from ray import serve

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    try:
        _kill_metrics_hub()
        serve.shutdown()
    finally:
        ray.shutdown()
        _say("stopped")


def _kill_metrics_hub() -> None:
    """The metrics hub is detached (it outlives an ingress restart); on a shared cluster it must not outlive us."""
    try:
        from serving.metrics.hub import kill_hub

        kill_hub()
    except Exception as e:  # noqa: BLE001 - shutting down anyway; Ray's own shutdown removes it on a local cluster
        _say(f"could not remove the metrics hub: {e!r}", level="WARNING")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.command == "health":
        return health(args.url, args.ready)
    if args.command == "models":
        from serving.admin import cli as admin_cli

        return admin_cli.run(args)
    if args.command == "keys":
        from serving.admin import keys_cli

        return keys_cli.run(args)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(json.dumps(redacted(config), indent=2))
        return _check_sources(config) if args.sources else 0
    if args.command == "serve-config":
        return serve_config_command(_with_overrides(config, args), args)
    try:
        return up(_with_overrides(config, args), args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
