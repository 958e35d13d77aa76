"""Ports: what the application needs from the outside world, as Protocols owned by the code that uses them.

Each exists because two implementations exist (e.g. NATS JetStream and the in-process bus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol


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


# ---------------------------------------------------------------------------------------------------------
# Persistence of the interview aggregate (issue 4). Implemented by adapters.mongo.MongoStore over the MongoDB wire
# protocol (a real MongoDB, or the embedded nx-27017); tests/test_domain.py runs the same service over an in-memory
# implementation to pin the contract without a server.

if TYPE_CHECKING:
    from domain.commands import CandidateQuery, InterviewQuery
    from domain.events import DomainEvent, SegmentRevised, SegmentTranscribed
    from domain.model import Candidate, Interview


class InterviewStore(Protocol):
    """Interviews, candidates and transcript segments, with the outbox written in the same document write.

    Writes that change an interview carry the events they produced; the store keeps them with the change
    atomically, so `OutboxStore.pending()` yields exactly the events of committed writes.
    """

    async def add_interview(self, interview: Interview, events: list[DomainEvent]) -> None:
        """Insert a new interview. Raises `Conflict` if the id exists."""
        ...

    async def get_interview(self, interview_id: str) -> Interview:
        """Raises `NotFound`."""
        ...

    async def save_interview(self, interview: Interview, expected_version: int, events: list[DomainEvent]) -> None:
        """Replace the interview's state if its stored `metadata.version` is still `expected_version`, storing
        version expected_version + 1. Raises `Conflict(code="version_conflict")` if stale, `NotFound` if gone."""
        ...

    async def find_interviews(self, query: InterviewQuery, limit: int) -> list[Interview]:
        """Ordered by (scheduledAt, interviewId), strictly after `query.after` when it is set."""
        ...

    async def add_segment(self, event: SegmentTranscribed) -> bool:
        """Append a final segment with its unpublished event. False if (interviewId, participantId, seq) exists."""
        ...

    async def add_revision(self, event: SegmentRevised) -> bool:
        """Store a revision of a stored final with its unpublished event, published only after the final's.
        False if (interviewId, participantId, seq, revision) exists; `NotFound` if the final is not stored."""
        ...

    async def list_segments(self, interview_id: str) -> list[dict[str, Any]]:
        """Stored segment documents in recording order, each with its highest revision applied: the fields of
        `REVISED_FIELDS` replaced, plus `revision` and `originalText` (the live final's text)."""
        ...

    async def last_segment_seq(self, interview_id: str, participant_id: str) -> int | None: ...

    async def add_candidate(self, candidate: Candidate) -> None:
        """Raises `Conflict` if the id or the email exists."""
        ...

    async def get_candidate(self, candidate_id: str) -> Candidate: ...

    async def save_candidate(self, candidate: Candidate, expected_version: int) -> None: ...

    async def find_candidates(self, query: CandidateQuery, limit: int) -> list[Candidate]:
        """Ordered by (createdAt, candidateId), strictly after `query.after` when it is set."""
        ...

    async def interview_ids_of(self, candidate_id: str) -> list[str]: ...
