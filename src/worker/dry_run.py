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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared import lifecycle
from shared.aws import AccountSession
from shared.config import WorkerSettings
from shared.lifecycle import Status
from shared.models import ErrorInfo, Evidence, IsolationRecord, StepRecord, StepStatus
from shared.observability import logger
from shared.store import IsolationStore
from worker.instance import Instance
from worker.procedures import DRY_RUN
from worker.steps import StepContext
from worker.steps.checks import PolicySimulator


@dataclass
class DryRunNotes:
    """What the checks read of the prior state rides with the next step outcome written."""

    pending: dict[str, Any] = field(default_factory=dict)

    def remember(self, prior: dict[str, Any]) -> None:
        self.pending.update(prior)

    def keep_evidence(self, evidence: Evidence) -> None:  # a check takes none
        raise AssertionError("a dry run keeps no evidence")

    def asking_snapshots(self, at: str) -> None:
        raise AssertionError("a dry run takes no snapshot")

    def will_ask_snapshots(self, at: str) -> None:
        raise AssertionError("a dry run takes no snapshot")

    def take(self) -> dict[str, Any]:
        taken, self.pending = self.pending, {}
        return taken


def check(
    record: IsolationRecord,
    begun: IsolationRecord,
    *,
    account: AccountSession,
    instance: Instance,
    settings: WorkerSettings,
    store: IsolationStore,
    sleep: Callable[[float], None] | None = None,
) -> Status:
    """Check every step of the plan, record each outcome, end the record; CHECKED or FAILED."""
    notes = DryRunNotes()
    ctx = StepContext(
        isolation_id=record.isolation_id,
        source=record.source,
        target=record.target,
        instance=instance,
        account=account,
        prior=begun.prior_state or instance.state,
        evidence=begun.evidence,
        notes=notes,
        settings=settings,
        leases=store,
        groups=store,
        sleep=sleep,
        dry_run=True,
    )
    # One simulator for the whole dry run, on the execution role itself: it remembers when it cannot answer.
    simulator = PolicySimulator(
        ctx.iam, f"arn:{ctx.partition}:iam::{ctx.target.account_id}:role/{settings.TARGET_ROLE_NAME}"
    )
    failures: list[StepRecord] = []

    def on_record(outcome: StepRecord) -> None:
        store.add_steps(record.isolation_id, [outcome], prior=notes.take())

    for step_class in DRY_RUN.steps:
        outcome = DRY_RUN.perform(step_class, ctx, record_failed=on_record, simulator=simulator)
        if outcome.status is StepStatus.FAILED:
            failures.append(outcome)
        on_record(outcome)
    if not failures:
        store.finish(record, Status.CHECKED, transition=lifecycle.CHECK)
        logger.info("dry run checked: every step possible")
        return Status.CHECKED
    first = failures[0]
    code = first.detail.split(":", 1)[0] if ":" in first.detail else "DryRunFailed"
    names = ", ".join(step.name for step in failures)
    failed = ErrorInfo(
        code=code, message=f"dry run: {len(failures)} step(s) would fail ({names}): {first.detail}"
    )
    store.finish(record, Status.FAILED, error=failed)
    logger.warning("dry run found steps that would fail", extra={"code": code, "steps": names})
    return Status.FAILED
