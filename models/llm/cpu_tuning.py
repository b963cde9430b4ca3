"""CPU thread tuning for the engine: how many OpenMP threads a step uses, and a warning about spinning waits.

The measurements behind both choices are in docs/benchmarks.md ("Figures quoted in the code").
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


class LoneDecodeThreads:
    """With int4 decode weights, a step of one token runs on one thread and every other step on all of torch's:
    one row of int4 weights is bound by memory latency, so a second thread buys nothing and the freed core carries
    the streaming; from two sequences up the second thread pays."""

    def __init__(self, enabled: bool):
        self.full = torch.get_num_threads() if enabled else 0

    def set_for(self, tokens: int) -> None:
        """Set torch's thread count for a step that feeds `tokens` tokens (a no-op when disabled)."""
        if not self.full:
            return
        wanted = 1 if tokens == 1 else self.full
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)


def warn_if_openmp_spins() -> None:
    """Warn when several OpenMP threads spin while waiting: they collapse when other processes want the same cores,
    and the wait policy is read only when the process starts. A process that sets GOMP_SPINCOUNT chose its
    spinning (serving's engine process does, at nice 0)."""
    if (torch.get_num_threads() > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"
            and "GOMP_SPINCOUNT" not in os.environ):
        log.warning("torch uses %d OpenMP threads with their default (spinning) wait policy: if other processes "
                    "share these cores, steps can slow down several times; start the process with "
                    "OMP_WAIT_POLICY=PASSIVE", torch.get_num_threads())
