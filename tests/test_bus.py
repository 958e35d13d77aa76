"""The outbox relay and the idempotent consumer over the in-memory double of JetStream (`testing.memory_bus`), without
NATS; `tests/test_bus_nats.py` runs the same flows against a real nats-server.

The outbox is `testing.fakes.MemoryOutbox`, an in-memory OutboxStore the NATS tests use too.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from adapters.bus import DLQ_PREFIX, BusUnavailable, check_subject, subject_matches
from adapters.consumer import EventConsumer, ReceivedEvent
from adapters.nats_bus import redact_url
from adapters.outbox import OutboxRelay
from testing.fakes import MemoryOutbox, event
from testing.memory_bus import InProcessBus


async def _ignore(ev: ReceivedEvent) -> None:
    return None


def test_subject_rules() -> None:
    assert subject_matches("interviews.>", "interviews.a.started")
    assert subject_matches("interviews.*.started", "interviews.a.started")
    assert not subject_matches("interviews.>", "interviews")
    assert not subject_matches("interviews.*", "interviews.a.started")
    assert not subject_matches("interviews.>", "dlq.interviews.a.started")
    assert check_subject("interviews.a.started") == "interviews.a.started"
    for bad in ("", "interviews..x", "interviews.>", "interviews.*.x", "interviews.a b.x"):
        with pytest.raises(ValueError, match="invalid subject"):
            check_subject(bad)
    with pytest.raises(ValueError, match="invalid consumer name"):
        EventConsumer(InProcessBus(), "audit.v1", _ignore)
    assert redact_url("nats://user:secret@host:4222") == "nats://host:4222"


async def test_closed_double_refuses_publish() -> None:
    bus = InProcessBus()
    await bus.close()
    with pytest.raises(BusUnavailable):
        await bus.publish("interviews.a.started", b"{}", "x")


async def test_in_process_bus_deduplicates_by_msg_id_and_validates() -> None:
    bus = InProcessBus()
    await bus.publish("interviews.a.started", b"1", "id-1")
    await bus.publish("interviews.a.started", b"1 again", "id-1")
    await bus.publish("interviews.b.started", b"2", "id-2")
    assert [m[2] for m in bus.messages("interviews.>")] == ["id-1", "id-2"]
    assert bus.duplicates == 1
    with pytest.raises(ValueError, match="msg_id"):
        await bus.publish("interviews.a.started", b"", "")
    with pytest.raises(ValueError, match="invalid subject"):
        await bus.publish("interviews.*.started", b"", "id-3")


async def test_relay_publishes_in_order_and_marks_published() -> None:
    store, bus = MemoryOutbox(), InProcessBus()
    for n in range(250):  # more than one batch
        store.add(event(n))
    relay = OutboxRelay(store, bus, batch=100)
    relay.start()
    async with asyncio.timeout(10):
        await relay.wait_until(lambda r: r.published == 250)
    await relay.aclose()
    assert [m[2] for m in bus.messages()] == [f"ev-{n:05d}" for n in range(250)]
    assert store.published == {f"ev-{n:05d}" for n in range(250)}
    assert relay.status()["running"] is False
    assert relay.status()["failures"] == 0


async def test_notify_wakes_the_relay_before_its_poll_interval() -> None:
    store, bus = MemoryOutbox(), InProcessBus()
    relay = OutboxRelay(store, bus, idle_poll_s=600)
    relay.start()
    async with asyncio.timeout(5):
        await relay.wait_until(lambda r: r.passes >= 1)  # found nothing; now idle for 600 s
    store.add(event(1))
    relay.notify()
    async with asyncio.timeout(5):  # far below the 600 s poll: only notify() can make this pass
        await relay.wait_until(lambda r: r.published == 1)
    await relay.aclose()
    assert [m[2] for m in bus.messages()] == ["ev-00001"]


async def test_relay_retries_a_failed_mark_and_the_bus_drops_the_republish() -> None:
    store, bus = MemoryOutbox(), InProcessBus()
    for n in range(5):
        store.add(event(n))
    store.fail_marks = 2
    relay = OutboxRelay(store, bus, backoff_initial_s=0.01)
    relay.start()
    async with asyncio.timeout(10):
        await relay.wait_until(lambda r: r.published == 5)
    await relay.aclose()
    assert relay.failures == 2
    assert "store went away" in (relay.last_error or "")
    assert len(store.published) == 5
    assert [m[2] for m in bus.messages()] == [f"ev-{n:05d}" for n in range(5)]  # once each
    assert bus.duplicates == 10  # 5 records re-published twice, dropped by msg id


def test_relay_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        OutboxRelay(MemoryOutbox(), InProcessBus(), batch=0)
    with pytest.raises(ValueError):
        OutboxRelay(MemoryOutbox(), InProcessBus(), backoff_initial_s=2, backoff_max_s=1)


async def test_consumer_handles_each_event_once_and_skips_duplicate_ids() -> None:
    bus = InProcessBus()
    seen: list[str] = []

    async def handler(ev: ReceivedEvent) -> None:
        seen.append(ev.id)

    for n in range(10):
        r = event(n)
        await bus.publish(r.subject, r.payload, r.id)
    # Same event id under a different message id (e.g. re-published after the duplicate window).
    r = event(3)
    await bus.publish(r.subject, r.payload, "other-msg-id")
    consumer = EventConsumer(bus, "analytics", handler)
    consumer.start()
    async with asyncio.timeout(5):
        await consumer.wait_for(lambda c: c.handled + c.duplicates == 11)
    await consumer.aclose()
    assert seen == [f"ev-{n:05d}" for n in range(10)]
    assert consumer.duplicates == 1


async def test_consumer_retries_then_succeeds() -> None:
    bus = InProcessBus()
    attempts: list[int] = []

    async def flaky(ev: ReceivedEvent) -> None:
        attempts.append(ev.attempt)
        if ev.attempt < 3:
            raise RuntimeError("downstream busy")

    r = event(1)
    await bus.publish(r.subject, r.payload, r.id)
    consumer = EventConsumer(bus, "flaky", flaky, max_attempts=5, retry_delay_s=0.01)
    consumer.start()
    async with asyncio.timeout(5):
        await consumer.wait_for(lambda c: c.handled == 1)
    await consumer.aclose()
    assert attempts == [1, 2, 3]
    assert consumer.retries == 2 and consumer.dead_lettered == 0
    assert bus.messages(DLQ_PREFIX + ">") == []


async def test_consumer_dead_letters_after_max_attempts_and_moves_on() -> None:
    bus = InProcessBus()
    handled: list[str] = []

    async def handler(ev: ReceivedEvent) -> None:
        if ev.data["n"] == 1:
            raise ValueError("cannot process event 1")
        handled.append(ev.id)

    for n in (1, 2):
        r = event(n)
        await bus.publish(r.subject, r.payload, r.id)
    await bus.publish("interviews.iv1.started", b"\xffnot json", "garbage-1")
    consumer = EventConsumer(bus, "scorer", handler, max_attempts=3, retry_delay_s=0.01)
    consumer.start()
    async with asyncio.timeout(5):
        await consumer.wait_for(lambda c: c.dead_lettered == 2 and c.handled == 1)
    await consumer.aclose()
    assert handled == ["ev-00002"]
    dead = bus.messages(DLQ_PREFIX + "interviews.>")
    assert [(s, mid) for s, _, mid in dead] == [
        ("dlq.interviews.iv1.started", "scorer:garbage-1"),  # undecodable: at once, no retries
        ("dlq.interviews.iv1.started", "scorer:ev-00001"),
    ]
    poison = json.loads(dead[1][1])
    assert poison["attempts"] == 3
    assert poison["consumer"] == "scorer"
    assert poison["event"]["id"] == "ev-00001"
    assert "cannot process event 1" in poison["error"]
    garbage = json.loads(dead[0][1])
    assert garbage["event"] is None and "not JSON" in garbage["error"]


async def test_in_process_consumer_reads_in_batches_from_the_retained_log() -> None:
    bus = InProcessBus(max_msgs=5)
    for n in range(8):  # the first 3 fall out of the bounded log before anyone reads them
        r = event(n)
        await bus.publish(r.subject, r.payload, r.id)
    await bus.publish("interviews.iv2.started", event(99, "iv2").payload, "ev-00099")
    seen: list[str] = []

    async def handler(ev: ReceivedEvent) -> None:
        seen.append(ev.id)

    consumer = EventConsumer(bus, "iv1-only", handler, subject="interviews.iv1.*", batch=2)
    consumer.start()
    async with asyncio.timeout(5):
        await consumer.wait_for(lambda c: c.handled == 4)
    r = event(8)
    await bus.publish(r.subject, r.payload, r.id)
    async with asyncio.timeout(5):
        await consumer.wait_for(lambda c: c.handled == 5)
    await consumer.aclose()
    assert seen == ["ev-00004", "ev-00005", "ev-00006", "ev-00007", "ev-00008"]


async def test_aclose_flushes_what_is_pending() -> None:
    store, bus = MemoryOutbox(), InProcessBus()
    relay = OutboxRelay(store, bus, idle_poll_s=600, batch=2)
    relay.start()
    async with asyncio.timeout(5):
        await relay.wait_until(lambda r: r.passes >= 1)
    for n in range(5):  # committed, but nobody called notify(): only the shutdown flush can publish them
        store.add(event(n))
    async with asyncio.timeout(10):
        await relay.aclose()
    assert [m[2] for m in bus.messages()] == [f"ev-{n:05d}" for n in range(5)]
    assert await store.pending(10) == []


async def test_aclose_with_the_bus_down_returns_and_keeps_the_outbox() -> None:
    store, bus = MemoryOutbox(), InProcessBus()
    await bus.close()  # publishing now raises BusUnavailable
    relay = OutboxRelay(store, bus, idle_poll_s=600, backoff_initial_s=60, backoff_max_s=60)
    for n in range(3):
        store.add(event(n))
    relay.start()
    async with asyncio.timeout(5):
        await relay.wait_until(lambda r: r.failures >= 1)
    assert relay.status()["healthy"] is False and "closed" in (relay.last_error or "")
    async with asyncio.timeout(10):  # below the 60 s backoff and the 30 s grace: shutdown does not wait
        await relay.aclose(grace_s=30)
    assert len(await store.pending(10)) == 3
