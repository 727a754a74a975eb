"""`ec2-isolation demo`: the whole story in one command exits 0 with all four instances isolated, the
one whose isolation was undone by hand isolated again by the tamper watch, and the webhook's released, as
it was before its isolation."""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.helpers import CLI, ROOT, subprocess_environment

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(330)]


def test_demo_isolates_four_ways() -> None:
    # When a person runs the demo with no input
    done = subprocess.run(
        [*CLI, "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_environment(),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )

    # Then it exits 0 and its table shows each trigger's instance ISOLATED, and the webhook's RELEASED
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["source", "account", "instance"])
    rows = {line.split()[0]: line.split() for line in lines[header + 1 : header + 7]}
    for source in ("webhook", "guardduty", "tag", "securityhub", "tamper"):
        assert rows[source][3] == "ISOLATED", output
    # And the tamper repair is of the instance the finding isolated
    assert rows["tamper"][2] == rows["guardduty"][2]
    # And the webhook's instance is RELEASED, each release step in place
    assert rows["release"][:4] == [rows["release"][0], *rows["webhook"][1:3], "RELEASED"], output
    assert all(step.split(":")[-1] in ("done", "already", "skipped") for step in rows["release"][5:]), output
    # And the released instance is as it was before its isolation, which the client's status shows
    assert f"release: {rows['webhook'][2]} is as it was before its isolation" in done.stdout
    assert "release: requested" in done.stdout
    assert "all five isolated, one released" in done.stdout
    # And it reads as a story: no raw log line of the functions in it
    raw = [line for line in output.splitlines() if line.lstrip().startswith("{")]
    assert not raw, raw
    # And it ends with commands that work once it stopped: keep a stack up with `make run`
    closing = done.stdout[done.stdout.index("all five isolated") :]
    assert "make run" in closing and "ec2-isolation list" in closing, closing
    assert "--api http://127.0.0.1:" not in done.stdout  # no command naming the demo's stopped stack
