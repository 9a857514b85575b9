"""What both dispatchers (XMPP outbox, mail) share: a background task woken by commits,
and the backoff of a delivery that failed."""

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
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError
