"""Idempotent consumers of the domain events, and the pull-source port both buses implement for them.

`EventConsumer` runs a handler over a durable pull consumer at least once, skips event ids it has already
handled, retries failures with a growing delay and moves a message that failed `max_attempts` times to the
dead-letter subject `dlq.<original subject>` (stream `INTERVIEWS_DLQ` on NATS), outside `interviews.>` so a
consumer of `interviews.>` never receives its own dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.bus import DLQ_PREFIX, SUBJECTS, BusUnavailable, RecentIds, check_name
from adapters.outbox import EventBus

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Delivery:
    """One message handed to a consumer. `attempt` is 1 on first delivery; `token` belongs to the source."""

    subject: str
    payload: bytes
    msg_id: str
    attempt: int
    token: Any = field(repr=False)


class PullSource(Protocol):
    """A durable consumer's message source: `JetStreamBus.pull` (and the tests' `InProcessBus.pull`) return one."""

    async def fetch(self, batch: int, wait_s: float) -> list[Delivery]: ...

    async def ack(self, d: Delivery) -> None: ...

    async def nak(self, d: Delivery, delay: float) -> None: ...

    async def term(self, d: Delivery) -> None: ...

    async def close(self) -> None: ...


class Pullable(EventBus, Protocol):
    """A bus a consumer can read from (and dead-letter to)."""

    async def pull(self, durable: str, subject: str = SUBJECTS) -> PullSource: ...


@dataclass(slots=True, frozen=True)
class ReceivedEvent:
    """A domain event as a consumer sees it: the JSON decoded once, here at the edge."""

    id: str
    type: str
    interview_id: str
    subject: str
    data: dict[str, Any]
    attempt: int


Handler = Callable[[ReceivedEvent], Awaitable[None]]


class EventConsumer:
    """Runs `handler` for each event on a durable consumer: at least once, skipping ids already handled.

    A handler exception is retried after `retry_delay_s * 2**(attempt-1)` (capped at `max_retry_delay_s`);
    on the `max_attempts`-th failure, or at once for a payload that is not an event, the message goes to
    `dlq.<subject>` as a JSON envelope (consumer, subject, attempts, error, the original event) and is
    terminated. The id memory is per process (`remember` ids); redeliveries after a restart reach the
    handler again, so handlers write idempotently (upsert by event id) where that matters.
    """

    def __init__(
        self,
        bus: Pullable,
        name: str,
        handler: Handler,
        *,
        subject: str = SUBJECTS,
        max_attempts: int = 5,
        retry_delay_s: float = 0.5,
        max_retry_delay_s: float = 30.0,
        batch: int = 32,
        remember: int = 100_000,
    ) -> None:
        if max_attempts < 1 or retry_delay_s < 0 or batch < 1:
            raise ValueError("need max_attempts >= 1, retry_delay_s >= 0 and batch >= 1")
        check_name(name)
        self._bus = bus
        self.name = name
        self._handler = handler
        self.subject = subject
        self._max_attempts = max_attempts
        self._retry_delay_s = retry_delay_s
        self._max_retry_delay_s = max_retry_delay_s
        self._batch = batch
        self._seen = RecentIds(remember)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._progress = asyncio.Condition()
        self.handled = 0
        self.duplicates = 0
        self.retries = 0
        self.dead_lettered = 0
        self.last_error: str | None = None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("consumer already started")
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.name}")

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "running": self._task is not None and not self._task.done(),
            "handled": self.handled,
            "duplicates": self.duplicates,
            "retries": self.retries,
            "dead_lettered": self.dead_lettered,
            "last_error": self.last_error,
        }

    async def wait_for(self, predicate: Callable[[EventConsumer], bool]) -> None:
        """Until `predicate(self)` holds, re-checked after every settled message (bound with asyncio.timeout)."""
        async with self._progress:
            await self._progress.wait_for(lambda: predicate(self))

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        source: PullSource | None = None
        delay = 0.1
        try:
            while not self._stop.is_set():
                try:
                    if source is None:
                        source = await self._bus.pull(self.name, self.subject)
                    deliveries = await source.fetch(self._batch, wait_s=1.0)
                    for d in deliveries:
                        await self._settle(source, d)
                    delay = 0.1
                except BusUnavailable as exc:
                    self.last_error = str(exc)
                    log.debug("consumer %s: %s", self.name, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            if source is not None:
                await source.close()

    async def _settle(self, source: PullSource, d: Delivery) -> None:
        try:
            event = self._decode(d)
        except ValueError as exc:
            await self._dead_letter(source, d, f"undecodable: {exc}", None)
            return
        if event.id in self._seen:
            self.duplicates += 1
            await source.ack(d)
            await self._notify()
            return
        try:
            await self._handler(event)
        except Exception as exc:  # noqa: BLE001 - a handler failure is data for the retry/DLQ policy
            self.last_error = f"{type(exc).__name__}: {exc}"
            if d.attempt >= self._max_attempts:
                await self._dead_letter(source, d, self.last_error, event)
            else:
                self.retries += 1
                log.warning(
                    "consumer %s: event %s failed (attempt %d/%d): %s",
                    self.name,
                    event.id,
                    d.attempt,
                    self._max_attempts,
                    self.last_error,
                )
                delay = min(self._retry_delay_s * 2 ** (d.attempt - 1), self._max_retry_delay_s)
                await source.nak(d, delay)
                await self._notify()
            return
        self._seen.add(event.id)
        self.handled += 1
        await source.ack(d)
        await self._notify()

    @staticmethod
    def _decode(d: Delivery) -> ReceivedEvent:
        try:
            data = json.loads(d.payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"payload is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("payload is not a JSON object")
        event_id = data.get("id") or d.msg_id
        if not isinstance(event_id, str) or not event_id:
            raise ValueError("event has no id")
        return ReceivedEvent(
            id=event_id,
            type=str(data.get("type", "")),
            interview_id=str(data.get("interviewId", "")),
            subject=d.subject,
            data=data,
            attempt=d.attempt,
        )

    async def _dead_letter(
        self, source: PullSource, d: Delivery, error: str, event: ReceivedEvent | None
    ) -> None:
        envelope = {
            "type": "deadLetter",
            "consumer": self.name,
            "subject": d.subject,
            "msgId": d.msg_id,
            "attempts": d.attempt,
            "error": error,
            "failedAt": time.time(),
            "event": event.data if event is not None else None,
            "raw": None if event is not None else d.payload.decode("utf-8", errors="replace"),
        }
        key = f"{self.name}:{event.id if event is not None else d.msg_id or d.subject}"
        try:
            await self._bus.publish(DLQ_PREFIX + d.subject, json.dumps(envelope).encode(), key)
        except BusUnavailable:
            # Not dead-lettered yet: leave it for redelivery rather than lose it.
            await source.nak(d, self._max_retry_delay_s)
            raise
        self.dead_lettered += 1
        log.error(
            "consumer %s: event on %s dead-lettered after %d attempts: %s",
            self.name,
            d.subject,
            d.attempt,
            error,
        )
        await source.term(d)
        await self._notify()

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()
