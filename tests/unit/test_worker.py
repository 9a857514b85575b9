"""How the service's background tasks wait and stop (component/worker.py)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from component.worker import stop_task

ROOT = Path(__file__).resolve().parents[2]


async def test_a_stop_that_times_out_is_not_dropped() -> None:
    """`stop_task` drops the stopped task's own cancellation, not its caller's: a
    timeout around a stop that does not end still fires."""
    released = asyncio.Event()

    async def stubborn() -> None:  # ignores cancellation until released
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await stop_task(task)
    assert not task.done()
    released.set()
    await task


async def test_a_task_that_failed_tells_its_error_when_stopped() -> None:
    async def broken() -> None:
        raise RuntimeError("broken")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="broken"):
        await stop_task(task)
    await stop_task(None)  # nothing started: nothing to do


def test_the_service_never_waits_with_asyncio_wait_for() -> None:
    """On Python 3.11 `asyncio.wait_for` can drop a cancellation (see the dispatchers'
    stop tests); the service waits with `asyncio.timeout` instead (README, Development)."""
    found = []
    for package in ("component", "storage", "http_bridge"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Attribute) and node.attr == "wait_for":
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                elif isinstance(node, ast.alias) and node.name == "wait_for":
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} (imported)")
    assert found == []
