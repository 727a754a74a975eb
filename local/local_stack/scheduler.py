"""EventBridge Scheduler, locally: a function invoked every period, as a rate schedule would (moto does
not run schedules). Each run is one invocation with Scheduler's empty-ish event; an error is logged and
the next run comes on time, as in Lambda."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("local_stack.scheduler")

Handler = Callable[[dict[str, Any], Any], Any]


class ScheduledFunction:
    def __init__(
        self, *, name: str, handler: Handler, every_seconds: float, context_factory: Callable[[], Any]
    ) -> None:
        self.name = name
        self.handler = handler
        self.every_seconds = every_seconds
        self.context_factory = context_factory
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # One execution environment: a run started by hand (`run_once`) waits for a scheduled one.
        self._invocation = threading.Lock()

    def run_once(self) -> Any:
        with self._invocation:
            return self.handler(
                {"source": "aws.scheduler", "detail-type": "Scheduled Event"}, self.context_factory()
            )

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_forever, name=f"schedule-{self.name}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Run no more, without waiting for a run in progress (`stop` waits)."""
        self._stop.set()

    def stop(self) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout=self.every_seconds + 5)
            self._thread = None

    def _run_forever(self) -> None:
        while not self._stop.wait(self.every_seconds):
            try:
                self.run_once()
            except Exception:  # the next run comes on time
                log.exception("scheduled function %s failed", self.name)
