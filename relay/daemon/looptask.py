"""``asyncio.create_task`` without a system call per task, on Python 3.11.

On Python 3.11, ``asyncio.get_running_loop()`` (which ``asyncio.create_task`` calls) checks
that the running loop belongs to this process with a ``getpid()`` system call, every call
(Python 3.12 dropped the check). aiohttp's ``ClientRequest.send`` calls
``asyncio.create_task`` once per request to write the body, so on 3.11 every webhook paid a
system call for it: 6-7 % of the relay process's CPU in a drain (py-spy ``--native``: ``getpid``
under ``create_task`` from ``aiohttp/client_reqrep.py``), about 8 µs per delivery.

:func:`bound_create_task` replaces ``asyncio.create_task`` while the daemon's loop runs with
one that creates the task on that loop directly when called from the loop's own thread (where
the running loop is that loop, by construction), and defers to the original anywhere else. A
no-op on Python 3.12 and later.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Coroutine, Generator, Iterator
from contextvars import Context
from typing import Any, TypeVar

T = TypeVar("T")

# Whether asyncio.get_running_loop() costs a getpid() system call per call here.
PID_CHECKED = sys.version_info < (3, 12)


@contextlib.contextmanager
def bound_create_task(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Within the block, ``asyncio.create_task`` called on this thread (``loop``'s, which must
    be running it) creates the task on ``loop`` without asking for the running loop."""
    if not PID_CHECKED:
        yield
        return
    original = asyncio.create_task
    owner = threading.get_ident()

    def create_task(
        coro: Generator[Any, None, T] | Coroutine[Any, Any, T],
        *,
        name: str | None = None,
        context: Context | None = None,
    ) -> asyncio.Task[T]:
        if threading.get_ident() != owner or loop.is_closed():
            return original(coro, name=name, context=context)
        return loop.create_task(coro, name=name, context=context)

    asyncio.create_task = create_task
    try:
        yield
    finally:
        asyncio.create_task = original
