"""In-memory implementations of the service's ports, for tests that need a second, controllable one."""

from __future__ import annotations

import json

from adapters.outbox import OutboxRecord


class MemoryOutbox:
    """OutboxStore in memory (the MongoDB one is in adapters.mongo). `fail_marks` makes the next N
    `mark_published` calls raise, like a store that committed the publish but lost the connection before
    recording it."""

    def __init__(self) -> None:
        self.records: list[OutboxRecord] = []
        self.published: set[str] = set()
        self.fail_marks = 0

    def add(self, record: OutboxRecord) -> None:
        self.records.append(record)

    async def pending(self, limit: int) -> list[OutboxRecord]:
        return [r for r in self.records if r.id not in self.published][:limit]

    async def mark_published(self, ids: list[str]) -> None:
        if self.fail_marks:
            self.fail_marks -= 1
            raise ConnectionError("store went away")
        self.published.update(ids)


def event(n: int, interview: str = "iv1", kind: str = "started") -> OutboxRecord:
    """Outbox record number `n`: id `ev-0000n`, subject `interviews.<interview>.<kind>`, a JSON payload."""
    payload = {
        "id": f"ev-{n:05d}",
        "type": "InterviewStarted",
        "interviewId": interview,
        "occurredAt": "2026-11-29T10:00:00Z",
        "n": n,
    }
    return OutboxRecord(f"ev-{n:05d}", f"interviews.{interview}.{kind}", json.dumps(payload).encode())
