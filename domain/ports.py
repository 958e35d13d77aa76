"""Ports: what the application needs from the outside world, as Protocols owned by the code that uses them.

Each exists because two implementations exist (e.g. NATS JetStream and the in-process bus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
    """Publishes domain events. Raises `BusUnavailable` (adapters) when the bus cannot take the message now."""

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> None: ...

    async def close(self) -> None: ...
