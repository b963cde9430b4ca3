"""Alternating later starts of two trees: the wait from the engine's 'loaded' log line to 'ready in'."""
import os, re, sys, statistics
sys.path.insert(0, os.getcwd())
from benchmarks.server import start_openserve
trees = {"this": "/work/main", "before": "/work/wt/s8-before"}
homes = {"this": "/tmp/osb-s8", "before": "/tmp/osb-s8b"}
out = {k: [] for k in trees}
for i in range(int(sys.argv[1])):
    for name in (list(trees) if i % 2 == 0 else list(trees)[::-1]):
        tree = trees[name]
        s = start_openserve(None, env={"HOME": homes[name], "PYTHONPATH": tree}, cwd=tree, data_dir=os.path.join(homes[name], "d"))
        loaded = [t for t, l in s.timeline if "serving.deployments: model smollm2" in l and "loaded" in l]
        ready = s.ready_after_s
        s.stop()
        if i == 0 and name == "before" and not os.path.exists(homes[name] + "/.warm"):
            open(homes[name] + "/.warm", "w").close()
        if loaded:
            out[name].append((round(ready, 2), round(ready - (loaded[0] - 0), 2)))
        print(name, out[name][-1] if loaded else ("no loaded line", ready), flush=True)
for k, v in out.items():
    print(k, "ready", [r for r, _ in v], "tail", [t for _, t in v], "median tail", statistics.median([t for _, t in v]) if v else None)
