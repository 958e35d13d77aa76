"""A test double of `adapters.nats_bus.JetStreamBus`: `InProcessBus`, JetStream's semantics in memory, for the
outbox relay and consumer tests that need no server (the service itself always runs a real nats-server).

A bounded in-memory log with the same de-duplication by message id and the same consumer semantics as
`adapters.nats_bus.JetStreamBus`, lost on restart (the outbox is what is durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from adapters.bus import SUBJECTS, BusUnavailable, RecentIds, check_name, check_publish, subject_matches
from adapters.consumer import Delivery, PullSource


@dataclass(slots=True)
class _LogEntry:
    seq: int
    subject: str
    payload: bytes
    msg_id: str


class InProcessBus:
    """An EventBus for tests: a bounded in-memory log with JetStream's semantics.

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

