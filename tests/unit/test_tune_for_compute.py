"""tune_for_compute: a model process leaves Ray's nice 15 and spins briefly in OpenMP, unless the operator chose."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.e2e.server_process import REPO

PROBE = """
import json, logging, os
logging.basicConfig(level=logging.INFO, format="%(message)s")
os.nice(15 - os.nice(0))  # start where Ray starts its workers
from serving.deployments.common import tune_for_compute
tune_for_compute()
print(json.dumps({"nice": os.nice(0), "spin": os.environ.get("GOMP_SPINCOUNT")}))
"""
IS_ROOT = os.geteuid() == 0
# util-linux's setpriv: run the probe as root without CAP_SYS_NICE, the right to lower a niceness.
WITHOUT_SYS_NICE = ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice"]


def probe(*prefix: str, **env) -> dict:
    """Run tune_for_compute in a fresh process (behind `prefix`, a command); its nice, spin count and log."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([*prefix, sys.executable, "-c", PROBE], env={**base, **env}, cwd=REPO,
                         capture_output=True, text=True, check=True)
    return {**json.loads(out.stdout), "log": out.stderr}


@pytest.mark.skipif(not IS_ROOT, reason="lowering a process's niceness needs root (CAP_SYS_NICE); "
                    "test_without_the_right_it_stays_at_nice_15_and_says_so covers this user")
def test_a_model_process_leaves_nice_15_and_spins_briefly():
    got = probe()
    assert (got["nice"], got["spin"]) == (0, "100000")


@pytest.mark.skipif(IS_ROOT and shutil.which("setpriv") is None,
                    reason="as root, the probe needs util-linux's setpriv to run without the right to lower nice")
def test_without_the_right_it_stays_at_nice_15_and_says_so():
    got = probe(*(WITHOUT_SYS_NICE if IS_ROOT else ()))
    assert (got["nice"], got["spin"]) == (15, "100000")
    assert "stays at nice 15 (no permission to lower it)" in got["log"]


def test_an_operators_own_openmp_wait_policy_wins():
    assert probe(OMP_WAIT_POLICY="PASSIVE")["spin"] is None
    assert probe(GOMP_SPINCOUNT="5")["spin"] == "5"


THREADS_PROBE = """
import json, os, sys
os.environ["OMP_NUM_THREADS"] = "1"  # what Ray sets for an actor of num_cpus < 2
if {torch_first}:
    import torch
from serving.deployments.common import set_compute_threads
set_compute_threads(2)
loaded = "torch" in sys.modules
import torch
print(json.dumps({{"loaded_by_it": loaded, "threads": torch.get_num_threads()}}))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="torch caps a thread count from the environment at the cores")
@pytest.mark.parametrize("torch_first", [False, True])
def test_compute_threads_reach_torch_without_importing_it(torch_first):
    """A replica that never uses torch (Piper) must not load it for the thread count; one that does gets the count
    whether torch loads after the setting or was loaded before it."""
    out = subprocess.run([sys.executable, "-c", THREADS_PROBE.format(torch_first=torch_first)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"loaded_by_it": torch_first, "threads": 2}
