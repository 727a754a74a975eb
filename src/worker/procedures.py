"""The procedures, as data: which steps each runs, in order, whether it applies their plans or checks
them (a dry run), which failure of a step is that step's outcome while the procedure goes on, and the
metric its step outcomes count in. `Procedure.perform` is the one step executor every procedure uses;
where the outcomes go (the attempt's journal, the release's steps) is the caller's.

- containment (`CONTAINMENT`, the network cut), the hold and the follow-up: a step that raises
  `ContainmentIncomplete` is recorded failed, the others still run, and the record ends FAILED with it;
- a release (`RELEASE`): every failure of a step ends the release;
- a dry run (`DRY_RUN`, every step of the isolation's plan, checked): a permanent error is the step's
  `failed` outcome, the other steps are still checked, and the record ends FAILED.
Any other failure is recorded as the step's failed outcome (best effort) and raised, classified: the
receive's error boundary decides what it means (`worker.receive.Receive.settle`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import ContainmentIncomplete, PermanentError, RetryableError, classify
from shared.models import StepRecord
from shared.observability import MetricUnit, logger, metrics
from worker import steps
from worker.steps import Step, StepContext
from worker.steps.base import Plan
from worker.steps.checks import PolicySimulator


@dataclass(frozen=True)
class Procedure:
    name: str
    steps: tuple[type[Step], ...]
    #: The metric each step outcome counts in (`<metric>-<status>`).
    metric: str
    #: The failures of a step that are its outcome, the procedure going on (None: every failure ends it).
    goes_on_after: type[PermanentError] | None = None
    #: Each step's plan is checked, not applied (a dry run).
    checks: bool = False

    def perform(
        self,
        step_class: type[Step],
        ctx: StepContext,
        *,
        record_failed: Callable[[StepRecord], None],
        simulator: PolicySimulator | None = None,
        incomplete: Callable[[PermanentError], None] | None = None,
        plan: Plan | None = None,
    ) -> StepRecord:
        """One step: its outcome. A failure the procedure goes on after is the step's failed outcome
        (`incomplete` is told of it); any other is recorded (`record_failed`, best effort) and raised,
        classified. `simulator`: a dry run's (`checks`); `plan`: the step's, as its phase made it ahead
        (None: the step plans now)."""
        step = step_class()
        logger.thread_safe_append_keys(step=step.name)
        try:
            if self.checks:
                assert simulator is not None, f"{self.name} checks its steps with a simulator"
                outcome = step.check(ctx, simulator)
            else:
                outcome = step.run(ctx, plan)
        except Exception as exc:
            error = classify(exc, context=step.name)
            if self.goes_on_after is None or not isinstance(error, self.goes_on_after):
                retry = " (will retry)" if isinstance(error, RetryableError) else ""
                failed = StepRecord.failed(step.name, f"{error.code}: {error.message}{retry}")
                self._count(failed)
                try:
                    record_failed(failed)
                except Exception:  # the step's own error matters more; it is logged and raised
                    logger.exception("could not record the failed step")
                raise error from exc
            if incomplete is not None:
                incomplete(error)
            outcome = StepRecord.failed(step.name, f"{error.code}: {error.message}")
        finally:
            logger.thread_safe_remove_keys(["step"])
        self._count(outcome)
        return outcome

    def _count(self, outcome: StepRecord) -> None:
        metrics.add_metric(name=f"{self.metric}-{outcome.status.value}", unit=MetricUnit.Count, value=1)


#: The network cut, first and fast.
CONTAINMENT = Procedure("containment", steps.CONTAINMENT, "Step", goes_on_after=ContainmentIncomplete)
#: Right after every cut of the batch: the credentials deny, out of Auto Scaling and load balancers.
HOLD = Procedure("hold", steps.HOLD, "Step", goes_on_after=ContainmentIncomplete)
#: From the follow-up queue: the API cut, protection, evidence, labels; it ends the record.
FOLLOW_UP = Procedure("follow-up", steps.FOLLOW_UP, "Step", goes_on_after=ContainmentIncomplete)
#: An isolation undone from the record's prior state.
RELEASE = Procedure("release", steps.RELEASE, "ReleaseStep")
#: Every step of an isolation checked, nothing changed.
DRY_RUN = Procedure("dry run", steps.PLAN, "DryRunStep", goes_on_after=PermanentError, checks=True)
