"""The isolation record's lifecycle, declared once: its statuses, the transitions a record may make and
the conditions that guard them.

Each condition has two renderings from one definition: `expression()` gives the DynamoDB condition
expression a conditional write uses (so two workers racing each other cannot both make a transition),
and `holds(item)` gives the same test in Python (to explain a refused write, or to pick the records a
transition applies to). tests/unit/test_lifecycle.py walks every transition from every status through
both renderings and checks that they agree.

```
            begin                 hand-over                     begin-follow-up            end
  QUEUED ─────────▶ IN_PROGRESS ─────────▶ IN_PROGRESS, follow-up ─────────────▶ (its lease) ─────▶ ISOLATED | FAILED
    │ ▲    (containment)   │    ▲ begin (a retry)                   ▲ begin-follow-up (a retry, a follow-up
    │ └─ (no lease) ───────┘    └──── begin (DLQ redrive) ─┐        │   DLQ redrive of a FAILED resumable one)
    │                                                      └ FAILED resumable ┘
    ├─ abandon ─▶ FAILED                (the message could not be enqueued)
    └─ end ─────▶ SKIPPED | FAILED      (exempt instance, a permanent error before the first write)
  IN_PROGRESS of a dry run ─ check ─▶ CHECKED  (a dry run that failed ends FAILED by `end`)
  IN_PROGRESS, on the last receive, lease expired ─ end-lost ─▶ FAILED (resumable)      [sweeper]
  QUEUED | IN_PROGRESS, no live lease, message in a DLQ ─ end-dead-lettered ─▶ FAILED    [sweeper]

  ISOLATED | FAILED with a prior_state | RELEASE_FAILED ─ request-release ─▶ RELEASING    [ingest]
  RELEASING ─ begin-release (a lease) ─▶ RELEASING ─ end-release ─▶ RELEASED | RELEASE_FAILED
  RELEASING ─ supersede-release ─▶ RELEASE_FAILED  (an isolation of the instance was requested meanwhile)
  RELEASING, on the last receive, lease expired ─ end-release-lost ─▶ RELEASE_FAILED     [sweeper]
  RELEASING, no live lease, message in the DLQ ─ end-release-dead-lettered ─▶ RELEASE_FAILED [sweeper]
  an earlier record of a RELEASED episode, releasable ─ end-with-episode ─▶ RELEASED  [worker, sweeper]
```

A release works on the episode's latest record only; which record that is comes from the `by-instance`
index (`shared.store.releases`), not from a condition: a condition sees one item.

An isolation has two phases on two queues. The containment attempt (isolation queue) begins, cuts the
network and the credentials, then hands over: its lease goes, `phase` becomes `follow-up`, and a
message on the follow-up queue carries the rest. The follow-up attempt takes a lease of its own
(begin-follow-up) and ends the record. The record stays IN_PROGRESS in between; a follow-up lost on its
last receive is found like a containment one (`final_attempt`, `lease_until`).

Record attributes the conditions read, beside `status`:
- `lease_owner`, `lease_until` (epoch seconds): the attempt running the record and until when.
- `final_attempt` (`"final"`): the attempt runs on the message's last allowed receive; with
  `lease_until` it keys the sparse `by-final-lease` index the sweeper queries. On a RELEASED record,
  `"episode-to-end"` (with `lease_until` the release's end): earlier records of its episode may still
  read ISOLATED (`shared.store.episode_ends`); the same index brings them to the sweeper.
- `resumable` (true): FAILED with its retries exhausted and its message in the DLQ; a redrive resumes it.
- `dry_run` (true): the record of a dry run (served as well).
- `phase` (`"follow-up"`): the containment handed over; the follow-up phase runs the record now.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    ISOLATED = "ISOLATED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    #: A dry run that found every step possible (it changed nothing).
    CHECKED = "CHECKED"
    RELEASING = "RELEASING"
    RELEASED = "RELEASED"
    RELEASE_FAILED = "RELEASE_FAILED"


#: The value of `final_attempt` on a record whose attempt runs on its message's last receive.
FINAL = "final"
#: The index of records in a last-receive attempt, by lease expiry (hash `final_attempt`, range
#: `lease_until`): the sweeper's way to find lost workers (and released episodes still to end) without a scan.
FINAL_LEASE_INDEX = "by-final-lease"
#: The value of `final_attempt` on a RELEASED record whose episode's earlier records may not all read
#: RELEASED yet (`shared.store.episode_ends`): the sweeper finds it in the same index.
EPISODE_TO_END = "episode-to-end"
#: The value of `phase` once the containment handed the record over to its follow-up phase.
FOLLOW_UP = "follow-up"


# --- conditions ------------------------------------------------------------------------------------------

#: Attribute names DynamoDB reserves, written through a placeholder.
_RESERVED = {"status": "#s", "error": "#e", "release": "#r"}


def _name(attribute: str) -> str:
    return _RESERVED.get(attribute, attribute)


@dataclass
class Rendering:
    """A condition rendered for DynamoDB: the expression, its names and its (plain Python) values."""

    expression: str
    names: dict[str, str]
    values: dict[str, Any]


class Condition(ABC):
    """A test of an item, rendered as a DynamoDB condition expression or checked in Python.

    Parameters (`now`, `owner`, ...) are given at use: `:now` in the expression, `params["now"]` in Python.
    """

    @abstractmethod
    def _render(self, values: dict[str, Any], params: Mapping[str, Any]) -> str: ...

    @abstractmethod
    def holds(self, item: Mapping[str, Any], **params: Any) -> bool: ...

    def expression(self, **params: Any) -> Rendering:
        values: dict[str, Any] = {}
        text = self._render(values, params)
        names = {placeholder: name for name, placeholder in _RESERVED.items() if placeholder in text}
        return Rendering(text, names, values)

    def __and__(self, other: Condition) -> Condition:
        return AllOf((self, other))

    def __or__(self, other: Condition) -> Condition:
        return AnyOf((self, other))


@dataclass(frozen=True)
class StatusIn(Condition):
    statuses: tuple[Status, ...]

    def _render(self, values: dict[str, Any], params: Mapping[str, Any]) -> str:
        keys = []
        for status in self.statuses:
            key = f":status_{status.value.lower()}"
            values[key] = status.value
            keys.append(key)
        return f"#s IN ({', '.join(keys)})"

    def holds(self, item: Mapping[str, Any], **params: Any) -> bool:
        return item.get("status") in self.statuses


@dataclass(frozen=True)
class Exists(Condition):
    attribute: str

    def _render(self, values: dict[str, Any], params: Mapping[str, Any]) -> str:
        return f"attribute_exists({_name(self.attribute)})"

    def holds(self, item: Mapping[str, Any], **params: Any) -> bool:
        return item.get(self.attribute) is not None


@dataclass(frozen=True)
class Missing(Condition):
    attribute: str

    def _render(self, values: dict[str, Any], params: Mapping[str, Any]) -> str:
        return f"attribute_not_exists({_name(self.attribute)})"

    def holds(self, item: Mapping[str, Any], **params: Any) -> bool:
        return item.get(self.attribute) is None


@dataclass(frozen=True)
class Is(Condition):
    """The attribute equals a constant."""

    attribute: str
    value: Any

    def _render(self, values: dict[str, Any], params: Mapping[str, Any]) -> str:
        key = f":is_{self.attribute}"
        values[key] = self.value
        return f"{_name(self.attribute)} = {key}"

    def holds(self, item: Mapping[str, Any], **params: Any) -> bool:
        return bool(item.get(self.attribute) == self.value)


@dataclass(frozen=True)
class EqualsParam(Condition):
    """The attribute equals the parameter `param`."""

    attribute: str
    param: str

    def _render(self, values: dict[str, Any], params: Mapping[str, Any]) -> str:
        values[f":{self.param}"] = params[self.param]
        return f"{_name(self.attribute)} = :{self.param}"

    def holds(self, item: Mapping[str, Any], **params: Any) -> bool:
        return bool(item.get(self.attribute) == params[self.param])


@dataclass(frozen=True)
class Before(Condition):
    """The (numeric) attribute is less than the parameter `param`; false when it is absent."""

    attribute: str
    param: str

    def _render(self, values: dict[str, Any], params: Mapping[str, Any]) -> str:
        values[f":{self.param}"] = params[self.param]
        return f"{_name(self.attribute)} < :{self.param}"

    def holds(self, item: Mapping[str, Any], **params: Any) -> bool:
        value = item.get(self.attribute)
        return value is not None and float(value) < float(params[self.param])


@dataclass(frozen=True)
class AllOf(Condition):
    parts: tuple[Condition, ...]

    def _render(self, values: dict[str, Any], params: Mapping[str, Any]) -> str:
        return " AND ".join(f"({part._render(values, params)})" for part in self.parts)

    def holds(self, item: Mapping[str, Any], **params: Any) -> bool:
        return all(part.holds(item, **params) for part in self.parts)


@dataclass(frozen=True)
class AnyOf(Condition):
    parts: tuple[Condition, ...]

    def _render(self, values: dict[str, Any], params: Mapping[str, Any]) -> str:
        return " OR ".join(f"({part._render(values, params)})" for part in self.parts)

    def holds(self, item: Mapping[str, Any], **params: Any) -> bool:
        return any(part.holds(item, **params) for part in self.parts)


# --- the record's conditions -----------------------------------------------------------------------------

ACTIVE = StatusIn((Status.QUEUED, Status.IN_PROGRESS))
#: A record a worker may (still) run: not ended, or ended FAILED with its retries exhausted (a DLQ
#: redrive resumes it).
RUNNABLE = ACTIVE | Is("resumable", True)
#: No attempt holds the record: no lease, or its lease has expired (`now`).
UNLEASED = Missing("lease_until") | Before("lease_until", "now")
#: The attempt `owner` may run the record: no other attempt holds it.
LEASE_FREE_FOR_OWNER = UNLEASED | EqualsParam("lease_owner", "owner")
#: The record's worker stopped during the message's last allowed receive (a timeout, out of memory, a
#: crash) and its lease has expired (`now`): nothing is left to end it, since the message went on to the
#: DLQ. A record merely waiting in the queue is never lost by this test: only a begun last attempt is.
LOST = StatusIn((Status.IN_PROGRESS,)) & Is("final_attempt", FINAL) & Before("lease_until", "now")


@dataclass(frozen=True)
class Transition:
    """A change of status the store may make, and the condition the record must meet for it."""

    name: str
    guard: Condition
    to: frozenset[Status]


BEGIN = Transition("begin", Exists("pk") & RUNNABLE & LEASE_FREE_FOR_OWNER, frozenset({Status.IN_PROGRESS}))
#: `BEGIN` of a record no attempt has begun: QUEUED as written, no attempt counted, no prior state. The
#: worker that wrote it (or read it from its message) then knows the begun record without reading it.
BEGIN_FIRST = Transition(
    "begin-first",
    BEGIN.guard
    & StatusIn((Status.QUEUED,))
    & (Missing("attempts") | Is("attempts", 0))
    & Missing("prior_state"),
    frozenset({Status.IN_PROGRESS}),
)
#: The containment attempt hands the record over to its follow-up phase: only while it holds the lease.
HAND_OVER = Transition(
    "hand-over",
    StatusIn((Status.IN_PROGRESS,)) & EqualsParam("lease_owner", "owner"),
    frozenset({Status.IN_PROGRESS}),
)
#: A follow-up attempt takes the record: handed over, not over (or FAILED resumable: a redrive of the
#: follow-up DLQ), and not held by another attempt.
BEGIN_FOLLOW_UP = Transition(
    "begin-follow-up",
    Exists("pk") & RUNNABLE & Is("phase", FOLLOW_UP) & LEASE_FREE_FOR_OWNER,
    frozenset({Status.IN_PROGRESS}),
)
END = Transition("end", RUNNABLE, frozenset({Status.ISOLATED, Status.FAILED, Status.SKIPPED}))
ABANDON = Transition("abandon", StatusIn((Status.QUEUED,)), frozenset({Status.FAILED}))
#: A dry run found every step possible: only a dry run ends CHECKED, and only once it has begun.
CHECK = Transition(
    "check", StatusIn((Status.IN_PROGRESS,)) & Is("dry_run", True), frozenset({Status.CHECKED})
)
END_LOST = Transition("end-lost", LOST, frozenset({Status.FAILED}))
END_DEAD_LETTERED = Transition("end-dead-lettered", ACTIVE & UNLEASED, frozenset({Status.FAILED}))

# --- release ---------------------------------------------------------------------------------------

#: Not a dry run (a dry run changed nothing: there is nothing to release).
REAL = Missing("dry_run") | Is("dry_run", False)
#: A record whose isolation may be undone: ISOLATED, RELEASE_FAILED (a new request retries the release),
#: or FAILED after it wrote a prior state (a failed isolation may have changed part of the instance).
RELEASABLE = REAL & (
    StatusIn((Status.ISOLATED, Status.RELEASE_FAILED)) | (StatusIn((Status.FAILED,)) & Exists("prior_state"))
)
RELEASE_RUNNING = StatusIn((Status.RELEASING,))
#: The release's worker stopped during its message's last receive and its lease has expired (`now`).
RELEASE_LOST = RELEASE_RUNNING & Is("final_attempt", FINAL) & Before("lease_until", "now")

REQUEST_RELEASE = Transition("request-release", RELEASABLE, frozenset({Status.RELEASING}))
BEGIN_RELEASE = Transition(
    "begin-release", Exists("pk") & RELEASE_RUNNING & LEASE_FREE_FOR_OWNER, frozenset({Status.RELEASING})
)
END_RELEASE = Transition("end-release", RELEASE_RUNNING, frozenset({Status.RELEASED, Status.RELEASE_FAILED}))
SUPERSEDE_RELEASE = Transition("supersede-release", RELEASE_RUNNING, frozenset({Status.RELEASE_FAILED}))
END_RELEASE_LOST = Transition("end-release-lost", RELEASE_LOST, frozenset({Status.RELEASE_FAILED}))
END_RELEASE_DEAD_LETTERED = Transition(
    "end-release-dead-lettered", RELEASE_RUNNING & UNLEASED, frozenset({Status.RELEASE_FAILED})
)

#: A release that ended RELEASED ends its episode: each earlier record of it that a release could have
#: undone reads RELEASED too (`shared.store.episode_ends`).
END_WITH_EPISODE = Transition("end-with-episode", RELEASABLE, frozenset({Status.RELEASED}))
#: A RELEASED record whose episode's earlier records are still to be ended.
EPISODE_UNENDED = StatusIn((Status.RELEASED,)) & Is("final_attempt", EPISODE_TO_END)

TRANSITIONS = (
    BEGIN,
    HAND_OVER,
    BEGIN_FOLLOW_UP,
    END,
    CHECK,
    ABANDON,
    END_LOST,
    END_DEAD_LETTERED,
    REQUEST_RELEASE,
    BEGIN_RELEASE,
    END_RELEASE,
    SUPERSEDE_RELEASE,
    END_RELEASE_LOST,
    END_RELEASE_DEAD_LETTERED,
    END_WITH_EPISODE,
)


def ended(item: Mapping[str, Any]) -> bool:
    """True when no worker will run the record again (it ended, and is not resumable)."""
    return not RUNNABLE.holds(item)
