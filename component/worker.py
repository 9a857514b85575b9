"""A background task woken by commits: the shape both dispatchers (XMPP outbox, mail) share."""

from __future__ import annotations

import asyncio
from typing import ClassVar


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
