"""JetStreamBus, OutboxRelay and EventConsumer against a real nats-server that each test starts and stops.

The server (`testing.nats.NatsServer`, the `nats_server` fixture) runs on a random port with its own store
directory; a restart reuses the port and the store, as a production restart would.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from adapters.bus import BusUnavailable
from adapters.consumer import EventConsumer, ReceivedEvent
from adapters.mongo import MongoStore
from adapters.nats_bus import DLQ_STREAM, STREAM, JetStreamBus
from adapters.outbox import OutboxRelay
from domain.commands import CreateInterview, InterviewService
from domain.events import SegmentEvent, Speaker
from domain.model import Conflict
from testing.fakes import MemoryOutbox, event
from testing.nats import NatsServer


async def publish_retrying(bus: JetStreamBus, subject: str, payload: bytes, msg_id: str) -> None:
    """Publish like the relay does: a request in flight when the connection dropped times out; retry it."""
    while True:
        try:
            return await bus.publish(subject, payload, msg_id)
        except BusUnavailable:
            await bus.wait_connected()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[JetStreamBus]:
    b = await JetStreamBus.open(nats_server.url, wait_s=10)
    assert b.connected
    try:
        yield b
    finally:
        await b.close()


async def stream_ids(url: str, stream: str = STREAM, subject: str = "interviews.>") -> list[str]:
    """Every message id in `stream`, in stream order, read by a fresh ephemeral consumer."""
    return [msg_id for _, msg_id, _ in await stream_messages(url, stream, subject)]


async def stream_messages(url: str, stream: str = STREAM,
                          subject: str = "interviews.>") -> list[tuple[str, str, bytes]]:
    """Every message in `stream` as (subject, message id, payload), in stream order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        total = info.state.messages
        sub = await js.pull_subscribe(
            subject, stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
        )
        messages: list[tuple[str, str, bytes]] = []
        while len(messages) < total:
            for m in await sub.fetch(min(total - len(messages), 256), timeout=5):
                messages.append((m.subject, (m.headers or {}).get("Nats-Msg-Id", ""), m.data))
        await sub.unsubscribe()
        return messages
    finally:
        await nc.close()


async def test_publish_sets_msg_id_and_jetstream_drops_a_duplicate(
    bus: JetStreamBus, nats_server: NatsServer
) -> None:
    r = event(1)
    await bus.publish(r.subject, r.payload, r.id)
    await bus.publish(r.subject, r.payload, r.id)
    assert bus.duplicates == 1
    assert await stream_ids(nats_server.url) == [r.id]
    with pytest.raises(ValueError, match="invalid subject"):
        await bus.publish("interviews.>", b"{}", "x")
    status = bus.status()
    assert status["connected"] is True and status["published"] == 2


async def test_events_written_while_nats_is_down_arrive_once_after_it_returns(
    bus: JetStreamBus, nats_server: NatsServer
) -> None:
    store = MemoryOutbox()
    relay = OutboxRelay(store, bus, backoff_initial_s=0.05, backoff_max_s=0.2)
    relay.start()
    try:
        for n in range(20):
            store.add(event(n))
        relay.notify()
        async with asyncio.timeout(10):
            await relay.wait_until(lambda r: r.published == 20)

        nats_server.stop()
        for n in range(20, 50):  # writes keep committing to the outbox while the bus is down
            store.add(event(n))
            relay.notify()
        async with asyncio.timeout(10):
            await relay.wait_until(lambda r: r.failures_in_a_row >= 2)
        assert relay.status()["healthy"] is False
        assert relay.published == 20
        with pytest.raises(BusUnavailable):
            await bus.publish("interviews.x.started", b"{}", "while-down")

        nats_server.start()
        async with asyncio.timeout(30):
            await relay.wait_until(lambda r: r.published == 50)
        assert relay.status()["healthy"] is True
    finally:
        await relay.aclose()
    assert await stream_ids(nats_server.url) == [f"ev-{n:05d}" for n in range(50)]  # all, once, in order


async def test_bus_opened_while_nats_is_down_connects_when_it_starts(tmp_path: Path, nats_binary: str) -> None:
    server = NatsServer(tmp_path / "nats", nats_binary)
    server.start()
    server.stop()  # now we know a port with nothing listening on it
    b = await JetStreamBus.open(server.url, wait_s=0.2)
    assert isinstance(b, JetStreamBus) and not b.connected
    with pytest.raises(BusUnavailable):
        await b.publish("interviews.a.started", b"{}", "a")
    server.start()
    try:
        async with asyncio.timeout(20):
            await b.wait_connected()
        await b.publish("interviews.a.started", b"{}", "a")
        assert await stream_ids(server.url) == ["a"]
    finally:
        await b.close()
        server.stop()


async def test_nats_without_jetstream_is_unavailable_not_fatal(tmp_path: Path, nats_binary: str) -> None:
    server = NatsServer(tmp_path / "nats", nats_binary, jetstream=False)
    server.start()
    try:
        b = await JetStreamBus.open(server.url, wait_s=1.0)
        assert isinstance(b, JetStreamBus) and not b.connected
        with pytest.raises(BusUnavailable):
            await b.publish("interviews.a.started", b"{}", "a")
        assert b.status()["last_error"]  # says why (JetStream not enabled / timeout)
        await b.close()
    finally:
        server.stop()


async def test_consumer_on_jetstream_dead_letters_after_n_failures(
    bus: JetStreamBus, nats_server: NatsServer
) -> None:
    handled: list[str] = []
    attempts: dict[str, int] = {}

    async def handler(ev: ReceivedEvent) -> None:
        attempts[ev.id] = ev.attempt
        if ev.data["n"] == 2:
            raise RuntimeError("event 2 is poison")
        handled.append(ev.id)

    for n in range(4):
        r = event(n)
        await bus.publish(r.subject, r.payload, r.id)
    consumer = EventConsumer(bus, "scorer", handler, max_attempts=3, retry_delay_s=0.05)
    consumer.start()
    try:
        async with asyncio.timeout(30):
            await consumer.wait_for(lambda c: c.handled == 3 and c.dead_lettered == 1)
    finally:
        await consumer.aclose()
    assert sorted(handled) == ["ev-00000", "ev-00001", "ev-00003"]
    assert attempts["ev-00002"] == 3
    assert await stream_ids(nats_server.url, DLQ_STREAM, "dlq.>") == ["scorer:ev-00002"]

    # The poison message is terminated and the rest acked: a restarted consumer gets nothing again.
    again: list[str] = []

    async def record(ev: ReceivedEvent) -> None:
        again.append(ev.id)

    r = event(9)
    await bus.publish(r.subject, r.payload, r.id)
    consumer = EventConsumer(bus, "scorer", record)
    consumer.start()
    try:
        async with asyncio.timeout(30):
            await consumer.wait_for(lambda c: c.handled == 1)
    finally:
        await consumer.aclose()
    assert again == ["ev-00009"]
    nc = await nats.connect(nats_server.url)
    try:
        jsm = nc.jetstream()
        info = await jsm.consumer_info(STREAM, "scorer")
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
        dead = await jsm.get_last_msg(DLQ_STREAM, "dlq.interviews.iv1.started")
        envelope = json.loads(dead.data)
        assert envelope["event"]["id"] == "ev-00002"
        assert envelope["attempts"] == 3 and "poison" in envelope["error"]
    finally:
        await nc.close()


# --------------------------------------------------------------------------------------------------------
# End to end: InterviewService -> MongoStore outbox -> OutboxRelay -> JetStream -> EventConsumer


async def _new_interview(service: InterviewService) -> str:
    doc = await service.create_interview(
        CreateInterview.parse({"candidateId": "cand-1", "jobId": "job-1", "scheduledAt": "2026-12-01T10:00:00Z"})
    )
    return str(doc["interviewId"])


def _segment(seq: int) -> SegmentEvent:
    speaker = Speaker(role="candidate", name="Ada", participant_id="cand-1")
    return SegmentEvent(speaker, seq, seq * 2.0, seq * 2.0 + 1.5, f"answer number {seq}", final=True)


async def test_service_writes_while_nats_is_down_are_published_once_and_failed_writes_never(
    service: InterviewService, store: MongoStore, bus: JetStreamBus, nats_server: NatsServer
) -> None:
    relay = OutboxRelay(store, bus, idle_poll_s=0.05, backoff_initial_s=0.05, backoff_max_s=0.2)
    relay.start()
    try:
        iid = await _new_interview(service)
        async with asyncio.timeout(10):
            await relay.wait_until(lambda r: r.published == 1)

        nats_server.stop()
        await service.start_interview(iid)
        for seq in range(5):
            assert await service.record_segment(iid, _segment(seq)) is True
        # Writes that fail or change nothing record no event.
        assert await service.record_segment(iid, _segment(2)) is False  # retried segment
        with pytest.raises(Conflict):
            await service.start_interview(iid)  # illegal move
        with pytest.raises(Conflict):
            await service.complete_interview(iid, expected_version=1)  # stale version
        await service.complete_interview(iid)
        async with asyncio.timeout(10):
            await relay.wait_until(lambda r: r.failures_in_a_row >= 2)
        assert relay.published == 1

        nats_server.start()
        async with asyncio.timeout(30):
            await relay.wait_until(lambda r: r.published == 8)
    finally:
        await relay.aclose()

    received: list[ReceivedEvent] = []

    async def audit(ev: ReceivedEvent) -> None:
        received.append(ev)

    consumer = EventConsumer(bus, "audit", audit)
    consumer.start()
    try:
        async with asyncio.timeout(20):
            await consumer.wait_for(lambda c: c.handled == 8)
    finally:
        await consumer.aclose()
    types = Counter(ev.type for ev in received)
    assert types == {
        "InterviewScheduled": 1,
        "InterviewStarted": 1,
        "SegmentTranscribed": 5,
        "InterviewCompleted": 1,
    }
    assert len({ev.id for ev in received}) == 8 and consumer.duplicates == 0
    assert all(ev.interview_id == iid and ev.subject.startswith(f"interviews.{iid}.") for ev in received)
    assert sorted(ev.data["seq"] for ev in received if ev.type == "SegmentTranscribed") == [0, 1, 2, 3, 4]
    assert len(await stream_ids(nats_server.url)) == 8  # nothing published twice
    logged = await store.published_events(iid)
    assert {e["id"] for e in logged} == {ev.id for ev in received}
    assert await store.pending(100) == []


async def test_revisions_are_published_after_their_segments_on_their_own_subject(
    service: InterviewService, store: MongoStore, bus: JetStreamBus, nats_server: NatsServer
) -> None:
    # small batches, and everything written while NATS is down: the relay catches up over several passes
    relay = OutboxRelay(store, bus, batch=2, idle_poll_s=0.05, backoff_initial_s=0.05, backoff_max_s=0.2)
    relay.start()
    try:
        iid = await _new_interview(service)
        await service.start_interview(iid)
        async with asyncio.timeout(10):
            await relay.wait_until(lambda r: r.published == 2)
        nats_server.stop()
        for seq in range(3):
            await service.record_segment(iid, _segment(seq))
        for seq, revision in ((0, 1), (1, 1), (0, 2)):
            better = _segment(seq)
            better.text, better.revision = f"the answer number {seq}", revision
            assert await service.record_revision(iid, better) is True
        assert await service.record_revision(iid, better) is False  # a retried write publishes nothing
        async with asyncio.timeout(10):
            await relay.wait_until(lambda r: r.failures_in_a_row >= 1)
        nats_server.start()
        async with asyncio.timeout(30):
            await relay.wait_until(lambda r: r.published == 8)
    finally:
        await relay.aclose()
    messages = await stream_messages(nats_server.url)  # the stream's `interviews.>` filter captured them
    assert [subject for subject, _, _ in messages] == [
        f"interviews.{iid}.{s}"
        for s in ("scheduled", "started", "segment", "segment", "segment", "revision", "revision", "revision")
    ]
    revised = [json.loads(payload) for _, _, payload in messages[-3:]]
    assert [(r["type"], r["seq"], r["revision"]) for r in revised] == [
        ("SegmentRevised", 0, 1), ("SegmentRevised", 1, 1), ("SegmentRevised", 0, 2)
    ]
    assert revised[2]["segment"]["text"] == "the answer number 0" and revised[2]["participantId"] == "cand-1"
    assert [msg_id for _, msg_id, _ in messages[-3:]] == [r["id"] for r in revised]
    assert await store.pending(100) == []


async def test_consumer_keeps_consuming_across_a_nats_restart(
    bus: JetStreamBus, nats_server: NatsServer
) -> None:
    got: list[str] = []

    async def handler(ev: ReceivedEvent) -> None:
        got.append(ev.id)

    consumer = EventConsumer(bus, "follower", handler)
    consumer.start()
    try:
        r = event(0)
        await bus.publish(r.subject, r.payload, r.id)
        async with asyncio.timeout(10):
            await consumer.wait_for(lambda c: c.handled == 1)
        nats_server.stop()
        nats_server.start()
        for n in (1, 2):
            r = event(n)
            async with asyncio.timeout(20):
                await publish_retrying(bus, r.subject, r.payload, r.id)
        async with asyncio.timeout(20):
            await consumer.wait_for(lambda c: c.handled == 3)
    finally:
        await consumer.aclose()
    assert got == ["ev-00000", "ev-00001", "ev-00002"]
