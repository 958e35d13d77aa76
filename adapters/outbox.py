"""The outbox relay, and the ports it joins: the durable outbox it reads and the event bus it publishes to.

The outbox is written in the same commit as the data (`adapters.mongo.MongoStore`; tests use an in-memory one);
the bus is NATS JetStream (`adapters.nats_bus`; tests of the relay alone use `testing.memory_bus`).
`OutboxRelay` moves events from the one to the other in order, marking them published only after the bus
acknowledged them. While the bus is down it backs off and retries; nothing is dropped, and
an event whose write failed was never in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from adapters.bus import BusUnavailable

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class OutboxRecord:
    """One domain event waiting to be published. `id` doubles as the JetStream message id (de-duplication)."""

    id: str
    subject: str  # e.g. "interviews.<interviewId>.started"
    payload: bytes  # the event's JSON: includes "type", "interviewId", "occurredAt", "id"


class OutboxStore(Protocol):
    """Durable store of events recorded by committed writes and not yet published."""

    async def pending(self, limit: int) -> list[OutboxRecord]: ...

    async def mark_published(self, ids: list[str]) -> None: ...


class EventBus(Protocol):
    """Publishes domain events. Raises `BusUnavailable` when the bus cannot take the message now."""

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> None: ...

    async def close(self) -> None: ...


class OutboxRelay:
    """Publishes the outbox's pending records in order and marks them published, forever, in the background.

    Wakes on `notify()` (call it after a write commits) or every `idle_poll_s`; while the bus is down it
    retries with exponential backoff (`notify()` does not cut a backoff short). A record published but not
    yet marked (crash in between) is published again later; JetStream's `Nats-Msg-Id` de-duplication and the
    consumers' id check make that harmless. `aclose()` publishes what is pending before stopping (bounded by
    its grace period, and at once if the bus is down). `status()` is for /readyz and metrics.
    """

    def __init__(
        self,
        store: OutboxStore,
        bus: EventBus,
        *,
        batch: int = 100,
        idle_poll_s: float = 0.5,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        if batch < 1 or idle_poll_s <= 0 or not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("need batch >= 1, idle_poll_s > 0 and 0 < backoff_initial_s <= backoff_max_s")
        self._store = store
        self._bus = bus
        self._batch = batch
        self._idle_poll_s = idle_poll_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self.passes = 0
        self.published = 0
        self.failures = 0
        self.failures_in_a_row = 0
        self.last_error: str | None = None
        self.last_published_at: float | None = None  # wall clock, for /readyz
        self.backlog = 0  # pending records seen by the last pass (capped at `batch`)

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("relay already started")
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def notify(self) -> None:
        self._wake.set()

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done() and self.failures_in_a_row == 0

    def status(self) -> dict[str, Any]:
        return {
            "running": self._task is not None and not self._task.done(),
            "healthy": self.healthy,
            "passes": self.passes,
            "published": self.published,
            "failures": self.failures,
            "failures_in_a_row": self.failures_in_a_row,
            "backlog": self.backlog,
            "last_error": self.last_error,
            "last_published_at": self.last_published_at,
        }

    async def wait_until(self, predicate: Callable[[OutboxRelay], bool]) -> None:
        """Until `predicate(self)` holds, re-checked after every pass (tests and benchmarks wait on this;
        bound it with `asyncio.timeout`)."""
        async with self._progress:
            await self._progress.wait_for(lambda: predicate(self))

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Publish what is pending (for up to `grace_s`, while the bus takes it), then stop. Whatever is left
        stays in the outbox for the next start."""
        self._stop.set()
        self._wake.set()
        if self._task is None:
            return
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.shield(self._task)
        except TimeoutError:
            log.warning(
                "outbox relay: stopped with events still pending (%s)", self.last_error or "grace expired"
            )
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = self._backoff_initial_s
        while True:
            self._wake.clear()  # before reading, so a notify() during this pass triggers the next one
            try:
                count = await self._pass()
            except Exception as exc:  # noqa: BLE001 - every failure is retried; the loop must not die
                self._failed(exc)
                await self._passed()
                if self._stop.is_set():
                    return  # shutting down: no point waiting for the bus
                await self._sleep(delay)
                delay = min(delay * 2, self._backoff_max_s)
                continue
            if self.failures_in_a_row:
                log.info("outbox relay recovered after %d failed attempts", self.failures_in_a_row)
            self.failures_in_a_row = 0
            delay = self._backoff_initial_s
            await self._passed()
            if count < self._batch:  # drained: stop if asked to, else wait for the next write or poll
                if self._stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_poll_s):
                        await self._wake.wait()

    async def _pass(self) -> int:
        records = await self._store.pending(self._batch)
        self.backlog = len(records)
        done: list[str] = []
        try:
            for record in records:
                await self._publish(record)
                done.append(record.id)
        finally:
            if done:  # also after a failure part-way: what the bus took is not published again
                await self._store.mark_published(done)
                self.published += len(done)
                self.last_published_at = time.time()
        return len(records)

    async def _passed(self) -> None:
        self.passes += 1
        async with self._progress:
            self._progress.notify_all()

    async def _publish(self, record: OutboxRecord) -> None:
        await self._bus.publish(record.subject, record.payload, record.id)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.failures_in_a_row += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.failures_in_a_row == 1:
            if isinstance(exc, BusUnavailable):
                log.warning("outbox relay: bus unavailable (%s); retrying with backoff", exc)
            else:
                log.error("outbox relay: publishing failed; retrying with backoff", exc_info=exc)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

