"""Check results and running checks in the background with a deadline.

A check is a function returning ``(Status, detail)``. It runs in a daemon thread
(:class:`Flight`), so a check that hangs (a PACS that never answers, a database host that
drops packets) costs the caller at most its timeout and never blocks the process from
exiting. :class:`Cached` keeps the last answer for a while and never runs two copies of the
same check at once, so a storm of ``/readyz`` probes cannot hammer a peer.
"""

from __future__ import annotations

import enum
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

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


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value that occurs in ``text`` with ``********``.

    Parameters
    ----------
    text : str
        A detail line (may quote a URL or an error message).
    secrets : iterable of str
        Values that must never be shown (passwords, tokens); empty ones are ignored.

    Returns
    -------
    str
        The text without the secrets.
    """
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "********")
    return text


class Flight(Generic[T]):
    """One run of a function in a daemon thread.

    Parameters
    ----------
    name : str
        Name of the thread (``check-<name>``).
    fn : callable
        The work; its return value or exception is kept.
    on_done : callable, optional
        Called with the flight, from its thread, when the work ends.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[], T],
        on_done: Callable[[Flight[T]], None] | None = None,
    ) -> None:
        self.name = name
        self._fn = fn
        self._on_done = on_done
        self.started = time.monotonic()
        self.finished: float | None = None
        self.value: T | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"check-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:  # kept and re-raised by result(), in the caller's thread
            self.error = exc
        self.finished = time.monotonic()
        self.done.set()
        if self._on_done is not None:
            self._on_done(self)

    @property
    def seconds(self) -> float:
        """Run time so far (or in all, once finished)."""
        return (self.finished or time.monotonic()) - self.started

    def result(self) -> T:
        """Return the value of a finished flight, or raise its exception."""
        if not self.done.is_set():
            raise RuntimeError(f"{self.name} has not finished")
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


def verdict_of(
    name: str, flight: Flight[Verdict], timeout: float, limit: float | None = None
) -> CheckResult:
    """Wait up to ``timeout`` seconds for a check's flight and turn it into a result.

    Parameters
    ----------
    name : str
        The check.
    flight : Flight
        Its run.
    timeout : float
        Seconds to wait from now.
    limit : float, optional
        The check's time limit as the user set it (for the message; default ``timeout``).

    Returns
    -------
    CheckResult
        The check's verdict; FAIL with the exception when it raised, FAIL "no answer" when
        it did not finish in time.
    """
    if not flight.done.wait(max(0.0, timeout)):
        return CheckResult(
            name,
            Status.FAIL,
            f"no answer within {timeout if limit is None else limit:g} s "
            f"(still running, for {flight.seconds:.0f} s so far)",
            flight.seconds,
        )
    try:
        status, detail = flight.result()
    except Exception as exc:
        return CheckResult(name, Status.FAIL, describe_exception(exc), flight.seconds)
    return CheckResult(name, status, detail, flight.seconds)


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


def _put(done: queue.Queue[int], index: int, _flight: Flight[Verdict]) -> None:
    done.put(index)


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
    done: queue.Queue[int] = queue.Queue()
    flights = [
        Flight(spec.name, spec.run, on_done=partial(_put, done, i)) for i, spec in enumerate(specs)
    ]
    results: dict[int, CheckResult] = {}

    def settle(i: int) -> None:
        spec, flight = specs[i], flights[i]
        left = spec.timeout - flight.seconds if not flight.done.is_set() else 0.0
        results[i] = verdict_of(spec.name, flight, left, spec.timeout)
        if on_result is not None:
            on_result(results[i])

    while len(results) < len(specs):
        pending = [i for i in range(len(specs)) if i not in results]
        now = time.monotonic()
        for i in pending:
            if not flights[i].done.is_set() and now - flights[i].started >= specs[i].timeout:
                settle(i)
        pending = [i for i in pending if i not in results]
        if not pending:
            break
        wait = min(specs[i].timeout - (now - flights[i].started) for i in pending)
        try:
            i = done.get(timeout=max(0.01, wait))
        except queue.Empty:
            continue
        if i not in results:
            settle(i)
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
        self.name = name
        self._fn = fn
        self.ttl = ttl
        self._key = key
        self._lock = threading.Lock()
        self._last: Flight[T] | None = None
        self._last_key: Hashable = None
        self._running: Flight[T] | None = None

    def _current_key(self) -> Hashable:
        if self._key is None:
            return None
        try:
            return self._key()
        except Exception:
            return object()  # never equal to a stored key: run again

    def begin(self) -> Flight[T]:
        """Return a fresh finished flight, the one running now, or a newly started one."""
        with self._lock:
            key = self._current_key()
            last = self._last
            if last is not None and last.finished is not None and self._last_key == key:
                age = time.monotonic() - last.finished
                if math.isinf(self.ttl) or age < self.ttl:
                    return last
            if self._running is not None and not self._running.done.is_set():
                return self._running

            def store(flight: Flight[T]) -> None:
                with self._lock:
                    self._last, self._last_key = flight, key
                    if self._running is flight:
                        self._running = None

            self._running = Flight(self.name, self._fn, on_done=store)
            return self._running
