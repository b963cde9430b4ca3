"""`openserve keys create|list|show|revoke`: the API keys of a running server, through /admin/keys.

    openserve keys create ci-bot --model smollm2-135m-instruct --rpm 60 --tpm 20000 --concurrent 4
    openserve keys revoke key_1a2b3c4d5e6f7a8b

`create` prints the secret once, alone on stdout (so `KEY=$(openserve keys create bot)` works); it is stored only
as a hash. Exit status: 0 done, 1 the server refused (the reason is printed), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import sys

from serving.admin.cli import AdminClient, AdminError, connection_flags

ACTIONS = ("create", "list", "show", "revoke")


def add_parser(sub) -> None:
    common = connection_flags()
    keys = sub.add_parser("keys", help="API keys of a running server (see docs/operations.md)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", parents=[common], help="make a key and print its secret (once)")
    create.add_argument("name", help="who or what the key is for")
    create.add_argument("--scope", action="append", choices=["inference", "admin"], dest="scopes",
                        help="inference (default) and/or admin (repeatable)")
    create.add_argument("--model", action="append", dest="models", help="a model it may use (repeatable; "
                        "default: every model)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute (LLM prompt + completion, embedding input "
                        "tokens, images, speech characters)")
    create.add_argument("--concurrent", type=int, help="requests in flight at once")
    create.add_argument("--json", action="store_true", help="print the whole key object (secret included)")
    listing = actions.add_parser("list", parents=[common], help="every key (never a secret)")
    listing.add_argument("--json", action="store_true")
    actions.add_parser("show", parents=[common], help="one key as JSON").add_argument("id")
    actions.add_parser("revoke", parents=[common], help="refuse the key from now on").add_argument("id")


def _limits(key: dict) -> str:
    names = {"requests_per_minute": "rpm", "tokens_per_minute": "tpm", "max_concurrent": "concurrent"}
    return ",".join(f"{short}={key['limits'][k]}" for k, short in names.items() if key["limits"].get(k)) or "-"


def _print_table(keys: list[dict]) -> None:
    rows = [("ID", "NAME", "SCOPES", "MODELS", "LIMITS", "STATUS")]
    for k in keys:
        rows.append((k["id"], k["name"], ",".join(k["scopes"]), ",".join(k["models"] or ["*"]), _limits(k),
                     "revoked" if k["revoked_at"] else "active"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _create_body(args: argparse.Namespace) -> dict:
    limits = {"requests_per_minute": args.rpm, "tokens_per_minute": args.tpm, "max_concurrent": args.concurrent}
    return {"name": args.name, "scopes": args.scopes or ["inference"], "models": args.models,
            "limits": {k: v for k, v in limits.items() if v is not None}}


def run(args: argparse.Namespace) -> int:
    client = AdminClient(args.url, args.admin_key, path="/admin/keys")
    try:
        if args.action == "create":
            key = client.request("POST", body=_create_body(args))
            if args.json:
                print(json.dumps(key, indent=2))
            else:
                print(key["key"])
                print(f"{key['id']} created; store the key now: it is not shown again", file=sys.stderr)
        elif args.action == "list":
            keys = client.request("GET")["data"]
            print(json.dumps(keys, indent=2)) if args.json else _print_table(keys)
        elif args.action == "show":
            print(json.dumps(client.request("GET", args.id), indent=2))
        else:
            client.request("POST", f"{args.id}/revoke")
            print(f"{args.id}: revoked")
        return 0
    except (AdminError, OSError) as e:
        print(f"openserve keys {args.action}: {e}", file=sys.stderr)
        return 1
