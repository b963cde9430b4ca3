"""Schemathesis once against a running server (`make run`): python -m tests.fuzz.live [--base-url URL].

The schemas the server serves, with its own model names put in (from /v1/models) and generation bounded so that
a run finishes (max_tokens <= 16, n <= 2, image steps <= 4, speech input <= 200 characters); the same checks as
tests/fuzz: no 5xx, every response as documented. The admin API is fuzzed on one throwaway model name
(`fuzz/throwaway`, source `fake:`), deleted at the end; nothing else in the registry is touched: the API-key writes
(`POST /admin/keys...`) are left out, since a created admin key would end the server's loopback trust and keys are
real credentials (tests/fuzz fuzzes them on the fake stack). Prints each
operation's answers and writes a JSON summary; exits 1 if any check failed. See docs/limits.md."""
from __future__ import annotations

import argparse
import json
import sys
import time

import httpx
import schemathesis

from tests.fuzz.openapi_fuzz import MODES, fuzz, model_names, one_of, operations, takes_input, with_properties

THROWAWAY = "fuzz/throwaway"
OPENAI_VOICES = ["alloy", "ash", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer"]


def small(maximum: int) -> dict:
    return {"type": "integer", "minimum": 1, "maximum": maximum}


BOUNDED = {  # what keeps one generated request short on a CPU
    "ChatCompletionRequest": {"max_tokens": small(16), "max_completion_tokens": small(16), "n": small(2)},
    "CompletionRequest": {"max_tokens": small(16), "n": small(2)},
    "ImageGenerationRequest": {"n": small(2), "num_inference_steps": small(4)},
    "SpeechRequest": {"input": {"type": "string", "minLength": 1, "maxLength": 200}, "voice": one_of(OPENAI_VOICES)},
}
ALWAYS = {"ChatCompletionRequest": ["max_tokens", "stream"], "CompletionRequest": ["max_tokens", "stream"]}


def public_schema(base_url: str, headers: dict) -> schemathesis.BaseSchema:
    models = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=30).json()["data"]
    by_task: dict[str, list[str]] = {}
    for model in models:
        by_task.setdefault(model.get("task", ""), []).append(model["id"])
    properties = model_names(by_task)
    for name, bounded in BOUNDED.items():
        properties.setdefault(name, {}).update(bounded)
    raw = httpx.get(f"{base_url}/openapi.json", headers=headers, timeout=30).json()
    raw = with_properties(raw, properties, {"model_id": [m["id"] for m in models]}, always=ALWAYS)
    return schemathesis.openapi.from_dict(raw)


def admin_schema(base_url: str, headers: dict) -> schemathesis.BaseSchema:
    raw = httpx.get(f"{base_url}/admin/openapi.json", headers=headers, timeout=30).json()
    registration = {"name": one_of([THROWAWAY]), "source": one_of(["fake:"])}
    return schemathesis.openapi.from_dict(with_properties(raw, {"ModelRegistration": registration},
                                                          {"name": [THROWAWAY]}))


def writes_keys(label: str) -> bool:
    method, path = label.split(" ", 1)
    return method != "GET" and path.startswith("/admin/keys")


def run(schema, examples: int, base_url: str, headers: dict) -> list[dict]:
    results = []
    for operation in operations(schema):
        if writes_keys(operation.label):
            continue
        for mode in MODES:
            if mode.value == "negative" and not takes_input(operation):
                continue
            start = time.perf_counter()
            row = {"operation": operation.label, "mode": mode.value}
            try:
                answers = fuzz(operation, mode, examples, base_url=base_url, headers=headers, timeout=300)
                row["answers"] = {f"{status} {media}": count for (status, media), count in sorted(answers.items())}
            except Exception as exc:  # noqa: BLE001 - a failed check: record it and go on with the others
                row["failure"] = str(exc)[:4000]
                print(f"{operation.label} {mode.value}: FAILED\n{row['failure'][:1500]}", file=sys.stderr)
            row["seconds"] = round(time.perf_counter() - start, 1)
            results.append(row)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--examples", type=int, default=25, help="per operation and generation mode")
    parser.add_argument("--api-key", help="server.api_keys, if the server has some")
    parser.add_argument("--admin-key", help="server.admin_api_keys, if set (else /admin answers loopback)")
    parser.add_argument("--no-admin", action="store_true", help="leave the admin API out")
    parser.add_argument("--out", default="fuzz-live.json")
    args = parser.parse_args()
    public = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    admin = {"Authorization": f"Bearer {args.admin_key}"} if args.admin_key else {}
    admin["Content-Type"] = "application/json"  # the admin API refuses writes without it, bodiless ones too
    results = run(public_schema(args.base_url, public), args.examples, args.base_url, public)
    if not args.no_admin:
        try:
            results += run(admin_schema(args.base_url, admin), args.examples, args.base_url, admin)
        finally:
            httpx.delete(f"{args.base_url}/admin/models/{THROWAWAY}", headers=admin, timeout=60)
    cases = sum(sum(r.get("answers", {}).values()) for r in results)
    failed = [r for r in results if "failure" in r]
    with open(args.out, "w") as f:
        json.dump({"base_url": args.base_url, "examples": args.examples, "cases": cases, "failed": len(failed),
                   "results": results}, f, indent=2)
    print(f"{cases} cases over {len(results)} operation x mode runs, {len(failed)} failed; summary in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
