"""`ec2-isolation serve --aws-endpoint URL`: the local stack on an AWS-compatible endpoint it did not start."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.e2e.helpers import Served, assert_isolated, demo_on, free_port, subprocess_environment

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(150)]


def test_serve_uses_an_existing_moto_server() -> None:
    # Given a moto server of its own (another process), with AWS managed policies
    moto_port = free_port()
    endpoint = f"http://127.0.0.1:{moto_port}"
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
        env=subprocess_environment(MOTO_IAM_LOAD_MANAGED_POLICIES="true"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    served = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)

        # When the local stack is served on it, with credentials from the environment
        port, api_key = free_port(), secrets.token_hex(16)
        served = Served(
            "--port", str(port), "--api-key", api_key, "--aws-endpoint", endpoint, "--seed-demo",
            env=subprocess_environment(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"),
        )  # fmt: skip
        served.wait_for_line("ready on ", 90)
        with demo_on(endpoint) as demo:
            instance = demo.instance("web-2", account=1)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/isolate",
                data=json.dumps(
                    {
                        "instance_id": instance.instance_id,
                        "account_id": instance.account_id,
                        "region": instance.region,
                    }
                ).encode(),
                headers={"x-api-key": api_key, "content-type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 202
                isolation_id = json.loads(answer.read())["isolation_id"]

            # Then the isolation happens in that endpoint's accounts
            deadline = time.monotonic() + 30
            while True:
                status = urllib.request.Request(
                    f"http://127.0.0.1:{port}/isolations/{isolation_id}", headers={"x-api-key": api_key}
                )
                with urllib.request.urlopen(status, timeout=10) as answer:
                    record = json.loads(answer.read())
                if record["status"] in ("ISOLATED", "FAILED", "SKIPPED") or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert_isolated(instance, record, source="webhook")
        assert served.stop() == 0
    finally:
        if served is not None and served.process.poll() is None:
            served.stop()
        moto.terminate()
        moto.wait(10)
