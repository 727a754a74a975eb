"""Work for several things at once, in threads that carry the caller's context (its context variables:
the chaos test's attribution, anything a hook reads)."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")
A = TypeVar("A")
B = TypeVar("B")

#: At most this many threads at once (a batch is at most 10 messages; a Security Hub action may ask for
#: more isolations in one).
MAX_THREADS = 16


def each_at_once(function: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`function` over `items` at once; the results in order. An exception is raised once all are done
    (the first in order); a BaseException (the environment dying) too, as Lambda would stop the whole
    invocation."""
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(items)), thread_name_prefix="at-once") as pool:
        futures = [pool.submit(contextvars.copy_context().run, function, item) for item in items]
        return [future.result() for future in futures]


def both_at_once(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """`first()` and `second()` at once (as `each_at_once`); their results."""
    a, b = each_at_once(lambda call: call(), [first, second])
    return cast(A, a), cast(B, b)


def begun(function: Callable[[], R]) -> Future[R]:
    """`function()` begun in a thread of its own, to be waited for later (`result()`); what it raises,
    a BaseException too, is raised where it is waited for."""
    future: Future[R] = Future()
    context = contextvars.copy_context()

    def run() -> None:
        try:
            future.set_result(context.run(function))
        except BaseException as exc:  # kept for the waiter: raised by result()
            future.set_exception(exc)

    threading.Thread(target=run, name="begun", daemon=True).start()
    return future
