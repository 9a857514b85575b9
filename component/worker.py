"""What both dispatchers (XMPP outbox, mail) share: a background task woken by commits,
the backoff of a delivery that failed, and how a background task is stopped."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Backoff:
    """Retry delays: `first_ms`, doubling with each attempt spent, at most `max_ms`."""

    first_ms: int
    max_ms: int

    def delay_ms(self, attempts_spent: int) -> int:
        return min(self.first_ms * 2 ** min(attempts_spent, 30), self.max_ms)


async def stop_task(task: asyncio.Task[object] | None) -> None:
    """Cancel `task` and wait until it has ended; raises what it failed with, if not
    its cancellation.

    The caller's own cancellation (a timeout around a stop, say) ends the wait at once:
    `await task` would instead hand it to the task and wait on, and a bare
    `except CancelledError` around it would then drop it."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.result()


class Worker:
    """Runs `_run()` as one task; `wake()` sets the event `_run` waits on."""

    task_name: ClassVar[str] = "worker"

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        raise NotImplementedError
