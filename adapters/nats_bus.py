"""Domain events on the bus: NATS JetStream or in-process, and idempotent consumers (the relay that feeds the
bus from the outbox is `adapters.outbox.OutboxRelay`).

* `JetStreamBus` publishes to the stream `INTERVIEWS` (subjects `interviews.>`) with `Nats-Msg-Id` set to the
  event id, so JetStream drops a re-publish of the same event inside the duplicate window.
* `InProcessBus` is the same port for the embedded mode (no `NATS_URL`): a bounded in-memory log with the
  same de-duplication and the same consumer semantics, lost on restart (the outbox is what is durable).
* `EventConsumer` runs a handler over a durable pull consumer at least once, skips event ids it has already
  handled, retries failures with a growing delay and moves a message that failed `max_attempts` times to
  the dead-letter subject `dlq.<original subject>` (stream `INTERVIEWS_DLQ`), outside `interviews.>` so a
  consumer of `interviews.>` never receives its own dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from adapters.bus import (
    DLQ_PREFIX,
    SUBJECTS,
    BusUnavailable,
    RecentIds,
    check_name,
    check_publish,
    subject_matches,
)
from adapters.outbox import EventBus

log = logging.getLogger(__name__)

STREAM = "INTERVIEWS"  # subjects `SUBJECTS`
DLQ_STREAM = "INTERVIEWS_DLQ"  # subjects `DLQ_PREFIX + SUBJECTS`
MSG_ID_HEADER = "Nats-Msg-Id"

# nats-py's own exceptions that mean "the server cannot take this now"; everything else is ours to raise.
_TRANSIENT = (nats.errors.Error, asyncio.TimeoutError, OSError)


def redact_url(url: str) -> str:
    """`nats://user:secret@host:4222` -> `nats://host:4222`: URLs go to logs and /readyz, credentials never."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# --------------------------------------------------------------------------------------------------------
# Consumer side: a pull source per bus, and the delivery it hands out.


@dataclass(slots=True)
class Delivery:
    """One message handed to a consumer. `attempt` is 1 on first delivery; `token` belongs to the source."""

    subject: str
    payload: bytes
    msg_id: str
    attempt: int
    token: Any = field(repr=False)


class PullSource(Protocol):
    """A durable consumer's message source; JetStream and in-process implementations below."""

    async def fetch(self, batch: int, wait_s: float) -> list[Delivery]: ...

    async def ack(self, d: Delivery) -> None: ...

    async def nak(self, d: Delivery, delay: float) -> None: ...

    async def term(self, d: Delivery) -> None: ...

    async def close(self) -> None: ...


class Pullable(EventBus, Protocol):
    async def pull(self, durable: str, subject: str = SUBJECTS) -> PullSource: ...


# --------------------------------------------------------------------------------------------------------
# NATS JetStream


class JetStreamBus:
    """EventBus on NATS JetStream. Build with `await JetStreamBus.open(url)` (or `open_bus`).

    The connection is made in the background and kept up by nats-py's reconnect loop, so the service starts
    and keeps accepting writes while NATS is down; `publish` raises `BusUnavailable` until it is back.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = STREAM,
        duplicate_window_s: float = 120.0,
        max_age_s: float = 7 * 24 * 3600.0,
        publish_timeout_s: float = 2.0,
        reconnect_wait_s: float = 0.5,
    ) -> None:
        if duplicate_window_s <= 0 or max_age_s < duplicate_window_s or publish_timeout_s <= 0:
            raise ValueError("need 0 < duplicate_window_s <= max_age_s and publish_timeout_s > 0")
        self.url = url
        self.stream = stream
        self.dlq_stream = DLQ_STREAM if stream == STREAM else f"{stream}_DLQ"
        self._duplicate_window_s = duplicate_window_s
        self._max_age_s = max_age_s
        self._publish_timeout_s = publish_timeout_s
        self._reconnect_wait_s = reconnect_wait_s
        self._nc = NatsClient()
        self._js: JetStreamContext | None = None
        self._ready = asyncio.Event()  # streams set up once
        self._up = asyncio.Event()  # connected right now
        self._connector: asyncio.Task[None] | None = None
        self._closed = False
        self._errors_in_a_row = 0
        self.published = 0
        self.duplicates = 0
        self.last_error: str | None = None

    @classmethod
    async def open(cls, url: str, *, wait_s: float = 2.0, **kwargs: Any) -> JetStreamBus:
        """Start connecting and wait up to `wait_s` for the first connection; return either way."""
        bus = cls(url, **kwargs)
        bus._connector = asyncio.create_task(bus._connect(), name="nats-connect")
        bus._connector.add_done_callback(bus._connector_done)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await bus._ready.wait()
        if not bus._ready.is_set():
            log.warning(
                "NATS at %s not ready yet (%s); events stay in the outbox until it is",
                redact_url(url),
                bus.last_error or "no answer",
            )
        return bus

    def _connector_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            # e.g. bad credentials or URL: nats-py gives up; the bus stays unavailable and says why.
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("NATS connection to %s failed for good: %s", redact_url(self.url), self.last_error)

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self._up.is_set() and self._nc.is_connected

    async def wait_connected(self) -> None:
        """Until connected with the streams set up (bound it with `asyncio.timeout`)."""
        await self._ready.wait()
        await self._up.wait()

    async def _connect(self) -> None:
        # max_reconnect_attempts=-1 makes nats-py retry the *first* connect forever too (it loops in
        # _select_next_server), which is what we want for a bus that may come up after us; after that, its
        # reconnect loop keeps the connection up.
        await self._nc.connect(
            self.url,
            name="interview-worker",
            max_reconnect_attempts=-1,
            reconnect_time_wait=self._reconnect_wait_s,
            connect_timeout=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._js = self._nc.jetstream(timeout=self._publish_timeout_s)
        failures = 0
        while True:
            try:
                await self._ensure_streams()
                break
            except _TRANSIENT as exc:
                # Connected, but JetStream does not answer (not enabled, still starting, disconnected again).
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "NATS stream setup failed (%s); retrying", self.last_error)
                await asyncio.sleep(min(self._reconnect_wait_s * failures, 5.0))
        self._errors_in_a_row = 0
        log.info("NATS connected at %s, stream %s ready", redact_url(self.url), self.stream)
        if self._nc.is_connected:
            self._up.set()
        self._ready.set()

    async def _ensure_streams(self) -> None:
        assert self._js is not None
        await self._ensure_stream(
            StreamConfig(
                name=self.stream,
                subjects=[SUBJECTS],
                storage=StorageType.FILE,
                duplicate_window=self._duplicate_window_s,
                max_age=self._max_age_s,
            )
        )
        await self._ensure_stream(
            StreamConfig(
                name=self.dlq_stream,
                subjects=[DLQ_PREFIX + SUBJECTS],
                storage=StorageType.FILE,
                duplicate_window=self._duplicate_window_s,
                max_age=max(self._max_age_s, 30 * 24 * 3600.0),
            )
        )

    async def _ensure_stream(self, config: StreamConfig) -> None:
        assert self._js is not None and config.name is not None
        try:
            info = await self._js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(config)
            return
        have = info.config
        if (
            have.subjects != config.subjects
            or have.duplicate_window != config.duplicate_window
            or have.max_age != config.max_age
        ):
            await self._js.update_stream(config)

    async def _on_error(self, exc: Exception) -> None:
        self._errors_in_a_row += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        # A down server produces one error per reconnect attempt; say it once, then quietly.
        level = logging.WARNING if self._errors_in_a_row == 1 else logging.DEBUG
        log.log(level, "NATS error: %s", self.last_error)

    async def _on_disconnected(self) -> None:
        self._up.clear()
        if not self._closed:
            log.warning("NATS disconnected from %s", redact_url(self.url))

    async def _on_reconnected(self) -> None:
        self._errors_in_a_row = 0
        self._up.set()
        log.info("NATS reconnected to %s", redact_url(self.url))

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        check_publish(subject, msg_id, closed=self._closed)
        if not self.connected or self._js is None:
            raise BusUnavailable(f"not connected to NATS at {redact_url(self.url)}")
        headers = {MSG_ID_HEADER: msg_id}
        try:
            try:
                ack = await self._js.publish(subject, payload, headers=headers)
            except nats.js.errors.NoStreamResponseError:
                # The server lost the stream (e.g. restarted without its store dir): recreate, retry once.
                await self._ensure_streams()
                ack = await self._js.publish(subject, payload, headers=headers)
        except (nats.errors.BadSubjectError, nats.errors.MaxPayloadError) as exc:
            raise ValueError(f"NATS refused {subject!r}: {exc}") from exc
        except _TRANSIENT as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise BusUnavailable(f"publish to {subject!r} failed: {self.last_error}") from exc
        self.published += 1
        if ack.duplicate:
            self.duplicates += 1

    async def pull(self, durable: str, subject: str = SUBJECTS) -> PullSource:
        """A durable pull consumer (created if missing) with explicit acks and unlimited redelivery."""
        check_name(durable)
        if not self.connected or self._js is None:
            raise BusUnavailable(f"not connected to NATS at {redact_url(self.url)}")
        stream = self.dlq_stream if subject.startswith(DLQ_PREFIX) else self.stream
        config = ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=-1,  # EventConsumer counts attempts and dead-letters itself
            max_ack_pending=1000,
        )
        try:
            sub = await self._js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        except _TRANSIENT as exc:
            raise BusUnavailable(f"cannot create consumer {durable!r}: {type(exc).__name__}: {exc}") from exc
        return _JetStreamPull(sub)

    def status(self) -> dict[str, Any]:
        return {
            "kind": "nats",
            "url": redact_url(self.url),
            "stream": self.stream,
            "connected": self.connected,
            "published": self.published,
            "duplicates": self.duplicates,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if not self._nc.is_closed:
            with contextlib.suppress(*_TRANSIENT):
                await self._nc.close()


class _JetStreamPull:
    def __init__(self, sub: JetStreamContext.PullSubscription) -> None:
        self._sub = sub

    async def fetch(self, batch: int, wait_s: float) -> list[Delivery]:
        try:
            msgs = await self._sub.fetch(batch, timeout=wait_s)
        except nats.errors.TimeoutError:
            return []
        except _TRANSIENT as exc:
            raise BusUnavailable(f"fetch failed: {type(exc).__name__}: {exc}") from exc
        return [self._delivery(m) for m in msgs]

    @staticmethod
    def _delivery(m: Msg) -> Delivery:
        msg_id = (m.headers or {}).get(MSG_ID_HEADER, "")
        return Delivery(m.subject, m.data, msg_id, m.metadata.num_delivered, m)

    async def ack(self, d: Delivery) -> None:
        await self._settle(d.token.ack())

    async def nak(self, d: Delivery, delay: float) -> None:
        await self._settle(d.token.nak(delay=delay))

    async def term(self, d: Delivery) -> None:
        await self._settle(d.token.term())

    @staticmethod
    async def _settle(op: Awaitable[None]) -> None:
        try:
            await op
        except _TRANSIENT as exc:
            # The server redelivers after ack_wait; the consumer's dedupe makes that harmless.
            raise BusUnavailable(f"ack failed: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        with contextlib.suppress(*_TRANSIENT):
            await self._sub.unsubscribe()


# --------------------------------------------------------------------------------------------------------
# In-process


@dataclass(slots=True)
class _LogEntry:
    seq: int
    subject: str
    payload: bytes
    msg_id: str


class InProcessBus:
    """The EventBus of the embedded mode: a bounded in-memory log with JetStream's semantics.

    Publishing de-duplicates by `msg_id` over the last `duplicate_window` ids; `pull(durable)` gives every
    durable consumer each matching message from the start of the retained log, redelivering on `nak`.
    """

    def __init__(self, *, max_msgs: int = 10_000, duplicate_window: int = 100_000) -> None:
        if max_msgs < 1:
            raise ValueError(f"max_msgs must be >= 1, got {max_msgs}")
        self._log: deque[_LogEntry] = deque(maxlen=max_msgs)
        self._seq = 0
        self._recent = RecentIds(duplicate_window)
        self._pulls: dict[str, _LocalPull] = {}
        self._changed = asyncio.Condition()
        self._closed = False
        self.published = 0
        self.duplicates = 0

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        check_publish(subject, msg_id, closed=self._closed)
        if msg_id in self._recent:
            self.duplicates += 1
            return
        self._recent.add(msg_id)
        self._seq += 1
        self._log.append(_LogEntry(self._seq, subject, bytes(payload), msg_id))
        self.published += 1
        async with self._changed:
            self._changed.notify_all()

    async def pull(self, durable: str, subject: str = SUBJECTS) -> PullSource:
        check_name(durable)
        if self._closed:
            raise BusUnavailable("bus is closed")
        pull = self._pulls.get(durable)
        if pull is None:
            pull = self._pulls[durable] = _LocalPull(self, subject)
        elif pull.subject != subject:
            raise ValueError(f"consumer {durable!r} exists with subject {pull.subject!r}, not {subject!r}")
        return pull

    def messages(self, subject: str = ">") -> list[tuple[str, bytes, str]]:
        """Retained (subject, payload, msg_id) matching `subject`, oldest first; for inspection and tests."""
        return [(e.subject, e.payload, e.msg_id) for e in self._log if subject_matches(subject, e.subject)]

    def status(self) -> dict[str, Any]:
        return {
            "kind": "in-process",
            "connected": not self._closed,
            "published": self.published,
            "duplicates": self.duplicates,
            "retained": len(self._log),
        }

    async def close(self) -> None:
        self._closed = True
        async with self._changed:
            self._changed.notify_all()


class _LocalPull:
    def __init__(self, bus: InProcessBus, subject: str) -> None:
        self._bus = bus
        self.subject = subject
        self._next_seq = 1
        self._attempts: dict[int, int] = {}  # seq -> deliveries so far, for un-settled messages
        self._redeliver: list[tuple[float, _LogEntry]] = []  # (due monotonic time, entry)

    def _due(self, now: float, batch: int) -> list[Delivery]:
        out: list[Delivery] = []
        self._redeliver.sort(key=lambda r: r[0])
        while self._redeliver and self._redeliver[0][0] <= now and len(out) < batch:
            _, e = self._redeliver.pop(0)
            out.append(self._deliver(e))
        log_ = self._bus._log
        if log_ and self._next_seq < log_[0].seq:
            self._next_seq = log_[0].seq  # trimmed out of the bounded log before we read it
        if log_ and len(out) < batch:
            for e in itertools.islice(log_, self._next_seq - log_[0].seq, None):
                self._next_seq = e.seq + 1
                if subject_matches(self.subject, e.subject):
                    out.append(self._deliver(e))
                    if len(out) >= batch:
                        break
        return out

    def _deliver(self, e: _LogEntry) -> Delivery:
        n = self._attempts.get(e.seq, 0) + 1
        self._attempts[e.seq] = n
        return Delivery(e.subject, e.payload, e.msg_id, n, e)

    async def fetch(self, batch: int, wait_s: float) -> list[Delivery]:
        if batch < 1 or wait_s <= 0:
            raise ValueError("need batch >= 1 and wait_s > 0")
        deadline = time.monotonic() + wait_s
        cond = self._bus._changed
        async with cond:
            while True:
                if self._bus._closed:
                    raise BusUnavailable("bus is closed")
                now = time.monotonic()
                out = self._due(now, batch)
                if out or now >= deadline:
                    return out
                wait = deadline - now
                if self._redeliver:  # wake for the earliest redelivery (the list is sorted by _due)
                    wait = min(wait, self._redeliver[0][0] - now)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0.001)):
                        await cond.wait()

    async def ack(self, d: Delivery) -> None:
        self._attempts.pop(d.token.seq, None)

    async def nak(self, d: Delivery, delay: float) -> None:
        self._redeliver.append((time.monotonic() + max(delay, 0.0), d.token))
        async with self._bus._changed:
            self._bus._changed.notify_all()

    async def term(self, d: Delivery) -> None:
        self._attempts.pop(d.token.seq, None)

    async def close(self) -> None:
        return None


async def open_bus(nats_url: str | None, **kwargs: Any) -> EventBus:
    """The bus for this configuration: JetStream when `nats_url` is set, otherwise in-process."""
    if not nats_url:
        log.info("NATS_URL not set: events go to the in-process bus")
        return InProcessBus()
    return await JetStreamBus.open(nats_url, **kwargs)


# --------------------------------------------------------------------------------------------------------
# Idempotent consumer


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
