"""The ingest Lambda's cold import stays small: it imports only what the API path needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY_OR_FOREIGN = (
    "worker",  # the worker's code
    "moto",  # test/local-stack only
    "aws_xray_sdk",  # tracing SDK
    "aws_lambda_powertools.utilities.batch",
    "aws_lambda_powertools.utilities.parser",
    "local_stack",
    "yaml",
)


def test_ingest_imports_only_the_api_path() -> None:
    # Given a fresh interpreter, as a Lambda cold start is
    code = "import sys, json, ingest.app; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "TABLE_NAME": "t", "QUEUE_URL": "q"}
    # When it imports the ingest handler's module
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    # Then nothing of the worker, the test tools or unused Powertools utilities came along
    unwanted = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY_OR_FOREIGN)]
    assert unwanted == []
