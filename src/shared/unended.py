"""What a record says when no worker ended it: the errors the sweeper (or a request that finds the
instance's slot held by a lost attempt) ends it with, isolation or release. The store writes them; the
words are the operator's and live here."""

from __future__ import annotations

from shared.lifecycle import Status
from shared.models import ErrorInfo, IsolationRecord

#: Its worker died on the message's last receive (a timeout, out of memory, a crash).
WORKER_LOST = "WorkerLost"
#: Its message is in a dead-letter queue and no attempt holds it.
DEAD_LETTERED = "DeadLettered"


def unrecorded(record: IsolationRecord) -> str:
    """The steps an attempt of the isolation planned (on record before their changes) and recorded no
    outcome of, said for the operator: their changes may be in place. "" when there are none."""
    recorded = {step.name for step in record.steps}
    pending = [name for name in dict.fromkeys(record.planned) if name not in recorded]
    if not pending:
        return ""
    return (
        f" Planned before the worker stopped, so perhaps in place with no outcome recorded: "
        f"{', '.join(pending)} (a release puts the prior state back)."
    )


def worker_lost(record: IsolationRecord) -> ErrorInfo:
    if record.status is Status.RELEASING:
        message = (
            "the worker stopped during the release's last allowed attempt without recording an outcome "
            "(a timeout, out of memory or a crash); release steps recorded done are in place. Ask for the "
            "release again to finish it."
        )
    else:
        message = (
            f"the worker stopped during the last allowed attempt (attempt {record.attempts}) without "
            "recording an outcome (a timeout, out of memory or a crash); the request is in the "
            "dead-letter queue, and a redrive resumes it. Steps recorded done are in place."
        ) + unrecorded(record)
    return ErrorInfo(code=WORKER_LOST, message=message)


def dead_lettered(record: IsolationRecord) -> ErrorInfo:
    if record.status is Status.RELEASING:
        message = (
            "the release's message is in the dead-letter queue and no outcome was recorded; release steps "
            "recorded done are in place. Ask for the release again to finish it."
        )
    else:
        message = (
            f"the request's message is in the dead-letter queue and no outcome was recorded (after "
            f"{record.attempts} attempt(s) reached the instance, the worker stopped before recording "
            "one); a redrive resumes it. Steps recorded done are in place."
        ) + unrecorded(record)
    return ErrorInfo(code=DEAD_LETTERED, message=message)
