"""A later start: every output line with its time, and the cores' busy fraction each 0.5 s."""
import json, os, sys, threading, time
sys.path.insert(0, os.getcwd())
from benchmarks.server import start_openserve
def stat():
    v = list(map(int, open("/proc/stat").readline().split()[1:])); return sum(v), v[3] + v[4]
samples = []; stop = threading.Event()
def sampler():
    t0 = time.perf_counter(); prev = stat()
    while not stop.is_set():
        time.sleep(0.5); cur = stat()
        samples.append((round(time.perf_counter() - t0, 1), round(1 - (cur[1] - prev[1]) / max(cur[0] - prev[0], 1), 2))); prev = cur
th = threading.Thread(target=sampler, daemon=True); th.start()
home = sys.argv[1]
server = start_openserve(None, env={"HOME": home, "PYTHONPATH": os.getcwd()}, cwd=os.getcwd(), data_dir=os.path.join(home, "d"))
stop.set(); th.join()
events = [(round(t, 1), "LINE " + l[:140]) for t, l in server.timeline] + [(t, f"cpu {b}") for t, b in samples]
for t, e in sorted(events): print(f"{t:6.1f} {e}")
server.stop()
