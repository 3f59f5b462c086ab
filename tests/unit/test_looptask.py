"""asyncio.create_task bound to the daemon's loop (relay.daemon.looptask)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from relay.daemon.looptask import PID_CHECKED, bound_create_task


async def _value(x: int) -> int:
    await asyncio.sleep(0)
    return x


def test_tasks_run_on_the_bound_loop_with_their_names_and_context() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def read_var() -> str:
        return var.get()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        original = asyncio.create_task
        with bound_create_task(loop):
            assert (asyncio.create_task is not original) is PID_CHECKED
            task = asyncio.create_task(_value(7), name="seven")
            assert task.get_name() == "seven"
            assert task.get_loop() is loop
            assert await task == 7
            ctx = contextvars.copy_context()
            ctx.run(var.set, "copied")
            assert await asyncio.create_task(read_var(), context=ctx) == "copied"
        assert asyncio.create_task is original

    asyncio.run(main())


def test_another_thread_gets_its_own_running_loop() -> None:
    """A thread running its own loop meanwhile (e.g. a library's helper thread) must not get
    tasks on the daemon's loop."""
    seen: list[object] = []

    def other() -> None:
        async def inner() -> None:
            task = asyncio.create_task(_value(1))
            seen.append(task.get_loop() is asyncio.get_running_loop())
            await task

        asyncio.run(inner())

    async def main() -> None:
        with bound_create_task(asyncio.get_running_loop()):
            thread = threading.Thread(target=other)
            thread.start()
            await asyncio.to_thread(thread.join)

    asyncio.run(main())
    assert seen == [True]


def test_restored_after_an_error() -> None:
    original = asyncio.create_task

    async def main() -> None:
        with bound_create_task(asyncio.get_running_loop()):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(main())
    assert asyncio.create_task is original
