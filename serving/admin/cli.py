"""`openserve models list|show|add|update|deploy|undeploy|rm`: the admin API of a running server, from a shell.

    openserve models add bge-small --task embedding --source BAAI/bge-small-en-v1.5 --num-cpus 1
    openserve models update bge-small --min-replicas 0 --max-replicas 3 --downscale-delay-s 300
    openserve models list --url http://gpu-box:8000 --admin-key "$OPENSERVE_ADMIN_KEY"

Exit status: 0 done, 1 the server refused or the model failed (the reason is printed), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

ACTIONS = ("list", "show", "add", "update", "deploy", "undeploy", "rm")


class AdminError(Exception):
    """The server's error message (an OpenAI error body), or why it could not be reached."""


class AdminClient:
    """JSON over HTTP to /admin/models, or another admin collection (`path`) (stdlib only)."""

    def __init__(self, url: str, admin_key: str | None = None, timeout_s: float = 60, path: str = "/admin/models"):
        self.base = url.rstrip("/") + path
        self.admin_key = admin_key
        self.timeout_s = timeout_s

    def request(self, method: str, path: str = "", body: dict | None = None) -> dict:
        url = self.base + ("/" + urllib.parse.quote(path, safe="/") if path else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("X-Openserve-User", getpass.getuser())
        if self.admin_key:
            req.add_header("Authorization", f"Bearer {self.admin_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            raise AdminError(f"{e.code}: {_error_message(e.read())}") from None
        except OSError as e:
            raise AdminError(f"cannot reach {url}: {e}") from None

    def wait(self, name: str, until: tuple[str, ...], timeout_s: float, say=print) -> dict:
        """Poll the entry until its status is one of `until` (or failed); prints each change."""
        deadline, last = time.monotonic() + timeout_s, None
        while True:
            entry = self.request("GET", name)
            if entry["status"] != last:
                last = entry["status"]
                say(f"{name}: {last}" + (f": {entry['error']}" if entry.get("error") else ""))
            if last in until or last == "failed" or time.monotonic() > deadline:
                return entry
            time.sleep(0.5)


def _error_message(raw: bytes) -> str:
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:500]


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got `{text}`")
    try:
        return key, json.loads(value)  # numbers, booleans, lists; anything else stays a string
    except ValueError:
        return key, value


def _resource(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        if sep and key:
            return key, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT, got `{text}`")


# Autoscaling flags (the `autoscaling` group of the configuration; setting any turns autoscaling on).
AUTOSCALING = (("min_replicas", int, "0: no replica while idle"), ("max_replicas", int, None),
               ("target_ongoing_requests", float, "in-flight requests per replica to aim for"),
               ("upscale_delay_s", float, None), ("downscale_delay_s", float, None),
               ("cold_start_timeout_s", float, "at zero replicas: wait this long for one, then 503"))


def _spec_flags(p: argparse.ArgumentParser) -> None:
    """The configuration flags shared by `add` and `update` (everything else: --file)."""
    p.add_argument("--source", help="package:..., builtin:..., fake:, hf:org/name, org/name, or a local path")
    p.add_argument("--revision", help="Hub branch, tag or commit")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--replicas", type=int, dest="num_replicas")
    p.add_argument("--max-ongoing-requests", type=int)
    p.add_argument("--num-cpus", type=float, help="Ray CPUs per replica")
    p.add_argument("--num-gpus", type=float, help="Ray GPUs per replica (fractions share a GPU)")
    p.add_argument("--resource", action="append", type=_resource, dest="custom",
                   help="a Ray custom resource per replica NAME=AMOUNT (repeatable): placed on nodes that have it")
    for key, kind, text in AUTOSCALING:
        p.add_argument("--" + key.replace("_", "-"), type=kind, help=text)
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--batch-wait-timeout-s", type=float)
    p.add_argument("--alias", action="append", dest="aliases", help="another model id for it (repeatable)")
    p.add_argument("--option", action="append", type=_option, dest="options", help="backend option KEY=VALUE")
    p.add_argument("--description")
    p.add_argument("--upstream", dest="base_url", help="served by this OpenAI-compatible server, e.g. http://host:8000/v1")
    p.add_argument("--remote-model", help="the upstream's model id (default: the model's name)")
    p.add_argument("--api-key-env", help="NAME of the environment variable holding the upstream's API key")
    p.add_argument("--fallback", action="append", dest="fallbacks", help="a model that answers while this one "
                   "is unavailable or overloaded (repeatable, in order)")
    p.add_argument("--colocate", help="share one replica process with the other models of this group name")


def _spec_from_flags(args: argparse.Namespace) -> dict:
    spec: dict = {}
    if getattr(args, "file", None):
        with open(args.file) as f:
            spec.update(yaml.safe_load(f) or {})  # YAML is a superset of JSON
    for key in ("task", "source", "revision", "dtype", "device", "num_replicas", "max_ongoing_requests",
                "description", "aliases", "fallbacks", "colocate"):
        if getattr(args, key, None) is not None:
            spec[key] = getattr(args, key)
    groups = {"resources": ("num_cpus", "num_gpus", "custom"), "batching": ("max_batch_size", "batch_wait_timeout_s"),
              "autoscaling": tuple(key for key, _, _ in AUTOSCALING)}
    upstream = {"base_url": args.base_url, "model": args.remote_model, "api_key_env": args.api_key_env}
    if any(v is not None for v in upstream.values()):
        spec["upstream"] = {**spec.get("upstream", {}), **{k: v for k, v in upstream.items() if v is not None}}
    for group, keys in groups.items():
        values = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
        if "custom" in values:
            values["custom"] = dict(values["custom"])
        if values:
            spec[group] = {**(spec.get(group) or {}), **values}
    if args.options:
        spec["options"] = {**spec.get("options", {}), **dict(args.options)}
    return spec


def connection_flags() -> argparse.ArgumentParser:
    """--url and --admin-key, shared by `openserve models` and `openserve keys`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("OPENSERVE_URL", "http://127.0.0.1:8000"),
                        help="the server (default: $OPENSERVE_URL or http://127.0.0.1:8000)")
    common.add_argument("--admin-key", default=os.environ.get("OPENSERVE_ADMIN_KEY"),
                        help="an admin key (default: $OPENSERVE_ADMIN_KEY)")
    return common


def add_parser(sub) -> None:
    common = connection_flags()
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--no-wait", action="store_true", help="return at once instead of waiting for the outcome")
    waiting.add_argument("--timeout", type=float, default=1800, help="seconds to wait (default 1800)")
    models = sub.add_parser("models", help="the model registry of a running server (see README: Admin API)")
    actions = models.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[common], help="every registered model and its status")
    listing.add_argument("--json", action="store_true")
    actions.add_parser("show", parents=[common], help="one model as JSON").add_argument("name")
    add = actions.add_parser("add", parents=[common, waiting], help="register a model and deploy it")
    add.add_argument("name")
    add.add_argument("--task", choices=["chat", "embedding", "image", "speech"])
    add.add_argument("--file", help="the model's configuration as YAML or JSON (flags override it)")
    add.add_argument("--no-deploy", action="store_true", help="only register it")
    _spec_flags(add)
    update = actions.add_parser("update", parents=[common, waiting], help="change settings (redeploys if needed)")
    update.add_argument("name")
    update.add_argument("--file", help="the changes as YAML or JSON (flags override it)")
    _spec_flags(update)
    for action, text in (("deploy", "deploy a registered model"), ("undeploy", "drain and stop a model"),
                         ("rm", "delete a model from the registry (undeploying it)")):
        parents = [common] if action == "rm" else [common, waiting]
        actions.add_parser(action, parents=parents, help=text).add_argument("name")


def _replicas(entry: dict) -> str:
    """RUNNING/TARGET, and the autoscaling range when there is one (e.g. 1/2 (0-3))."""
    replicas, scaling = entry.get("replicas"), entry["config"].get("autoscaling")
    shown = f"{replicas['running']}/{replicas['target']}" if replicas else "-"
    return shown + (f" ({scaling['min_replicas']}-{scaling['max_replicas']})" if scaling else "")


def _print_table(entries: list[dict]) -> None:
    rows = [("NAME", "TASK", "STATUS", "REPLICAS", "SOURCE", "ALIASES")]
    for e in entries:
        config = e["config"]
        source = f"upstream {config['upstream']['base_url']}" if config.get("upstream") else config["source"]
        rows.append((e["name"], config["task"], e["status"], _replicas(e), source, ",".join(config["aliases"]) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[5])
    for e in entries:
        if e.get("error"):
            print(f"\n{e['name']} failed: {e['error']}")


def _run(client: AdminClient, args: argparse.Namespace) -> dict | None:
    """Do the action; returns the entry to wait on (None when there is nothing to wait for)."""
    if args.action == "list":
        listing = client.request("GET")
        if args.json:
            print(json.dumps(listing["data"], indent=2))
        else:
            _print_table(listing["data"])
        for bad in listing.get("invalid", []):
            print(f"{bad['name']}: this registry entry cannot be read ({bad['error']}); "
                  f"`openserve models rm {bad['name']}` removes it", file=sys.stderr)
        return None
    if args.action == "show":
        print(json.dumps(client.request("GET", args.name), indent=2))
        return None
    if args.action == "rm":
        client.request("DELETE", args.name)
        print(f"{args.name}: deleted")
        return None
    if args.action == "add":
        body = {**_spec_from_flags(args), "name": args.name, "deploy": not args.no_deploy}
        return client.request("POST", body=body)
    if args.action == "update":
        return client.request("PATCH", args.name, _spec_from_flags(args))
    return client.request("POST", f"{args.name}/{args.action}")


def run(args: argparse.Namespace) -> int:
    client = AdminClient(args.url, args.admin_key)
    try:
        entry = _run(client, args)
        if entry is None:
            return 0
        if getattr(args, "no_wait", True) or entry["status"] in ("registered", "ready"):
            print(f"{entry['name']}: {entry['status']}")
        else:
            until = ("stopped",) if args.action == "undeploy" else ("ready",)
            entry = client.wait(entry["name"], until, args.timeout)
        return 1 if entry["status"] == "failed" else 0
    except (AdminError, OSError, yaml.YAMLError) as e:
        print(f"openserve models {args.action}: {e}", file=sys.stderr)
        return 1
