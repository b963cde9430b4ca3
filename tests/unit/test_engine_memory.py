"""Memory of the engine process: freed heap goes back to the OS (engine_child.release_freed_memory), a CPU KV cache
commits only what is touched, and the PSS breakdown of benchmarks/engine_memory.py adds up.
Each test runs in under 2 s (the idle release one waits its 1 s)."""
import ctypes
import os
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing import Pipe

import pytest
import torch

from benchmarks.engine_memory import _mapping_kind, smaps_breakdown
from models.llm.fake import FakeEngine
from models.llm.kv_cache import KVShape, SlotKVCache
from models.llm.types import SamplingParams
from serving.services import engine_child
from serving.services.engine_child import _libc
from serving.services.engine_core import EngineCore
from serving.services.engine_messages import AddRequest, StepOutputs, Stop

# In a fresh interpreter: 96 MB of 64 KB blocks with a small block after each (so that freeing the large ones
# leaves holes inside the heap that glibc keeps mapped), freed, then released; prints the PSS (MB) after each.
_HOLES = textwrap.dedent("""
    from benchmarks.engine_memory import smaps_breakdown
    from serving.services.engine_child import release_freed_memory
    import os
    blocks = []
    for _ in range(1536):
        blocks.append((bytearray(b"x" * 65536), bytearray(b"y" * 600)))
    keep = [small for _, small in blocks]
    del blocks
    freed = smaps_breakdown(os.getpid())["pss_mb"]
    release_freed_memory()
    print(freed, smaps_breakdown(os.getpid())["pss_mb"])
""")


@pytest.mark.skipif(not sys.platform.startswith("linux") or _libc() is None, reason="glibc's malloc_trim only")
def test_release_freed_memory_returns_heap_holes_to_the_os():
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", _HOLES], capture_output=True, text=True, timeout=60, env=env,
                         check=True).stdout
    freed, released = (float(x) for x in out.split())
    assert freed - released > 64, (freed, released)  # most of the 96 MB of holes


def test_smaps_breakdown_adds_up_to_the_process_pss():
    doc = smaps_breakdown(os.getpid())
    with open(f"/proc/{os.getpid()}/smaps_rollup") as f:
        rollup_kb = next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    assert doc["pss_mb"] == pytest.approx(sum(doc["by_mapping_mb"].values()), abs=1)
    assert doc["pss_mb"] == pytest.approx(rollup_kb / 1024, rel=0.05)
    assert doc["by_mapping_mb"]["shared libraries"] > 0


@pytest.mark.parametrize("name, kind", [
    ("", "anonymous"), ("[heap]", "[heap]"), ("/c/model.safetensors", "weight files"),
    ("/usr/lib/libc.so.6", "shared libraries"), ("/x/torch/lib/libtorch_cpu.so", "shared libraries"),
    ("[vdso]", "other"), ("/dev/shm/ray_object_store", "other"),
])
def test_mapping_kinds(name, kind):
    assert _mapping_kind(name) == kind


def test_a_cpu_kv_cache_is_zero_and_commits_only_the_slots_written():
    shape = KVShape(num_layers=8, num_kv_heads=2, head_dim=64)  # 4 KB a token in bf16
    cache = SlotKVCache(shape, num_slots=16, slot_len=4096, dtype=torch.bfloat16, device="cpu")
    tensors = [*cache.keys, *cache.values]
    allocated = resident_mb(tensors)
    cache.ensure_initialized(512)  # what a runner calls before a 512-token prefill
    kv = torch.ones(512, 2, 64, dtype=torch.bfloat16)
    for layer in range(8):
        cache.write(layer, torch.zeros(512, dtype=torch.long), torch.arange(512), kv, kv)
    assert cache.reserved_bytes == 256 * 2**20
    assert allocated < 1  # of 256 MB reserved
    assert resident_mb(tensors) < 4  # slot 0's 512 tokens: 2 MB (zeroing 512 positions of all 16 slots: 32 MB)
    assert float(cache.keys[7][0, :, :512].sum()) == 512 * 2 * 64 and not cache.values[2][1:].any()


def resident_mb(tensors: list[torch.Tensor]) -> float:
    """Resident memory (MB) of exactly the bytes that hold `tensors`' data, page by page (mincore), so that a
    neighbouring mapping the kernel merged with theirs is not counted."""
    libc = ctypes.CDLL(None, use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    resident = 0
    for t in tensors:
        start = t.data_ptr() - t.data_ptr() % page
        length = t.data_ptr() + t.numel() * t.element_size() - start
        pages = -(-length // page)
        vec = (ctypes.c_ubyte * pages)()
        if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        resident += sum(b & 1 for b in vec) * page
    return resident / 2**20


def test_the_engine_process_releases_memory_once_idle_after_work_and_not_between_back_to_back_requests(monkeypatch):
    releases = []
    monkeypatch.setattr(engine_child, "IDLE_RELEASE_S", 1.0)  # the default; "b" follows "a" well within it
    monkeypatch.setattr(engine_child, "release_freed_memory", lambda collect=True: releases.append(time.monotonic()))
    parent, child = Pipe()
    server = threading.Thread(target=engine_child.serve, args=(child, EngineCore(FakeEngine())), daemon=True)
    server.start()

    def run(request_id: str) -> float:
        """Send one request, read until it finishes; the time it finished."""
        parent.send(AddRequest(request_id, [5, 6, 7], SamplingParams(max_tokens=3)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and parent.poll(deadline - time.monotonic()):
            message = parent.recv()
            if isinstance(message, StepOutputs) and any(o.finished for o in message.outputs):
                return time.monotonic()
        raise AssertionError(f"{request_id} did not finish")

    run("a")
    run("b")  # within IDLE_RELEASE_S of "a": no release in between
    assert releases == []
    finished = run("c")
    deadline = time.monotonic() + 10
    while not releases and time.monotonic() < deadline:
        parent.poll(0.05)
    parent.send(Stop())
    server.join(10)
    assert len(releases) == 1 and releases[0] - finished >= 0.9  # once, after IDLE_RELEASE_S of idle
