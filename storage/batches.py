"""Group commit for both engines: bodies that queue while a batch runs go together in
the next one.

A `Batches` queue takes bodies (`run(body)`) and hands them, at most `MAX_BATCH` at a
time, to its engine's `run_batch(jobs)`, which runs them (SQLite: in one call on the
connection's thread; PostgreSQL: in one transaction on a pooled connection) and sets
each job's outcome. Each caller is answered from its job's outcome once the batch is
done; when the batch fails as a whole (`run_batch` raises), every caller of it gets
that error, and `failure` names it (for /healthz) until a batch succeeds again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# At most this many bodies share one batch (and, for writes, one COMMIT): bounds how
# long one batch holds its connection and how late the first of a batch is answered.
MAX_BATCH = 256


@dataclass
class Job(Generic[T]):
    body: Callable[[Any], Awaitable[T]]
    future: asyncio.Future[T]
    outcome: tuple[bool, Any] = field(default=(False, None))  # (ok, result or exception)


class Batches:
    """One connection's (or one writer's) queue of bodies, run in batches."""

    def __init__(
        self,
        run_batch: Callable[[list[Job[Any]]], Awaitable[None]],
        failure_of: Callable[[BaseException], str | None],
    ) -> None:
        """`failure_of(exc)`: for an error that failed a whole batch, what `failure`
        should say (the engine logs it there), or None when it says nothing of the
        database's health (a bug, a cancellation)."""
        self._run_batch = run_batch
        self._failure_of = failure_of
        self._pending: list[Job[Any]] = []
        self._drainer: asyncio.Future[None] | None = None
        # Why the last batch failed as a whole, None once a batch succeeds again.
        self.failure: str | None = None

    async def run(self, body: Callable[[Any], Awaitable[T]]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(Job(body, future))
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                jobs = [j for j in self._pending[:MAX_BATCH] if not j.future.done()]
                del self._pending[:MAX_BATCH]
                if not jobs:
                    continue
                try:
                    await self._run_batch(jobs)
                    self.failure = None
                except BaseException as exc:  # the batch as a whole failed: tell every member
                    failure = self._failure_of(exc)
                    if failure is not None:
                        self.failure = failure
                    error = exc if isinstance(exc, Exception) else RuntimeError("storage call interrupted")
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(error)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for job in jobs:
                    if job.future.done():  # the caller was cancelled meanwhile
                        continue
                    ok, value = job.outcome
                    if ok:
                        job.future.set_result(value)
                    else:
                        job.future.set_exception(value)
        finally:
            self._drainer = None
            # Left over only when the drainer itself was cancelled (shutdown).
            stranded, self._pending = self._pending, []
            for job in stranded:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("storage is shutting down"))
