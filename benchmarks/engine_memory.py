"""The LLM engine process's memory alone (no Ray, no HTTP): PSS after load and after one request, by mapping.

Each round starts the config's first chat model in its engine process exactly as a chat replica does
(`EngineProcess(build_engine, ...)`, weights from the config's data_dir, converted there on the first run), reads
its PSS split by kind of mapping (the heap, other anonymous memory, shared libraries, weight files), sends one
request, waits until the engine has been idle for 2 s (it hands freed memory back after 1 s), and reads it again.
With --compare-tree the engine process of another source tree (e.g. a checkout of main) runs too, alternating.

    python -m benchmarks.engine_memory --rounds 3 --out bench-results
    python -m benchmarks.engine_memory --rounds 3 --compare-tree main=/work/main   # before / after, alternating
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

from benchmarks.runner import stamp
from benchmarks.server import REPO, add_compare_tree, source_trees

IDLE_WAIT_S = 2.0  # after the request: past engine_child.IDLE_RELEASE_S


def smaps_breakdown(pid: int) -> dict:
    """PSS of a process (MB) by kind of mapping, and the total, from /proc/PID/smaps."""
    kinds: dict[str, int] = {}
    kind = "other"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line: range, perms, offset, dev, inode, name
                fields = line.split(None, 5)
                kind = _mapping_kind(fields[5].strip() if len(fields) > 5 else "")
            elif head == "Pss:":
                kinds[kind] = kinds.get(kind, 0) + int(line.split()[1])  # kB
    out = {k: round(v / 1024, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
    return {"pss_mb": round(sum(kinds.values()) / 1024, 1), "by_mapping_mb": out}


def _mapping_kind(name: str) -> str:
    if not name:
        return "anonymous"
    if name in ("[heap]", "[stack]"):
        return name
    if name.endswith((".safetensors", ".gguf", ".bin")):
        return "weight files"
    if ".so" in os.path.basename(name):
        return "shared libraries"
    return "other"


@contextlib.contextmanager
def source_tree(tree: str):
    """While open, an engine process started here runs `tree`'s code: the child is `python -m` from the working
    directory and takes this process's sys.path, both pointed at `tree`."""
    cwd, path = os.getcwd(), list(sys.path)
    os.chdir(tree)
    sys.path[:] = [tree] + [p for p in path if os.path.abspath(p or ".") != os.path.abspath(REPO)]
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path[:] = path


def engine_round(config_path: str | None, tree: str) -> dict:
    """One engine process of `tree`: its PSS after load and after one request (64 prompt tokens, 8 out)."""
    from models.llm.types import SamplingParams
    from serving.config import load_config
    from serving.deployments.chat_engine import build_engine
    from serving.services.engine_messages import AddRequest, StepOutputs
    from serving.services.engine_process import EngineProcess

    config = load_config(config_path)
    model = next(m for m in config.models if m.task == "chat")
    started = time.perf_counter()
    with source_tree(tree):
        engine = EngineProcess(build_engine, (model.deployment_spec(), config.server.resolved_data_dir))
    try:
        ready_s = time.perf_counter() - started
        loaded = smaps_breakdown(engine.pid)
        engine.add(AddRequest("r0", list(range(100, 164)), SamplingParams(max_tokens=8, ignore_eos=True)))
        while engine.has_unfinished():
            failed = [e for e in engine.step() if not isinstance(e, StepOutputs)]
            if failed:
                raise RuntimeError(f"the request failed: {failed[0]}")
        time.sleep(IDLE_WAIT_S)
        return {"model": model.name, "ready_s": round(ready_s, 2), "after_load": loaded,
                "after_request": smaps_breakdown(engine.pid)}
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="engine starts per tree")
    add_compare_tree(p, "also start the engine process of the source tree in DIR, alternating")
    p.add_argument("--config", default=None, help="a config file (default: the embedded one)")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    trees = dict(source_trees(args.compare_tree))
    rounds: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            rounds[name].append(engine_round(args.config, os.path.abspath(tree)))
            print(json.dumps({"tree": name, **rounds[name][-1]}), flush=True)
    doc = {"benchmark": "engine_memory", "trees": trees, "rounds": rounds,
           "median_pss_mb": {name: {when: statistics.median(r[when]["pss_mb"] for r in rs)
                                    for when in ("after_load", "after_request")} for name, rs in rounds.items()}}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"engine-memory-{stamp()}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
