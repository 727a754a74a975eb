"""The responders' client installed on a laptop as the README says (its own virtual environment, as
pipx makes one), from the working tree, and used against a local API: `--help` and `list`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from local_stack.stack import LocalStack
from tests.e2e.helpers import ROOT, subprocess_environment

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(180)]


def test_the_client_installs_into_a_bare_environment_and_lists(tmp_path: Path) -> None:
    # Given a bare virtual environment, and the project installed into it from the working tree (the
    # pip cache or the registry reachable), while a local API starts
    started = time.monotonic()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    install = subprocess.Popen(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-compile", str(ROOT)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_environment(),
    )  # fmt: skip
    with LocalStack(region="eu-west-1", worker=False) as local:
        output, _ = install.communicate(timeout=150)
        assert install.returncode == 0, output
        command = venv / "bin" / "ec2-isolation"

        # When the installed command is asked for help, then for the list of isolations
        env = subprocess_environment()
        helped = subprocess.run([str(command), "--help"], capture_output=True, text=True, env=env, timeout=60)
        listed = subprocess.run(
            [str(command), "list", "--api", local.api_url, "--api-key", local.api_key],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        served = subprocess.run([str(command), "serve"], capture_output=True, text=True, env=env, timeout=60)

    # Then the help describes both roles, and the list answers from the API
    assert helped.returncode == 0 and "client of an ec2-isolation API" in helped.stdout, helped.stderr
    assert listed.returncode == 0 and listed.stdout.strip() == "no isolation", listed.stdout + listed.stderr
    # And the environment holds no moto: `serve` says the local stack is the `local` extra
    assert not list((venv / "lib").glob("python*/site-packages/moto"))
    assert served.returncode == 2 and "`local` extra" in served.stderr, served.stderr
    print(f"installed and used in {time.monotonic() - started:.1f} s")
