"""tune_for_compute: a model process leaves Ray's nice 15 and spins briefly in OpenMP, unless the operator chose."""
import json
import os
import subprocess
import sys

from tests.e2e.server_process import REPO

PROBE = """
import json, os
os.nice(15 - os.nice(0))  # start where Ray starts its workers
from serving.deployments.common import tune_for_compute
tune_for_compute()
print(json.dumps({"nice": os.nice(0), "spin": os.environ.get("GOMP_SPINCOUNT")}))
"""


def probe(**env) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, cwd=REPO, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def test_a_model_process_leaves_nice_15_and_spins_briefly():
    got = probe()
    assert got["spin"] == "100000"
    assert got["nice"] == 0 or os.geteuid() != 0  # lowering the niceness needs the right to (root has it)


def test_an_operators_own_openmp_wait_policy_wins():
    assert probe(OMP_WAIT_POLICY="PASSIVE")["spin"] is None
    assert probe(GOMP_SPINCOUNT="5")["spin"] == "5"
