"""Domain events on NATS JetStream (an external cluster at `NATS_URL`, or `adapters.nats_embedded.EmbeddedNats`).

`JetStreamBus` publishes to the stream `INTERVIEWS` (subjects `interviews.>`) with `Nats-Msg-Id` set to the
event id, so JetStream drops a re-publish of the same event inside the duplicate window; dead letters go to
the stream `INTERVIEWS_DLQ` (subjects `dlq.interviews.>`). The relay that feeds a bus from the outbox is
`adapters.outbox.OutboxRelay`; consumers are `adapters.consumer.EventConsumer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from adapters.bus import DLQ_PREFIX, SUBJECTS, BusUnavailable, check_name, check_publish
from adapters.consumer import Delivery, PullSource

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


class JetStreamBus:
    """EventBus on NATS JetStream. Build with `await JetStreamBus.open(url)`.

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
            reconnect_time_wait=self._reconnect_wait_s,  # type: ignore[arg-type]  # annotated int, slept as float
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

    def jetstream(self) -> JetStreamContext:
        """The JetStream context, for adapters with a stream of their own (`adapters.shared_journal`). Raises
        `BusUnavailable` while NATS is not reachable."""
        if not self.connected or self._js is None:
            raise BusUnavailable(f"not connected to NATS at {redact_url(self.url)}")
        return self._js

    async def key_value(self, bucket: str, *, ttl_s: float) -> KeyValue:
        """The KV bucket `bucket` (one value per key; every key ages out `ttl_s` after its last write), created or
        re-configured to that TTL. Raises `BusUnavailable` while NATS is not reachable."""
        if not self.connected or self._js is None:
            raise BusUnavailable(f"not connected to NATS at {redact_url(self.url)}")
        try:
            try:
                kv = await self._js.key_value(bucket)
                info = await self._js.stream_info(f"KV_{bucket}")
                if info.config.max_age != ttl_s:
                    info.config.max_age = ttl_s
                    info.config.duplicate_window = min(info.config.duplicate_window or ttl_s, ttl_s)
                    await self._js.update_stream(info.config)
                return kv
            except nats.js.errors.BucketNotFoundError:
                return await self._js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=ttl_s,
                                                                      storage=StorageType.FILE))
        except _TRANSIENT as exc:
            raise BusUnavailable(f"KV bucket {bucket!r}: {type(exc).__name__}: {exc}") from exc

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


