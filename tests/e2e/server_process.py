"""Start `openserve up` as a real subprocess (real local Ray), wait until ready, stop it with SIGINT."""
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

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for(predicate, timeout_s: float, what: str, seen=None, poll_s: float = 0.5):
    """Poll `predicate` every `poll_s` until it returns something truthy (returned); after timeout_s fail the test,
    saying what `seen()` shows then."""
    import pytest

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"not within {timeout_s:.0f} s: {what}" + (f"; got {seen()}" if seen else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """One server on a free port with its own short data dir (Ray's socket paths must stay < 108 bytes)."""

    def __init__(self, config: str | None = None, ready_timeout_s: float = 600, data_dir: str | None = None,
                 port: int | None = None, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.port = port or free_port()
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="osv-", dir="/tmp")  # pass one to restart on its state
        self.lines: list[str] = []
        args = [sys.executable, "-m", "serving.cli", "up", "--port", str(self.port), "--data-dir", self.data_dir]
        if config:
            args += ["--config", config]
        args += list(extra_args)
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        waited = self._ready.wait(ready_timeout_s)
        started = any("ready in" in ln for ln in self.lines)  # the reader also stops waiting when the server exits
        if not waited or self.proc.poll() is not None or not started:
            log = self.log()
            self.stop()
            raise RuntimeError(f"server did not become ready:\n{log[-6000:]}")
        self.ready_after_s = time.perf_counter() - self.started

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "ready in" in line:
                self._ready.set()
        self._ready.set()  # the process ended: stop waiting

    def log(self) -> str:
        return "".join(self.lines)

    def leftover_processes(self, wait_s: float = 15.0) -> list[str]:
        """Processes whose command line names this server's data dir (raylet, gcs, workers) still running `wait_s`
        after the call: when the driver has exited, Ray may still be reaping its last worker, which is no leak."""
        deadline = time.monotonic() + wait_s
        while (found := self._naming_data_dir()) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling a predicate (the processes gone) under a deadline
        return found

    def _naming_data_dir(self) -> list[str]:
        found = []
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if self.data_dir in cmd and p.pid != os.getpid() and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(f"{p.pid}: {cmd[:160]}")
        return found

    def processes(self) -> list[psutil.Process]:
        """The server's processes: its session (the driver, Ray's GCS, raylet and workers)."""
        found = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.proc.pid:
                    found.append(p)
            except (OSError, psutil.Error):
                pass
        return found

    def pss_mb(self) -> float:
        """The summed PSS (proportional set size: shared pages split among their users) of the server's processes."""
        total = 0
        for p in self.processes():
            try:
                total += p.memory_full_info().pss
            except psutil.Error:  # ended meanwhile
                pass
        return total / 2**20

    def listening_sockets(self) -> list[tuple[str, str, int]]:
        """(process name, address, port) of every TCP socket the server's processes listen on."""
        found = []
        for p in self.processes():
            try:
                found += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="tcp")
                          if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                pass
        return found

    def stop(self, timeout_s: float = 90) -> int | None:
        """SIGINT (Ctrl-C) and wait; returns the exit code, or None if it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                return None
        return self.proc.returncode

    def _kill_session(self) -> None:
        """SIGKILL every process of the server's session (Ray's GCS, raylet and workers, whose titles hide the
        data dir) and any other process naming its data dir."""
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if os.getsid(p.pid) == self.proc.pid or self.data_dir in " ".join(p.info["cmdline"] or []):
                    p.kill()
            except (OSError, psutil.Error):
                pass

    def kill(self) -> None:
        """kill -9 the whole server: a crash, no clean-up."""
        self._kill_session()
        self.proc.wait()

    def cleanup(self, remove_data: bool = True) -> None:
        self.stop()
        self._kill_session()  # never leave a stray Ray behind a failed test
        if remove_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
