"""Stand-ins for the daemon's ports in unit tests of its loops: no Postgres, no HTTP.

:class:`ScriptedStore` is not a database: each method returns what the test scripted for it
(in order; a default once the script runs out) and records every call, so a test says "the
next claim brings back these jobs" and then asserts what the loop asked for.
:class:`ScriptedSender` answers attempts the same way, and can hold them until released.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from relay.daemon.store import Ack, Job, Stats
from relay.webhook.sender import Result

__all__ = ["Call", "ScriptedSender", "ScriptedStore", "make_job"]


def make_job(i: int, sub: int = 1, timeout_ms: int = 10_000) -> Job:
    """A leased delivery ``i`` of subscription ``sub``."""
    return Job(
        id=i,
        token=uuid.uuid4(),
        attempts=0,
        failures=0,
        outbox_id=i,
        event_id=uuid.uuid4(),
        event_type="order.created",
        payload={},
        version="v1",
        tenant_id=None,
        created_at=datetime.now(UTC),
        subscription_id=sub,
        url="http://127.0.0.1/",
        method="POST",
        headers={},
        event_names={},
        body_map=None,
        secret=None,
        previous_secret=None,
        max_retries=3,
        backoff_ms=5000,
        timeout_ms=timeout_ms,
    )


@dataclass
class Call:
    """One call a loop made: the method's name and its arguments."""

    name: str
    args: tuple[Any, ...]


@dataclass
class ScriptedStore:
    """A :class:`relay.daemon.store.Store` that answers from a script and records the calls.

    ``script(name, *answers)`` queues answers for method ``name``: a value is returned, an
    exception instance is raised. Unscripted calls return an empty answer (no rows).
    """

    calls: list[Call] = field(default_factory=list)
    _answers: dict[str, deque[Any]] = field(default_factory=lambda: defaultdict(deque))

    def script(self, name: str, *answers: Any) -> None:
        self._answers[name].extend(answers)

    def called(self, name: str) -> list[tuple[Any, ...]]:
        """The arguments of every call of ``name``, in order."""
        return [c.args for c in self.calls if c.name == name]

    def _answer(self, name: str, args: tuple[Any, ...], default: Any) -> Any:
        self.calls.append(Call(name, args))
        queue = self._answers[name]
        answer = queue.popleft() if queue else default
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def dispatch(
        self, limit: int, lease_limit: int = 0, lease_seconds: float = 60.0
    ) -> tuple[int, int, list[Job]]:
        result: tuple[int, int, list[Job]] = self._answer(
            "dispatch", (limit, lease_limit, lease_seconds), (0, 0, [])
        )
        return result

    async def claim(
        self, limit: int, lease_seconds: float, saturated: Sequence[int] = ()
    ) -> list[Job]:
        jobs: list[Job] = self._answer("claim", (limit, lease_seconds, list(saturated)), [])
        return jobs

    async def ack(self, acks: Sequence[Ack]) -> set[int]:
        # By default every lease was still ours.
        ids: set[int] = self._answer("ack", (list(acks),), {a.id for a in acks})
        return ids

    async def release(self, jobs: Sequence[tuple[int, uuid.UUID]]) -> int:
        n: int = self._answer("release", ([j[0] for j in jobs],), len(jobs))
        return n

    async def seconds_until_due(self, saturated: Sequence[int] = ()) -> float | None:
        until: float | None = self._answer("seconds_until_due", (list(saturated),), None)
        return until

    async def schema_version(self) -> int | None:
        version: int | None = self._answer("schema_version", (), None)
        return version

    async def ping(self) -> None:
        self._answer("ping", (), None)

    async def heartbeat(self) -> None:
        self._answer("heartbeat", (), None)

    async def stats(self, interval: float) -> Stats:
        stats: Stats = self._answer("stats", (interval,), Stats(0, 0, 0, 0.0, 1, 1))
        return stats

    async def vacuum_if_needed(self, min_dead: int, min_interval: float) -> list[str]:
        done: list[str] = self._answer("vacuum_if_needed", (min_dead, min_interval), [])
        return done

    async def prune_deliveries(self, older_than: float, limit: int) -> tuple[bool, int, int]:
        done: tuple[bool, int, int] = self._answer(
            "prune_deliveries", (older_than, limit), (True, 0, 0)
        )
        return done

    async def prune_outbox(
        self, older_than: float, limit: int, after: int
    ) -> tuple[bool, int, int | None, bool]:
        done: tuple[bool, int, int | None, bool] = self._answer(
            "prune_outbox", (older_than, limit, after), (True, 0, None, True)
        )
        return done

    async def history_bytes(self) -> dict[str, int]:
        sizes: dict[str, int] = self._answer("history_bytes", (), {})
        return sizes

    async def deregister(self) -> None:
        self._answer("deregister", (), None)


class ScriptedSender:
    """An :class:`relay.daemon.attempts.Sender` whose attempts answer ``status`` (204 unless
    told), each held until :meth:`finish` when ``hold`` is set."""

    def __init__(self, *, hold: bool = False, status: int = 204) -> None:
        self.hold = hold
        self.status = status
        self.sent: list[int] = []  # job ids, in the order their attempts started
        self._gates: dict[int, asyncio.Event] = {}

    async def attempt(self, job: Job) -> Result:
        self.sent.append(job.id)
        if self.hold:
            gate = self._gates.setdefault(job.id, asyncio.Event())
            await gate.wait()
        return Result(started_at=datetime.now(UTC), duration_ms=1.0, status_code=self.status)

    def finish(self, *job_ids: int) -> None:
        """Let the held attempts of ``job_ids`` answer."""
        for i in job_ids:
            self._gates.setdefault(i, asyncio.Event()).set()
