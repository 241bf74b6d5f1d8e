"""Importing napari_niiv before torch makes torch's OpenMP threads wait passively (they would spin
and take the cores from the threads with work whenever anything else runs), unless the user chose."""

import os
import subprocess
import sys


def _policy(env: dict[str, str]) -> str:
    code = "import napari_niiv, os, torch; print(os.environ['OMP_WAIT_POLICY'])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return run.stdout.strip()


def test_passive_by_default_and_the_users_choice_kept() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy(env) == "PASSIVE"
    assert _policy({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
