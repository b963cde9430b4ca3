"""`openserve up`: start (or join) Ray, deploy the configured models, serve HTTP until Ctrl-C."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from serving.config import AppConfig, ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="openserve", description="OpenAI-compatible model server on Ray Serve")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the server on a configuration (default: the embedded default models)")
    up.add_argument("--config", help="YAML configuration (default: configs/default.yaml, embedded)")
    up.add_argument("--host", help="listen address (default from config: 127.0.0.1)")
    up.add_argument("--port", type=int, help="listen port (default from config: 8000)")
    up.add_argument("--address", help="join a running Ray cluster (e.g. ray://head:10001 or auto) instead of starting one")
    up.add_argument("--data-dir", help="where caches and Ray's files go (default from config)")
    check = sub.add_parser("check-config", help="validate a configuration and print it")
    check.add_argument("--config")
    return p


def _with_overrides(config: AppConfig, args: argparse.Namespace) -> AppConfig:
    server = {k: v for k, v in {"host": args.host, "port": args.port, "data_dir": args.data_dir}.items() if v}
    return config.model_copy(update={"server": config.server.model_copy(update=server)})


def _say(message: str) -> None:
    print(f"[openserve {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _start_ray(config: AppConfig, address: str | None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if address:
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster; Ray 2.60 enables token auth
    temp_dir = os.path.join(config.server.resolved_data_dir, "ray")
    os.makedirs(temp_dir, exist_ok=True)
    ray.init(
        num_cpus=config.server.ray_num_cpus or os.cpu_count(),
        include_dashboard=False,
        object_store_memory=config.server.ray_object_store_mb * 2**20,
        _temp_dir=temp_dir,
        log_to_driver=True,
    )


def _report_progress(done: threading.Event) -> None:
    """Print each deployment's status when it changes, until the app is up."""
    from ray import serve

    from serving.application import APP_NAME

    last: dict[str, str] = {}
    while not done.wait(2.0):
        try:
            app = serve.status().applications.get(APP_NAME)
        except Exception:
            continue
        for name, dep in (app.deployments.items() if app else []):
            state = str(getattr(dep.status, "value", dep.status))
            if last.get(name) != state:
                last[name] = state
                _say(f"{name}: {state.lower()}")


def up(config: AppConfig, address: str | None) -> int:
    from ray import serve

    from serving.application import APP_NAME, build_application

    started = time.perf_counter()
    _install_signal_handlers()
    _say(f"starting Ray and {len(config.models)} model(s): " + ", ".join(f"{m.name} ({m.task})" for m in config.models))
    _start_ray(config, address)
    _install_signal_handlers()  # again: ray.init installs its own SIGTERM handler, which aborts the process
    try:
        serve.start(http_options={"host": config.server.host, "port": config.server.port})
        done = threading.Event()
        threading.Thread(target=_report_progress, args=(done,), daemon=True).start()
        serve.run(build_application(config), name=APP_NAME, route_prefix="/")
        done.set()
        url = f"http://{config.server.host}:{config.server.port}/v1"
        _say(f"ready in {time.perf_counter() - started:.1f} s: {url}")
        for m in config.models:
            _say(f"  model {m.name:<28} {m.task:<10} {m.source}")
        _say("Ctrl-C to stop")
        _wait_for_signal()
        return 0
    finally:
        _say("shutting down")
        _shutdown()


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
        serve.shutdown()
    finally:
        ray.shutdown()
        _say("stopped")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(config.model_dump_json(indent=2))
        return 0
    try:
        return up(_with_overrides(config, args), args.address)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
