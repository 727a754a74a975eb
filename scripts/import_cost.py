"""`make bench`, cold imports: what each Lambda handler's module costs to import, against `import boto3`.

A Lambda cold start imports the handler's module before its first invocation; the figure that matters is
that import's time in a fresh interpreter. It is measured as CPU time (an import is CPU work; wall time
on a shared machine mostly measures the neighbours). Machines differ, so each handler is compared with
`import boto3` measured in the same rounds (alternating, the best of `ROUNDS` each).

Bytecode: the project's modules are compiled first, as the libraries installed by pip are. A deployment
package built by `sam build` carries no bytecode for them, and Lambda's code directory is read-only, so
a real cold start also compiles them: the second table shows that cost (PYTHONDONTWRITEBYTECODE).
"""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROUNDS = 7
BASELINE = "boto3"
HANDLERS = ("ingest.app", "worker.app", "sweeper.app")
SOURCE = Path(__file__).resolve().parent.parent / "src"
#: As the template's functions have them (Globals: PYDANTIC_DISABLE_PLUGINS), plus what settings read.
ENVIRONMENT = {
    "PYDANTIC_DISABLE_PLUGINS": "__all__",
    "TABLE_NAME": "table",
    "QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/111122223333/queue",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def seconds(module: str, *, source: Path | None = None) -> float:
    """The import's CPU time; with `source`, the project's modules come from there (no bytecode)."""
    code = f"import time\nstart = time.process_time()\nimport {module}\nprint(time.process_time() - start)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | ENVIRONMENT
    if source is not None:
        env |= {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(source)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def best(source: Path | None) -> dict[str, float]:
    times: dict[str, list[float]] = {module: [] for module in (BASELINE, *HANDLERS)}
    for _ in range(ROUNDS):
        for module in times:
            times[module].append(seconds(module, source=source))
    return {module: min(values) for module, values in times.items()}


def main() -> int:
    compileall.compile_dir(SOURCE, quiet=1)
    print(
        f"cold imports (CPU time): a fresh interpreter each, best of {ROUNDS} rounds, against `import {BASELINE}`"
    )
    with tempfile.TemporaryDirectory() as bare:
        # The project's modules without bytecode, as `sam build` packages them.
        shutil.copytree(SOURCE, bare, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        tables = (("project bytecode compiled", None), ("project compiled at import", Path(bare)))
        figures_by_title = {title: best(source) for title, source in tables}
    for title, figures in figures_by_title.items():
        base = figures[BASELINE]
        print()
        print(f"| {title:<28} | import     | × import {BASELINE} |")
        print(f"|{'-' * 30}|{'-' * 12}|{'-' * 17}|")
        for module, value in figures.items():
            print(f"| {module:<28} | {value * 1000:7.0f} ms | {value / base:14.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
