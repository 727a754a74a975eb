"""A dry run: what an isolation of the instance would do, step by step, and whether the execution role
may do it, with nothing changed on the instance or in its account.

The attempt (`worker.runner.Attempt`) has assumed the role, described the instance and begun the record
(IN_PROGRESS, with `prior_state`: the episode's when the instance is in one, as a real run would take it).
Then each step of the plan, in order, is asked what it would do (`Step.check`, `worker.steps.checks`):
`would`, `unverified`, `already`, `skipped` or `failed`. A step's permanent error (a role that cannot be
found, no room for the credentials deny, an access error on a read) is that step's `failed` outcome, and
the other steps are still checked; a transient one is retried through the queue like any attempt's.
The record ends CHECKED when no step failed, FAILED otherwise (with the first failure's error), and its
outcome event carries `dry_run: true`. A dry run took no instance slot and releases none.
"""

from __future__ import annotations

from shared import lifecycle
from shared.lifecycle import Status
from shared.models import ErrorInfo, IsolationRecord, StepRecord, StepStatus
from shared.observability import logger
from worker.journal import StepJournal
from worker.procedures import DRY_RUN
from worker.steps import StepContext
from worker.steps.checks import PolicySimulator


def check(ctx: StepContext, journal: StepJournal, *, role_name: str) -> tuple[Status, IsolationRecord | None]:
    """Check every step of the plan (the execution role `role_name` asked about what EC2 cannot check),
    record each outcome, end the record: CHECKED or FAILED, and the record as ended (None: it had
    ended already)."""
    # One simulator for the whole dry run, on the execution role itself: it remembers when it cannot answer.
    simulator = PolicySimulator(ctx.iam, f"arn:{ctx.partition}:iam::{ctx.target.account_id}:role/{role_name}")
    failures: list[StepRecord] = []
    for step_class in DRY_RUN.steps:
        outcome = DRY_RUN.perform(step_class, ctx, record_failed=journal.failed, simulator=simulator)
        if outcome.status is StepStatus.FAILED:
            failures.append(outcome)
        journal.ride(outcome)
    if not failures:
        logger.info("dry run checked: every step possible")
        return Status.CHECKED, journal.end(Status.CHECKED, transition=lifecycle.CHECK)
    first = failures[0]
    code = first.detail.split(":", 1)[0] if ":" in first.detail else "DryRunFailed"
    names = ", ".join(step.name for step in failures)
    failed = ErrorInfo(
        code=code, message=f"dry run: {len(failures)} step(s) would fail ({names}): {first.detail}"
    )
    logger.warning("dry run found steps that would fail", extra={"code": code, "steps": names})
    return Status.FAILED, journal.end(Status.FAILED, error=failed)
