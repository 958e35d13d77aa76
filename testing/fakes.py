"""In-memory implementations of the service's ports, for tests that need a second, controllable one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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


@dataclass(slots=True)
class AuditEntry:
    """Stand-in for adapters.audit.AuditEntry (the same fields), for tests of the routes that record entries."""

    actor_type: str
    actor_id: str
    role: str
    org_id: str
    action: str
    resource_type: str
    resource_id: str
    outcome: str
    address: str
    user_agent: str
    at: datetime
    detail: dict[str, Any] | None = None


class MemoryAuditLog:
    """Stand-in for adapters.audit.AuditLog: keeps entries in a list; `query` pages them newest first."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)

    async def query(self, *, org_id: str, actor: str | None = None, resource: str | None = None,
                    start: datetime | None = None, end: datetime | None = None, cursor: str | None = None,
                    limit: int = 50) -> tuple[list[dict[str, Any]], str | None]:
        found = [e for e in reversed(self.entries) if e.org_id == org_id and actor in (None, e.actor_id)
                 and resource in (None, e.resource_id) and (start is None or e.at >= start)
                 and (end is None or e.at < end)]
        offset = int(cursor or 0)
        page = found[offset:offset + limit]
        rows = [{**{k: getattr(e, k) for k in AuditEntry.__slots__}, "at": e.at.isoformat()} for e in page]
        return rows, str(offset + limit) if offset + limit < len(found) else None
