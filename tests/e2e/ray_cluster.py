"""Ray nodes started with `ray start` on this machine (a head and workers, each with its own temp dir and process
session), stopped by killing their own processes: `ray stop` would stop every Ray on the machine."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil

from tests.e2e.server_process import free_port

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def start_node(env: dict[str, str], attempts: int = 2, **kw) -> RayNode:
    """A RayNode, trying again once: `ray start` gives its raylet a fixed 30 s to register, which a busy 2-core
    machine sometimes misses."""
    for attempt in range(attempts):
        try:
            return RayNode(env, **kw)
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class RayNode:
    """One `ray start` (the head when `address` is None). Its processes keep the session `ray start` ran in."""

    def __init__(self, env: dict[str, str], address: str | None = None, num_cpus: float = 1, num_gpus: int = 0,
                 resources: dict[str, float] | None = None, dashboard_port: int | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="osn-", dir="/tmp")  # short: Ray's socket paths must stay < 108
        self.port = free_port() if address is None else None
        args = [RAY, "start", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", f"--temp-dir={self.temp_dir}",
                "--object-store-memory=100000000", "--disable-usage-stats"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        if address is None:
            args += ["--head", f"--port={self.port}", "--node-ip-address=127.0.0.1"]
            args += [f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1"] if dashboard_port else [
                "--include-dashboard=false"]
        else:
            args += [f"--address={address}", "--node-ip-address=127.0.0.1"]
        self.env = env
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        self.session = proc.pid  # the daemons `ray start` leaves behind keep its session
        try:
            output, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            output = "(timed out)"
        if proc.returncode != 0:
            self.cleanup()
            raise RuntimeError(f"ray start failed:\n{output[-3000:]}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def node_id(self) -> str:
        """Ray's id of this node, from its raylet's command line."""
        for p in self.processes():
            try:
                found = re.search(r"--node[_-]id=([0-9a-f]+)", " ".join(p.cmdline()))
            except psutil.Error:
                continue
            if found:
                return found.group(1)
        raise RuntimeError(f"no raylet of the node in {self.temp_dir} is running")

    def processes(self) -> list[psutil.Process]:
        """This node's processes: its session's, everything naming its temp dir, and their descendants (workers)."""
        found = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if os.getsid(p.pid) == self.session or self.temp_dir in " ".join(p.info["cmdline"] or []):
                    found[p.pid] = p
                    for child in p.children(recursive=True):
                        found[child.pid] = child
            except (OSError, psutil.Error):
                pass
        return list(found.values())

    def kill(self) -> None:
        """kill -9 the node: a machine that died."""
        for p in self.processes():
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass

    def wait_gone(self, timeout_s: float = 30) -> bool:
        """Until none of the node's processes is left, killing again any that appeared (a monitor restarted by
        another that had not died yet)."""
        deadline = time.monotonic() + timeout_s
        while self.processes() and time.monotonic() < deadline:
            self.kill()
            time.sleep(0.2)
        return not self.processes()

    def cleanup(self) -> None:
        self.kill()
        self.wait_gone()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
