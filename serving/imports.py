"""import_on_thread: modules imported on a daemon thread while this one waits on something else (another process).

Used where a start waits: `openserve up` beside a local ray.init (serving/cli.py), a chat replica while its engine
process loads (serving/deployments/chat.py). Join the thread, or simply import the module again when it is needed: a
module whose import failed is not in sys.modules, so that import raises the error where it matters.
"""
from __future__ import annotations

import importlib
import threading


def import_on_thread(*modules: str, name: str = "imports") -> threading.Thread:
    """Import `modules` in order on a daemon thread named `name`; one that fails is skipped."""

    def run() -> None:
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 - raised again where the caller imports it
                continue

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
