"""Check results, and running checks side by side with a deadline.

A check is a function returning ``(Status, detail)``. Checks run as :mod:`concurrent.futures`
futures, waited for with a timeout, so a check that hangs (a PACS that never answers, a
database host that drops packets) costs the caller at most its timeout. :class:`Cached` keeps
the last answer for a while and never runs two copies of the same check at once, so a storm
of ``/readyz`` probes cannot hammer a peer.

The futures come from :class:`DaemonThreadExecutor`, not from ``ThreadPoolExecutor``:
``ThreadPoolExecutor`` joins its threads when the interpreter exits, so one hung check would
keep the process from exiting.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Status(enum.StrEnum):
    """Outcome of one check: OK, WARN (works, but look at it) or FAIL."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


Verdict = tuple[Status, str]
"""What a check function returns: its status and a one-line detail."""


@dataclass(frozen=True)
class CheckResult:
    """One row of a doctor table or a readiness answer.

    Attributes
    ----------
    name : str
        The check (``database``, ``destination pacs``...).
    status : Status
        OK, WARN or FAIL.
    detail : str
        One line saying what was found (and, for a FAIL, what to do).
    seconds : float
        How long the check ran (or was waited for).
    """

    name: str
    status: Status
    detail: str
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the result as JSON-ready data."""
        return {
            "check": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


def describe_exception(exc: BaseException) -> str:
    """Return ``Type: message`` on one line (the message shortened to 300 characters)."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class DaemonThreadExecutor(Executor):
    """A `concurrent.futures.Executor` that runs each call in a new daemon thread.

    Parameters
    ----------
    name : str
        Name of the threads it starts.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Start ``fn(*args, **kwargs)`` in a daemon thread and return its future."""
        future: Future[T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # the future re-raises it in the caller's thread
                future.set_exception(exc)

        threading.Thread(target=run, name=self.name, daemon=True).start()
        return future


def run_check(name: str, check: Callable[[], Verdict]) -> CheckResult:
    """Run one check in this thread: its verdict, or FAIL with the exception it raised.

    Parameters
    ----------
    name : str
        The check.
    check : callable
        Returns ``(Status, detail)``.

    Returns
    -------
    CheckResult
        The verdict and how long the check ran.
    """
    started = time.monotonic()
    try:
        status, detail = check()
    except Exception as exc:
        status, detail = Status.FAIL, describe_exception(exc)
    return CheckResult(name, status, detail, time.monotonic() - started)


def result_of(name: str, future: Future[CheckResult], timeout: float, limit: float) -> CheckResult:
    """Wait up to ``timeout`` seconds for a check's future (from :func:`run_check`).

    Parameters
    ----------
    name : str
        The check.
    future : concurrent.futures.Future
        Its run.
    timeout : float
        Seconds to wait from now.
    limit : float
        The check's time limit as the user set it (for the message).

    Returns
    -------
    CheckResult
        The check's result, or FAIL "no answer" when it did not finish in time (it is left
        to finish in the background).
    """
    try:
        return future.result(max(0.0, timeout))
    except TimeoutError:
        return CheckResult(
            name, Status.FAIL, f"no answer within {limit:g} s (still running)", limit
        )


@dataclass(frozen=True)
class CheckSpec:
    """A check to run: its name, its function and how long it may take.

    Attributes
    ----------
    name : str
        Row name.
    run : callable
        Returns ``(Status, detail)``; may raise (the row is then FAIL with the error).
    timeout : float
        Seconds after which the row is FAIL with "no answer".
    """

    name: str
    run: Callable[[], Verdict]
    timeout: float


def run_checks(
    specs: Sequence[CheckSpec], on_result: Callable[[CheckResult], None] | None = None
) -> list[CheckResult]:
    """Run checks side by side, each isolated and bounded by its own timeout.

    Parameters
    ----------
    specs : sequence of CheckSpec
        The checks.
    on_result : callable, optional
        Called in the caller's thread with each result as it comes (progress).

    Returns
    -------
    list of CheckResult
        One per check, in the order of ``specs``.
    """
    executor = DaemonThreadExecutor("check")
    started = time.monotonic()
    index = {executor.submit(run_check, s.name, s.run): i for i, s in enumerate(specs)}
    results: dict[int, CheckResult] = {}

    def settle(future: Future[CheckResult], waited: float) -> None:
        spec = specs[index[future]]
        results[index[future]] = result_of(spec.name, future, spec.timeout - waited, spec.timeout)
        if on_result is not None:
            on_result(results[index[future]])

    pending = set(index)
    while pending:
        waited = time.monotonic() - started
        for future in [f for f in pending if specs[index[f]].timeout <= waited and not f.done()]:
            pending.discard(future)
            settle(future, waited)
        if not pending:
            break
        deadline = min(specs[index[f]].timeout for f in pending) - waited
        done, pending = wait(pending, timeout=max(0.01, deadline), return_when=FIRST_COMPLETED)
        for future in done:
            settle(future, waited)
    return [results[i] for i in range(len(specs))]


class Cached(Generic[T]):
    """A function whose last answer is reused while it is fresh, run one copy at a time.

    Parameters
    ----------
    name : str
        Thread name.
    fn : callable
        The work.
    ttl : float
        Seconds an answer stays fresh (``math.inf``: until ``key`` changes).
    key : callable, optional
        Cheap fingerprint of the inputs (e.g. file modification times); a changed key
        makes the answer stale at once. A key function that raises counts as "changed".
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[], T],
        *,
        ttl: float,
        key: Callable[[], Hashable] | None = None,
    ) -> None:
        self.ttl = ttl
        self._fn = fn
        self._key = key
        self._executor = DaemonThreadExecutor(name)
        # Reentrant: a future that is already done runs its callback (_done) at once.
        self._lock = threading.RLock()
        self._future: Future[T] | None = None
        self._future_key: Hashable = None
        self._finished = math.inf  # monotonic time the future finished

    def _current_key(self) -> Hashable:
        if self._key is None:
            return None
        try:
            return self._key()
        except Exception:
            return object()  # never equal to a stored key: run again

    def _fresh(self, key: Hashable) -> bool:
        age = time.monotonic() - self._finished
        return self._future_key == key and (math.isinf(self.ttl) or age < self.ttl)

    def begin(self) -> Future[T]:
        """Return the running future, a fresh finished one, or a newly started one."""
        with self._lock:
            key = self._current_key()
            future = self._future
            if future is not None and (not future.done() or self._fresh(key)):
                return future
            future = self._executor.submit(self._fn)
            self._future, self._future_key, self._finished = future, key, math.inf
            future.add_done_callback(self._done)
            return future

    def _done(self, future: Future[T]) -> None:
        with self._lock:
            if future is self._future:
                self._finished = time.monotonic()
