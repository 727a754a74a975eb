"""Lambda execution environments, locally: where a function's handler runs, and what state it keeps.

In Lambda each execution environment is a process of its own: it imports the handler once (the init
phase), then runs one invocation at a time, and its module-level state (settings, clients, assumed-role
sessions, Powertools' logger keys) belongs to it alone. Another environment of the
same function, or another function, never sees it. Two ways to run a function here:

- `Processes`: that model. Up to `limit` environments, each a process started with `spawn` (a fresh
  interpreter, nothing inherited but the environment variables), importing the handler once and
  receiving invocations over a pipe. An idle environment is reused (warm); a new one starts only when
  every existing one is busy and fewer than `limit` exist (cold). An environment that dies (killed, out
  of memory, `os._exit`) or overruns the function's timeout is killed and gone: its invocation fails
  with `EnvironmentDied` and the next one starts a fresh environment, as in Lambda. Each invocation's
  AWS calls (`service.Operation` with the time each was made) come back with its result, so counts
  cross the process boundary. As Lambda does, an environment learns why it was initialized
  (`AWS_LAMBDA_INITIALIZATION_TYPE`): `on-demand` when an invocation started it, `provisioned-concurrency`
  when `warm` started it ahead of any invocation (the handler's init may then prepare more).
- `InProcess`: the handler in this process, one invocation at a time. Its module state is shared with
  everything else in the process; tests use it to inject faults and crashes in-process (hooks, patched
  functions) where a child process could not see them.

`Setup` objects (picklable, with an `install()` method) run in every environment before the handler is
imported: the benchmark's latency model and throttling go in that way.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

from local_stack.lambda_context import LambdaContext

log = logging.getLogger("local_stack.environments")

Handler = Callable[[dict[str, Any], Any], Any]

_SPAWN = multiprocessing.get_context("spawn")
#: How long a new environment may take to start (spawn, imports) before it counts as dead.
INIT_TIMEOUT_SECONDS = 60.0


class EnvironmentDied(BaseException):  # noqa: N818 - what happens to the environment, not an error
    """The execution environment died in the middle of an invocation (out of memory, a timeout, the host
    going away): nothing of the handler runs after it, the batch comes back after the visibility
    timeout, and Lambda starts a new environment. A BaseException, so that no `except Exception` in the
    handler can catch it (tests raise it from a hook to kill the worker where they want)."""


class FunctionTimedOut(EnvironmentDied):
    """The invocation overran the function's timeout: Lambda stops it and discards the environment."""


class HandlerError(Exception):
    """The handler raised: the invocation failed (the environment lives on)."""


class Setup(Protocol):
    def install(self) -> None: ...


@dataclass
class Invocation:
    """One invocation's answer, and what it took."""

    result: Any
    #: (time.time(), "service.Operation") of every AWS call the handler made; None in-process (calls of
    #: concurrent threads cannot be told apart there).
    calls: list[tuple[float, str]] | None = None
    environment: int = 0  # the environment's process id (0 in-process)
    cold: bool = False  # the environment started for this invocation
    init_seconds: float = 0.0  # its init phase (spawn and imports), when cold


class Runtime(Protocol):
    """Runs a function's invocations in its environments."""

    def invoke(self, event: dict[str, Any], context: LambdaContext) -> Invocation: ...

    def close(self) -> None: ...


class InProcess:
    """The handler in this process, one invocation at a time (a single environment shared with the
    process: what tests use to inject faults in-process)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._lock = threading.Lock()

    def invoke(self, event: dict[str, Any], context: LambdaContext) -> Invocation:
        with self._lock:
            try:
                return Invocation(self.handler(event, context))
            except Exception as exc:
                raise HandlerError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Nothing to stop."""


@dataclass(frozen=True)
class FunctionCode:
    """What an environment needs to run a function: its handler and its environment variables."""

    handler: str  # module.attribute, as in the template
    environment: dict[str, str] = field(default_factory=dict)
    setups: tuple[Setup, ...] = ()
    #: Record the AWS calls of each invocation (through `shared.aws`'s hooks).
    count_calls: bool = True


#: Lambda's `AWS_LAMBDA_INITIALIZATION_TYPE` of an environment an invocation started, and of one started
#: ahead of any invocation (Lambda's provisioned concurrency; `Processes.warm` here).
ON_DEMAND, AHEAD_OF_DEMAND = "on-demand", "provisioned-concurrency"


class _Environment:
    """One spawned process running a function's invocations."""

    def __init__(self, code: FunctionCode, initialization: str = ON_DEMAND) -> None:
        requests_in, self._requests = _SPAWN.Pipe(duplex=False)
        self._answers, answers_out = _SPAWN.Pipe(duplex=False)
        started = time.monotonic()
        self.process = _SPAWN.Process(
            target=_serve,
            args=(requests_in, answers_out, code, initialization),
            name=f"lambda-env-{code.handler}",
            daemon=True,
        )
        self.process.start()
        requests_in.close()
        answers_out.close()
        ready = self._receive(INIT_TIMEOUT_SECONDS)
        if ready[0] != "ready":
            self.kill()
            raise EnvironmentDied(f"the environment did not start: {ready[1]}")
        self.init_seconds = time.monotonic() - started
        self.invocations = 0

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)

    def _receive(self, timeout: float) -> tuple[Any, ...]:
        try:
            if not self._answers.poll(max(0.0, timeout)):
                self.kill()
                raise FunctionTimedOut(f"no answer within {timeout:g} s")
            answer: tuple[Any, ...] = self._answers.recv()
            return answer
        except (EOFError, OSError) as exc:
            self.kill()
            raise EnvironmentDied(f"process {self.pid} exited ({self.process.exitcode})") from exc

    def invoke(self, event: dict[str, Any], context: LambdaContext) -> tuple[Any, ...]:
        try:
            self._requests.send((event, context))
        except (BrokenPipeError, OSError) as exc:
            self.kill()
            raise EnvironmentDied(f"process {self.pid} is gone") from exc
        self.invocations += 1
        return self._receive(context.get_remaining_time_in_millis() / 1000)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        for end in (self._requests, self._answers):
            with contextlib.suppress(OSError):
                end.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._requests.send(None)
        self.process.join(2)
        self.kill()


class Processes:
    """Up to `limit` environments of one function, each its own process (see the module's docstring)."""

    def __init__(self, code: FunctionCode, *, limit: int) -> None:
        self.code = code
        self.limit = max(1, int(limit))
        self._idle: list[_Environment] = []
        self._count = 0  # environments alive or starting
        self._available = threading.Condition()
        self._closed = False
        self.started = 0  # environments started so far (cold starts)
        self.init_seconds: list[float] = []  # each one's init phase (spawn, imports)

    def _acquire(self, initialization: str = ON_DEMAND) -> tuple[_Environment, bool]:
        with self._available:
            while not self._idle and self._count >= self.limit:
                if self._closed:
                    raise EnvironmentDied("the function's environments are stopped")
                self._available.wait()
            if self._closed:
                raise EnvironmentDied("the function's environments are stopped")
            if self._idle:
                return self._idle.pop(), False  # the most recently used: warm
            self._count += 1
            self.started += 1
        try:
            environment = _Environment(self.code, initialization)
        except BaseException:
            self._gone()
            raise
        self.init_seconds.append(environment.init_seconds)
        return environment, True

    def _release(self, environment: _Environment) -> None:
        with self._available:
            if self._closed:
                environment.close()
                self._count -= 1
            else:
                self._idle.append(environment)
            self._available.notify()

    def _gone(self) -> None:
        with self._available:
            self._count -= 1
            self._available.notify()

    def warm(self, count: int = 1) -> None:
        """Start environments until `count` are idle (at most `limit`): the first invocations are warm.
        They are initialized as Lambda's provisioned concurrency initializes them (`AHEAD_OF_DEMAND`)."""
        started: list[_Environment] = []
        with contextlib.suppress(EnvironmentDied):
            while len(started) < count:
                with self._available:
                    if self._count >= self.limit or len(self._idle) + len(started) >= count:
                        break
                started.append(self._acquire(AHEAD_OF_DEMAND)[0])
        for environment in started:
            self._release(environment)

    def invoke(self, event: dict[str, Any], context: LambdaContext) -> Invocation:
        environment, cold = self._acquire()
        try:
            answer = environment.invoke(event, context)
        except EnvironmentDied:
            self._gone()  # killed already: Lambda starts a new one for the next invocation
            raise
        except BaseException:
            environment.kill()
            self._gone()
            raise
        self._release(environment)
        kind, value, calls = answer
        if kind == "error":
            raise HandlerError(value)
        return Invocation(
            value,
            calls=calls,
            environment=environment.pid,
            cold=cold,
            init_seconds=environment.init_seconds if cold else 0.0,
        )

    @property
    def alive(self) -> int:
        with self._available:
            return self._count

    def close(self) -> None:
        with self._available:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._available.notify_all()
        for environment in idle:
            environment.close()


# --- inside an environment --------------------------------------------------------------------------


class _CallLog:
    """The AWS calls of the running invocation (one at a time in an environment)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self._lock = threading.Lock()  # the handler may call AWS from several threads

    def __call__(self, event_name: str = "", **_: Any) -> None:
        _event, service, operation = event_name.split(".", 2)
        with self._lock:
            self.calls.append((time.time(), f"{service}.{operation}"))

    def take(self) -> list[tuple[float, str]]:
        with self._lock:
            calls, self.calls = self.calls, []
        return calls


def _serve(requests: Connection, answers: Connection, code: FunctionCode, initialization: str) -> None:
    """An environment's process: init (settings, why it is initialized, setups, the handler imported
    once), then invocations until told to stop. A BaseException that is not an Exception (an injected
    EnvironmentDied) ends the process without an answer, as a crash would."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the stack, which stops its environments
    try:
        os.environ.update(code.environment)
        os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"] = initialization
        for setup in code.setups:
            setup.install()
        calls = _CallLog()
        if code.count_calls:
            from shared.aws import add_event_hook

            add_event_hook("before-call", calls)
        module, attribute = code.handler.rsplit(".", 1)
        handler = getattr(importlib.import_module(module), attribute)
    except Exception as exc:
        answers.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    answers.send(("ready", None))
    while True:
        try:
            request = requests.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        event, context = request  # context.started: CLOCK_MONOTONIC, the same clock in every process
        calls.take()
        try:
            answer: tuple[Any, ...] = ("ok", handler(event, context), calls.take())
        except Exception as exc:
            logging.getLogger("local_stack.environment").exception("the handler failed")
            answer = ("error", f"{type(exc).__name__}: {exc}", calls.take())
        except BaseException:
            os._exit(70)  # the environment dies: no answer, the parent sees the pipe close
        answers.send(answer)


__all__: Sequence[str] = (
    "EnvironmentDied",
    "FunctionCode",
    "FunctionTimedOut",
    "HandlerError",
    "InProcess",
    "Invocation",
    "Processes",
    "Runtime",
    "Setup",
)
