"""A tiny Lambda handler for the tests of the local stack's execution environments: each environment
imports it once, so its module state is that environment's. What a batch's bodies ask for: `die` ends
the process (a crash), `raise` raises, `sleep` outlasts any test timeout."""

from __future__ import annotations

import os
import time
from typing import Any

#: Invocations this environment has run: module state, as Powertools' keys or the worker's caches are.
INVOCATIONS = 0


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global INVOCATIONS
    INVOCATIONS += 1
    started = time.time()
    bodies = [record["body"] for record in event.get("Records", [])]
    if "die" in bodies:
        os._exit(137)
    if "raise" in bodies:
        raise RuntimeError("asked to raise")
    time.sleep(30 if "sleep" in bodies else float(os.environ.get("TEST_HANDLER_SECONDS", "0")))
    return {
        "batchItemFailures": [],
        "pid": os.getpid(),
        "invocations": INVOCATIONS,
        "records": len(bodies),
        "started": started,
        "ended": time.time(),
        "function": context.function_name,
        "initialization": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
    }
