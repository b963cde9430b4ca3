"""Start servers to benchmark as subprocesses on free ports: `openserve up` on a config (its own data dir, as the
e2e tests do) or a plain uvicorn app. Stopped with SIGINT, then SIGKILL of the process group if it hangs."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_compare_tree(parser, help_text: str) -> None:
    """--compare-tree NAME=DIR (repeatable): another source tree of the project to run beside this one."""
    parser.add_argument("--compare-tree", action="append", default=[], metavar="NAME=DIR", help=help_text)


def source_trees(compare: list[str]) -> list[tuple[str, str]]:
    """[("this tree", REPO)] plus each --compare-tree NAME=DIR as (NAME, DIR); a malformed one exits with a message."""
    trees = [("this tree", REPO)]
    for item in compare:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"--compare-tree wants NAME=DIR, got {item!r}")
        trees.append((name, folder))
    return trees


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A subprocess serving HTTP on 127.0.0.1:`port`; ready when `ready_line` is printed (or /health answers)."""

    def __init__(self, args: list[str], port: int, ready_line: str | None, env: dict | None = None,
                 data_dir: str | None = None, ready_timeout_s: float = 900, cwd: str = REPO,
                 keep_data_dir: bool = False):
        self.port, self.data_dir, self.lines = port, data_dir, []
        self.timeline: list[tuple[float, str]] = []  # (seconds since the start, line): where a start goes
        self.keep_data_dir = keep_data_dir  # stop() leaves the data dir (its caches) for a later start
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {})),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self._ready = threading.Event()
        self._ready_line = ready_line
        self.started = time.perf_counter()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._wait_ready(ready_timeout_s):
            log = "".join(self.lines)[-4000:]
            self.stop()
            raise RuntimeError(f"server {' '.join(args[:6])} did not become ready:\n{log}")
        self.ready_after_s = time.perf_counter() - self.started

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self.timeline.append((time.perf_counter() - self.started, line.rstrip("\n")))
            if self._ready_line and self._ready_line in line:
                self._ready.set()
        self._ready.set()  # the process ended: stop waiting

    def _wait_ready(self, timeout_s: float) -> bool:
        if self._ready_line:
            return self._ready.wait(timeout_s) and self.proc.poll() is None
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=1):
                    return True
            except OSError:
                time.sleep(0.2)
        return False

    def stop(self, timeout_s: float = 90) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.data_dir:
            _kill_leftovers(self.data_dir)
            if not self.keep_data_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_leftovers(data_dir: str) -> None:
    """Never leave a stray Ray behind a failed stop: kill what still names this server's data dir."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid != os.getpid() and data_dir in " ".join(p.info["cmdline"] or []):
            try:
                p.kill()
            except psutil.Error:
                pass


def start_openserve(config: str | None, env: dict | None = None, cwd: str = REPO,
                    data_dir: str | None = None) -> ServerProcess:
    """`openserve up` on `config` (None: the embedded default) with a fresh short data dir (Ray socket paths), or
    on `data_dir`, which then outlives the server (a later start reuses its caches: converted weights, pipelines);
    `cwd` runs another source tree of the project (its modules come first on sys.path), e.g. to compare versions."""
    port = free_port()
    keep = data_dir is not None
    data_dir = data_dir or tempfile.mkdtemp(prefix="osb-", dir="/tmp")
    args = [sys.executable, "-m", "serving.cli", "up", "--port", str(port), "--data-dir", data_dir]
    if config:
        args += ["--config", config]
    return ServerProcess(args, port, "ready in", env=env, data_dir=data_dir, cwd=cwd, keep_data_dir=keep)


def start_uvicorn(app: str, factory: bool = False, cwd: str = REPO, env: dict | None = None) -> ServerProcess:
    """`uvicorn module:app` (uvloop + httptools when installed), one worker, no access log."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--log-level", "warning", "--no-access-log"]
    if factory:
        args.append("--factory")
    return ServerProcess(args, port, ready_line=None, cwd=cwd, env=env)


def server_processes(pid: int) -> list:
    """The server's process and every descendant (Ray's raylet, GCS, proxy, replicas) as psutil.Process."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def cpu_seconds_by_process(processes: list) -> dict[int, tuple[str, float]]:
    """pid -> ("name:pid", user+system CPU seconds so far). Keyed by pid, not name: Ray renames a worker to the task
    it runs (ray::ServeController -> ray::ServeController.listen_for_change), so a name seen before and after a
    run may differ for the same process."""
    out = {}
    for p in processes:
        try:
            t = p.cpu_times()
            out[p.pid] = (f"{p.name()}:{p.pid}", t.user + t.system)
        except Exception:  # noqa: BLE001 - a process that ended has nothing more to count
            continue
    return out
