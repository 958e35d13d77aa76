"""MongoDB persistence (motor): interviews, candidates, transcript segments, the outbox, and the embedded server.

Collections
    interviews   `_id` = interviewId; the seed-shaped interview document (transcription.segments kept empty)
                 plus the outbox fields below. Optimistic concurrency on `metadata.version`.
    segments_YYYY_MM   append-only, one document per final segment, `_id` = "<interviewId>:<participantId>:<seq>"
                 and a unique index on (interviewId, participantId, seq): a retried write is a no-op.
    revisions_YYYY_MM  append-only too: one document per revision of a stored final (`segment.revised`), `_id` =
                 "<interviewId>:<participantId>:<seq>:r<revision>", `segmentId` = the final's `_id`. A final is
                 never rewritten: `list_segments` applies each segment's highest revision when it reads.
                 Both are partitioned by the month of the interview's date (`month` = "m2026_12" on each document
                 too): one collection per month, created with its indexes on first use, so expiring a month whose
                 interviews all expired is dropping two collections, not deleting documents (`drop_month`).
                 Everything that reads across interviews (the outbox relay, erasure) reads every partition.
    candidates   `_id` = candidateId, unique `emailIndex` (the email's blind index; the email itself is sealed).
    events       the log of every published domain event (`_id` = event id), written by `mark_published`.
    consents     one document per consent given or withdrawn (participant, notice version, time, address).
    guidance     live guidance stored with the interview, `_id` = "<interviewId>:<guidance key>": the latest alert or
                 question/answer pair per question final, the latest guide coverage and talk balance; each write
                 replaces the document with its new event (an unpublished older state is then never published).
    erasures     `_id` = candidateId of an erased candidate: when, by whom, the signed receipt.
    keys         the candidates' wrapped data keys and the master-key check (adapters.crypto.KeyRing).

Personal fields (`CANDIDATE_SEALED`, `INTERVIEW_SEALED`, `SEGMENT_SEALED`, `CONSENT_SEALED`, and `EVENT_SEALED` in
event payloads) are sealed with the candidate's data key on the way in and opened on the way out; one that does
not open reads as null (or empty) and is listed in the document's `unreadable`.

Outbox design (events are published only after their write commits, and never lost while NATS is down)
    There are no multi-document transactions (nx-27017 has none), so every pending event lives in the SAME
    document write as the state change that produced it:
    * an interview document holds `outbox` = {eventId: {subject, payload, occurredAt, version}}, and the write
      that changes the interview (insert, or a `replace_one` filtered on `metadata.version`) stores the new
      state and its new outbox entries together. The outbox is a map, not an array: the relay removes one
      entry with a single-field `$unset` (and bumps `outboxRev`, which writers check so they never resurrect a
      removed entry); nothing ever uses `$push` (nx-27017 0.8.1 stores pushed subdocuments as JSON strings).
    * a segment, revision or guidance document carries its own event (`eventId`, `subject`, `payload`) and
      `published: false`.
    `pending()` reads all three, oldest first, and never returns a revision before its final's event (a revision
    is written after its final, so it sorts after it; one whose final is still unpublished and not ahead of it in
    the batch waits for the next read). `mark_published()` appends the events to `events`, then `$unset`s the
    outbox entries (decrementing `outboxCount`) and sets `published: true` on segments and revisions. A crash
    between the two republishes with the same id, which JetStream's duplicate window and idempotent consumers
    absorb. A write that failed (stale version, duplicate) stored no outbox entry, so it publishes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import functools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from adapters import read_scope
from adapters.crypto import CandidateErased, DataKey, KeyRing, field_parent, is_sealed, seal_fields
from adapters.outbox import OutboxRecord
from adapters.processes import terminate
from domain.access import DEFAULT_ORG
from domain.commands import CandidateQuery, Cursor, InterviewQuery, TranscriptStamp, transcript_stamp
from domain.events import (
    DomainEvent,
    GuidanceRecorded,
    SegmentRevised,
    SegmentTranscribed,
    StoredSegment,
    guidance_key,
)
from domain.model import Candidate, Conflict, Interview, NotFound, Unavailable

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_SEGMENT_HIDDEN = {"_id": 0, "eventId": 0, "subject": 0, "payload": 0, "published": 0}

# Personal data, sealed with the candidate's data key (adapters.crypto) when the store has a key ring. A segment or
# revision belongs to its interview's candidate (`candidateId`), whose data key is created on first use.
CANDIDATE_SEALED = ("name", "email", "phone", "personalInfo.location", "resume.url", "resume.text", "resume.fileRef",
                    "resume.skills", "skills", "experience", "education", "applications", "notes")
INTERVIEW_SEALED = ("cancelReason", "analysis.overall.summary", "analysis.keywords")
SEGMENT_SEALED = ("text", "words", "speaker.name")
CONSENT_SEALED = ("name", "address")
# what was said, in a guidance event (the guide's own questions inside `items` go with them); in the stored document
# and in the GuidanceRecorded payload alike
GUIDANCE_SEALED = ("guidance.text", "guidance.question", "guidance.answer", "guidance.followUps", "guidance.items",
                   "guidance.extra")
# the same fields in the domain events' JSON (outbox payloads, NATS, the events log)
EVENT_SEALED = {"SegmentTranscribed": ("segment.text", "segment.words", "segment.speaker.name"),
                "SegmentRevised": ("segment.text", "segment.words", "segment.speaker.name"),
                "AnalysisCompleted": ("overall.summary", "keywords"), "InterviewCancelled": ("reason",),
                "GuidanceRecorded": GUIDANCE_SEALED}
_LIST_FIELDS = {"words", "skills", "experience", "education", "applications", "keywords", "answer", "followUps",
                "items", "extra"}


def _empty(path: str) -> Any:
    """What an unreadable field reads as: an empty list for lists, else null."""
    return [] if path.rsplit(".", 1)[-1] in _LIST_FIELDS else None


def event_payload(event: DomainEvent, key: DataKey | None) -> str:
    """The event's JSON with its personal fields sealed: what the outbox keeps and the bus carries."""
    body = event.to_dict()
    seal_fields(body, EVENT_SEALED.get(body["type"], ()), key)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
_OUTBOX_FIELDS = {"eventId": 1, "subject": 1, "payload": 1, "recordedAt": 1, "interviewId": 1, "seq": 1,
                  "segmentId": 1, "month": 1}


def _translated(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Driver errors leave this module as `Unavailable` (our type); domain errors pass through."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except PyMongoError as exc:
            raise Unavailable(f"database error: {type(exc).__name__}: {exc}") from exc

    return wrapper


def _outbox_entry(event: DomainEvent, version: int, key: DataKey | None) -> dict[str, Any]:
    return {"subject": event.subject, "payload": event_payload(event, key), "occurredAt": event.occurred_at,
            "version": version}


PARTITIONED = ("segments", "revisions")
_PARTITION = re.compile(r"^(segments|revisions)_(\d{4}_\d{2})$")
PARTITIONS_REREAD_S = 10.0  # how stale the list of partitions may be (another process may have added one)


def partition_name(base: str, month: str) -> str:
    """The collection of `base` ("segments" / "revisions") for an interview month ("m2026_12" -> segments_2026_12)."""
    return f"{base}_{month.removeprefix('m')}"


def month_of(at: datetime) -> str:
    """The partition of an interview's segments and revisions: "m" + the UTC year and month of its date
    (letter-prefixed for nx-27017, see `_list_key`)."""
    return "m" + at.astimezone(UTC).strftime("%Y_%m")


def _time_key(at: datetime) -> str:
    return "t" + at.astimezone(UTC).strftime("%Y%m%d%H%M%S") + f"{at.microsecond // 1000:03d}"


def _list_key(at: datetime, ident: str) -> str:
    """Keyset-pagination key: 't' + UTC time to the millisecond + '~' + id, compared as a string.

    Why not (date, _id) range queries: nx-27017 0.8.1 (via neosqlite) compares dates at one-second resolution
    (`$gt` ignores milliseconds, `$eq` matches any date in the same second) and treats strings that start with
    a digit and look like dates as dates. A letter-prefixed, fixed-width string orders exactly in both servers.
    """
    return f"{_time_key(at)}~{ident}"


def _segment_doc(event: SegmentTranscribed | SegmentRevised, doc_id: str, key: DataKey | None,
                 **extra: Any) -> dict[str, Any]:
    """A segment (or revision) document: the segment's fields and, in the same write, its unpublished event."""
    body = event.segment.to_dict()
    body.pop("type", None)
    seal_fields(body, SEGMENT_SEALED, key)
    return {"_id": doc_id, "interviewId": event.interview_id, "participantId": event.segment.speaker.participant_id,
            **body, **extra, "recordedAt": event.occurred_at, "eventId": event.id, "subject": event.subject,
            "payload": event_payload(event, key), "published": False}


async def _insert_once(collection: Any, doc: dict[str, Any]) -> bool:
    """Insert `doc`; False when a document with its key is already there (a retried write)."""
    try:
        await collection.insert_one(doc)
    except DuplicateKeyError:
        return False
    return True


def _segment_id(interview_id: str, participant_id: str, seq: int) -> str:
    return f"{interview_id}:{participant_id}:{seq}"


def _interview_doc(interview: Interview, key: DataKey | None) -> dict[str, Any]:
    doc = interview.to_document()
    doc.pop("unreadable", None)
    doc["_id"] = interview.interview_id
    doc["listKey"] = _list_key(interview.scheduled_at, interview.interview_id)
    return seal_fields(doc, INTERVIEW_SEALED, key)


def _eq(value: Any) -> dict[str, Any]:
    """An equality on a scalar field, written `{"$eq": value}`: on MongoDB the same match as the bare value; on
    nx-27017 0.8.1 a plain SQL comparison that its indexes serve, where a bare value becomes an array-aware
    `json_each` test of every document (a listing of 2000 interviews: 1.4 instead of 9.6 ms in SQLite alone).
    Only for fields that never hold arrays (`interviewers` does, and keeps the bare form)."""
    return {"$eq": value}


def _interview(doc: dict[str, Any]) -> Interview:
    return Interview.from_document(doc)


def _key_range(after: Cursor | None, start: datetime | None = None, end: datetime | None = None) -> dict[str, Any]:
    """`listKey` bounds: strictly after the cursor, at or after `start`, before `end` (tighter bound wins)."""
    bounds: dict[str, Any] = {}
    after_key = _list_key(after.at, after.ident) if after else None
    if start is not None and (after_key is None or _time_key(start) > after_key):
        bounds["$gte"] = _time_key(start)
    elif after_key is not None:
        bounds["$gt"] = after_key
    if end is not None:
        bounds["$lt"] = _time_key(end)
    return {"listKey": bounds} if bounds else {}


class MongoStore:
    """The motor client and the repositories (implements `domain.commands.InterviewStore` and
    `adapters.outbox.OutboxStore`)."""

    def __init__(self, client: AsyncIOMotorClient[Any], db: AsyncIOMotorDatabase[Any],
                 keyring: KeyRing | None = None) -> None:
        self.client = client
        self.db = db
        # None: fields are stored as they are (the null cipher `benchmarks.api` compares with; never the server)
        self.keyring = keyring
        self._owner: dict[str, tuple[str, str]] = {}  # interview id -> (candidate id whose key seals it, month)
        self.interviews = db["interviews"]
        # segments and revisions live in monthly partitions (`partition_name`): those known, those indexed here
        self._partitions: dict[str, set[str]] = {base: set() for base in PARTITIONED}
        self._partitions_read_at = -PARTITIONS_REREAD_S
        self._indexed: set[str] = set()
        self.candidates = db["candidates"]
        self.events = db["events"]
        self.consents = db["consents"]  # one document per consent given or withdrawn (adapters.privacy)
        self.guidance = db["guidance"]  # the latest state of each live-guidance item (GuidanceRecorded)
        self.erasures = db["erasures"]  # `_id` = candidate id: when, by whom, and the signed receipt
        # Records read by pending() and not yet marked: event id -> (record, collection holding it, document id):
        # an interview's outbox entry, or a segment or revision document carrying its own event.
        self._seen: dict[str, tuple[OutboxRecord, str, str]] = {}

    @classmethod
    async def connect(cls, url: str, db_name: str = "interviews", *, timeout_s: float = 5.0,
                      key_file: Path | None = None, on_unreadable: Callable[[], None] | None = None) -> MongoStore:
        """With `key_file` (the master key file) personal fields are encrypted (`KeyRing.open` may refuse with
        `MasterKeyRefused`); without, they are stored as they are."""
        client: AsyncIOMotorClient[Any] = AsyncIOMotorClient(
            url, tz_aware=True, serverSelectionTimeoutMS=int(timeout_s * 1000),
            connectTimeoutMS=int(timeout_s * 1000), socketTimeoutMS=30_000, appname="interview-worker")
        store = cls(client, client[db_name])
        try:
            await store.create_indexes()
            if key_file is not None:
                store.keyring = await KeyRing.open(store.db, key_file, on_unreadable=on_unreadable)
        except PyMongoError as exc:
            client.close()
            raise Unavailable(f"cannot reach MongoDB ({type(exc).__name__}: {exc})") from exc
        except BaseException:
            client.close()
            raise
        return store

    # -- keys ---------------------------------------------------------------------------------------------------

    async def _key(self, candidate_id: str) -> DataKey | None:
        if self.keyring is None:
            return None
        try:
            return await self.keyring.data_key(candidate_id)
        except CandidateErased:
            raise Conflict(f"candidate {candidate_id} was erased: nothing more is stored about them",
                           code="candidate_erased") from None

    async def _placement(self, interview_id: str) -> tuple[str, str]:
        """(candidate, month partition) of an interview, cached: neither ever changes."""
        placed = self._owner.get(interview_id)
        if placed is None:
            doc = await self.interviews.find_one({"_id": interview_id}, {"candidateId": 1, "scheduledAt": 1})
            if doc is None:
                raise NotFound("interview", interview_id)
            placed = self._owner[interview_id] = (doc["candidateId"], month_of(doc["scheduledAt"]))
        return placed

    async def candidate_of(self, interview_id: str) -> str:
        """The candidate an interview belongs to."""
        return (await self._placement(interview_id))[0]

    async def interview_key(self, interview_id: str) -> DataKey | None:
        """The data key of the interview's candidate (None without a key ring); `Conflict` once erased,
        `NotFound` for an unknown interview."""
        return await self._interview_key(interview_id)

    async def _interview_key(self, interview_id: str) -> DataKey | None:
        if self.keyring is None:
            return None
        return await self._key(await self.candidate_of(interview_id))

    async def _open(self, doc: dict[str, Any], paths: tuple[str, ...]) -> list[str]:
        """Open the sealed fields of a document read from the store; returns the unreadable ones."""
        if self.keyring is None:  # without keys a sealed field can only be unreadable
            unreadable = []
            for path in paths:
                parent, name = field_parent(doc, path)
                if parent is not None and is_sealed(parent.get(name)):
                    parent[name] = _empty(path)
                    unreadable.append(path)
            return unreadable
        return await self.keyring.open_fields(doc, paths, _empty)

    async def seal_for_interview(self, interview_id: str, doc: dict[str, Any], paths: tuple[str, ...]) -> None:
        """Seal `paths` of `doc` (a document about the interview, e.g. its analysis) with its candidate's key."""
        seal_fields(doc, paths, await self._interview_key(interview_id))

    async def open_sealed(self, doc: dict[str, Any], paths: tuple[str, ...],
                          empty: Callable[[str], Any] = _empty) -> list[str]:
        """Open `paths` of `doc` in place; returns those that do not open (they read as `empty(path)`)."""
        if self.keyring is None:
            return await self._open(doc, paths)
        return await self.keyring.open_fields(doc, paths, empty)

    def email_index(self, email: str) -> str:
        """The blind index of an email (the email itself, lowercased, without a key ring)."""
        return self.keyring.master.blind_index(email) if self.keyring is not None else email.strip().lower()

    async def _read_interview(self, doc: dict[str, Any]) -> Interview:
        doc["unreadable"] = await self._open(doc, INTERVIEW_SEALED)
        return _interview(doc)

    async def _read_candidate(self, doc: dict[str, Any]) -> Candidate:
        doc["unreadable"] = await self._open(doc, CANDIDATE_SEALED)
        return Candidate.from_document(doc)

    async def create_indexes(self) -> None:
        # No compound index may name `_id` (nx-27017 0.8.1 then fails every insert: "JSON path error near '_id'"),
        # one reason the keyset sort uses `listKey` (see _list_key).
        await self.interviews.create_index([("listKey", ASCENDING)])
        await self.interviews.create_index([("status", ASCENDING), ("listKey", ASCENDING)])
        await self.interviews.create_index([("candidateId", ASCENDING), ("listKey", ASCENDING)])
        await self.interviews.create_index([("jobId", ASCENDING), ("listKey", ASCENDING)])
        await self.interviews.create_index([("outboxCount", ASCENDING)])
        await self._partition_unpartitioned()
        await self.guidance.create_index([("published", ASCENDING), ("recordedAt", ASCENDING)])
        await self.guidance.create_index([("interviewId", ASCENDING), ("recordedAt", ASCENDING)])
        await self.guidance.create_index([("eventId", ASCENDING)])
        # Emails are unique within an organisation (a clash across organisations would reveal the other's
        # candidate), compared through their blind index (adapters.crypto), never the (encrypted) email.
        for old in ("email_1", "orgId_1_email_1", "emailIndex_1"):
            with contextlib.suppress(PyMongoError):
                await self.candidates.drop_index(old)
        await self.candidates.create_index([("orgId", ASCENDING), ("emailIndex", ASCENDING)], unique=True)
        await self.interviews.create_index([("orgId", ASCENDING), ("listKey", ASCENDING)])
        await self.candidates.create_index([("listKey", ASCENDING)])
        await self.events.create_index([("interviewId", ASCENDING), ("occurredAt", ASCENDING)])
        await self.consents.create_index([("interviewId", ASCENDING), ("participantId", ASCENDING),
                                          ("at", ASCENDING)])
        await self.interviews.create_index([("status", ASCENDING), ("completedAt", ASCENDING)])
        await self.interviews.create_index([("status", ASCENDING), ("cancelledAt", ASCENDING)])
        # Documents stored before organisations existed belong to the default one (a string `$set` is safe on
        # nx-27017; only dates are not).
        for collection in (self.interviews, self.candidates):
            await collection.update_many({"orgId": {"$exists": False}}, {"$set": {"orgId": DEFAULT_ORG}})

    async def close(self) -> None:
        self.client.close()

    async def ping(self) -> bool:
        try:
            await self.client.admin.command("ping")
        except PyMongoError as exc:
            log.warning("mongo ping failed: %s", exc)
            return False
        return True

    async def drop_database(self) -> None:
        """Tests and benchmarks only."""
        await self.client.drop_database(self.db.name)

    # -- interviews ---------------------------------------------------------------------------------------------

    @_translated
    async def add_interview(self, interview: Interview, events: list[DomainEvent]) -> None:
        key = await self._key(interview.candidate_id)
        doc = _interview_doc(interview, key)
        doc["outbox"] = {e.id: _outbox_entry(e, interview.metadata.version, key) for e in events}
        doc["outboxCount"] = len(events)
        doc["outboxRev"] = 0
        try:
            await self.interviews.insert_one(doc)
        except DuplicateKeyError:
            raise Conflict(f"interview {interview.interview_id} already exists", code="duplicate") from None

    @_translated
    async def interview_access(self, interview_id: str) -> tuple[str, tuple[str, ...]]:
        """(organisation, interviewers) of an interview, for the access policy. Inside an API request
        (adapters.read_scope) the document read here is kept as read, neither copied nor converted (nothing here
        changes it), and serves the handler's `get_interview`."""
        key = ("interview", interview_id)
        doc = read_scope.take(key)
        if doc is None:
            doc = await self._find_interview(interview_id)
        read_scope.keep(key, doc)
        return doc.get("orgId") or DEFAULT_ORG, tuple(doc.get("interviewers", ()))

    async def _find_interview(self, interview_id: str) -> dict[str, Any]:
        doc = await self.interviews.find_one({"_id": interview_id})
        if doc is None:
            raise NotFound("interview", interview_id)
        # the placement never changes: a later read of the interview's segments needs no query for it
        self._owner.setdefault(interview_id, (doc["candidateId"], month_of(doc["scheduledAt"])))
        return doc

    @_translated
    async def get_interview(self, interview_id: str) -> Interview:
        # inside an API request (adapters.read_scope) the access check's read serves the handler's once
        doc = read_scope.take(("interview", interview_id))
        if doc is None:
            doc = await self._find_interview(interview_id)
            if read_scope.active():  # converting changes the document: the next read gets a copy
                read_scope.keep(("interview", interview_id), copy.deepcopy(doc))
        # what a compare-and-replace of this version needs (save_interview), kept for this request's next write
        read_scope.keep(("outbox", interview_id),
                        (doc["metadata"]["version"], doc.get("outbox") or {}, doc.get("outboxRev", 0)))
        return await self._read_interview(doc)

    @_translated
    async def save_interview(self, interview: Interview, expected_version: int, events: list[DomainEvent]) -> None:
        """Compare-and-replace on (metadata.version, outboxRev).

        A whole-document `replace_one`, not `$set`: nx-27017 0.8.1 stores a top-level datetime written by `$set`
        as a naive string ("2026-01-01 00:00:00"), losing type, zone and milliseconds; replacements keep BSON
        dates. The replacement carries the outbox entries still pending plus this write's; the relay's `$unset`
        bumps `outboxRev`, so a replacement read before that unset fails the filter and is rebuilt here instead
        of resurrecting a published event (a `metadata.version` change is a real conflict for the caller).
        """
        new_version = expected_version + 1
        key = await self._key(interview.candidate_id)
        read_scope.drop(("interview", interview.interview_id))
        # this request read the interview at `expected_version`: start from what it read (the filter below
        # still compares version and outboxRev, and a miss reads the store again)
        known = read_scope.take(("outbox", interview.interview_id))
        for _ in range(20):
            if known is not None and known[0] == expected_version:
                current: dict[str, Any] | None = {"metadata": {"version": known[0]}, "outbox": known[1],
                                                  "outboxRev": known[2]}
                known = None
            else:
                current = await self.interviews.find_one({"_id": interview.interview_id},
                                                         {"metadata": 1, "outbox": 1, "outboxRev": 1})
            if current is None:
                raise NotFound("interview", interview.interview_id)
            version = current["metadata"]["version"]
            if version != expected_version:
                raise Conflict(f"interview {interview.interview_id} was changed concurrently (version {version}, "
                               f"expected {expected_version})", code="version_conflict")
            outbox = dict(current.get("outbox") or {})
            outbox.update({e.id: _outbox_entry(e, new_version, key) for e in events})
            rev = current.get("outboxRev", 0)
            doc = _interview_doc(interview, key)
            del doc["_id"]
            doc["metadata"]["version"] = new_version
            doc.update(outbox=outbox, outboxCount=len(outbox), outboxRev=rev)
            result = await self.interviews.replace_one(
                {"_id": interview.interview_id, "metadata.version": expected_version, "outboxRev": rev}, doc)
            if result.matched_count == 1:
                interview.metadata.version = new_version
                return
        raise Unavailable(f"interview {interview.interview_id}: outbox kept changing under the write")

    @_translated
    async def find_interviews(self, query: InterviewQuery, limit: int) -> list[Interview]:
        filt: dict[str, Any] = {"orgId": _eq(query.org_id)}
        if query.interviewer:
            filt["interviewers"] = query.interviewer  # an array: array-aware matching
        if query.status:
            filt["status"] = _eq(query.status)
        if query.candidate_id:
            filt["candidateId"] = _eq(query.candidate_id)
        if query.job_id:
            filt["jobId"] = _eq(query.job_id)
        filt.update(_key_range(query.after, query.scheduled_from, query.scheduled_to))
        docs = await self.interviews.find(filt).sort("listKey", ASCENDING).limit(limit).to_list(None)
        return [await self._read_interview(d) for d in docs]

    # -- monthly partitions of segments and revisions -----------------------------------------------------------

    async def _index_partition(self, base: str, name: str) -> None:
        """The indexes of a partition, once per process (creating an index that exists is a no-op)."""
        if name in self._indexed:
            return
        collection = self.db[name]
        key = [("interviewId", ASCENDING), ("participantId", ASCENDING), ("seq", ASCENDING)]
        await collection.create_index(key + ([("revision", ASCENDING)] if base == "revisions" else []), unique=True)
        await collection.create_index([("interviewId", ASCENDING), ("recordedAt", ASCENDING)])
        await collection.create_index([("published", ASCENDING), ("recordedAt", ASCENDING)])
        await collection.create_index([("eventId", ASCENDING)])
        self._indexed.add(name)
        self._partitions[base].add(name)

    async def _partition_of(self, base: str, interview_id: str, *, writing: bool = False) -> Any:
        """The collection holding an interview's segments or revisions (created with its indexes for a write)."""
        name = partition_name(base, (await self._placement(interview_id))[1])
        if writing:
            await self._index_partition(base, name)
        return self.db[name]

    async def partitions(self, base: str, *, reread: bool = False) -> list[Any]:
        """Every monthly partition of `base`, oldest first (the list re-read at most every few seconds)."""
        if reread or time.monotonic() - self._partitions_read_at >= PARTITIONS_REREAD_S:
            found: dict[str, set[str]] = {b: set() for b in PARTITIONED}
            for name in await self.db.list_collection_names():
                if (m := _PARTITION.match(name)) is not None:
                    found[m.group(1)].add(name)
            self._partitions = {b: found[b] | (self._indexed & self._partitions[b]) for b in PARTITIONED}
            self._partitions_read_at = time.monotonic()
        return [self.db[name] for name in sorted(self._partitions[base])]

    @_translated
    async def months(self) -> list[str]:
        """The months ("m2026_12") that have a segments or revisions partition, oldest first."""
        names = {c.name for base in PARTITIONED for c in await self.partitions(base, reread=True)}
        return sorted({"m" + m.group(2) for n in names if (m := _PARTITION.match(n)) is not None})

    @_translated
    async def drop_month(self, month: str) -> dict[str, int]:
        """Drop a month's partitions (every interview of that month expired): the documents they held, by kind."""
        counts = {}
        for base in PARTITIONED:
            name = partition_name(base, month)
            collection = self.db[name]
            counts[base] = await collection.estimated_document_count()
            await collection.drop()
            self._partitions[base].discard(name)
            self._indexed.discard(name)
        self._owner = {iid: placed for iid, placed in self._owner.items() if placed[1] != month}
        return counts

    @_translated
    async def month_expired(self, month: str, before: datetime) -> bool:
        """Whether every interview scheduled in `month` ("m2026_12") was completed or cancelled before `before`.
        The partition of segments whose interview was gone when they were moved into partitions ("m0000_00") has
        no interview to wait for: expired."""
        year, mon = int(month[1:5]), int(month[6:8])
        if year < 1 or not 1 <= mon <= 12:
            return True
        start = datetime(year, mon, 1, tzinfo=UTC)
        end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
        in_month = _key_range(None, start, end)
        closed = {**in_month, "$or": [{"status": "completed", "completedAt": {"$lt": before}},
                                      {"status": "cancelled", "cancelledAt": {"$lt": before}}]}
        return await self.interviews.count_documents(in_month) == await self.interviews.count_documents(closed)

    async def _partition_unpartitioned(self) -> None:
        """Move what an older version stored in the single `segments` / `revisions` collections into the monthly
        partitions (each document's `month`, else its interview's), then drop those collections."""
        names = set(await self.db.list_collection_names())
        for base in PARTITIONED:
            if base not in names:
                continue
            old = self.db[base]
            moved = 0
            async for doc in old.find({}):
                month = doc.get("month")
                if month is None:
                    placed = await self.interviews.find_one({"_id": doc["interviewId"]}, {"scheduledAt": 1})
                    month = month_of(placed["scheduledAt"]) if placed else "m0000_00"
                    doc["month"] = month
                name = partition_name(base, month)
                await self._index_partition(base, name)
                moved += await _insert_once(self.db[name], doc)
            await old.drop()
            log.warning("moved %d document(s) of %s into monthly partitions", moved, base)

    # -- segments -----------------------------------------------------------------------------------------------

    @_translated
    async def add_segment(self, event: SegmentTranscribed) -> bool:
        seg = event.segment
        doc = _segment_doc(event, _segment_id(event.interview_id, seg.speaker.participant_id, seg.seq),
                           await self._interview_key(event.interview_id),
                           month=(await self._placement(event.interview_id))[1])
        return await _insert_once(await self._partition_of("segments", event.interview_id, writing=True), doc)

    @_translated
    async def add_revision(self, event: SegmentRevised) -> bool:
        seg = event.segment
        segment_id = _segment_id(event.interview_id, seg.speaker.participant_id, seg.seq)
        segments = await self._partition_of("segments", event.interview_id)
        if await segments.find_one({"_id": segment_id}, {"_id": 1}) is None:
            raise NotFound("segment", segment_id)
        doc = _segment_doc(event, f"{segment_id}:r{seg.revision}", await self._interview_key(event.interview_id),
                           segmentId=segment_id, month=(await self._placement(event.interview_id))[1])
        return await _insert_once(await self._partition_of("revisions", event.interview_id, writing=True), doc)

    async def segment_document(self, interview_id: str, segment_id: str) -> dict[str, Any] | None:
        """A stored final as it is in the store (sealed), for tests and tools."""
        return await (await self._partition_of("segments", interview_id)).find_one({"_id": segment_id})

    @_translated
    async def list_segments(self, interview_id: str) -> list[StoredSegment]:
        cursor = (await self._partition_of("segments", interview_id)).find({"interviewId": _eq(interview_id)},
                                                                          _SEGMENT_HIDDEN)
        finals = await cursor.sort([("recordedAt", ASCENDING), ("participantId", ASCENDING),
                                    ("seq", ASCENDING)]).to_list(None)
        if not finals:  # a revision is only stored for a stored final: none to read
            return []
        latest: dict[tuple[str, int], dict[str, Any]] = {}
        revisions = await self._partition_of("revisions", interview_id)
        async for rev in revisions.find({"interviewId": _eq(interview_id)}, _SEGMENT_HIDDEN):
            key = (rev["participantId"], int(rev["seq"]))
            if key not in latest or rev["revision"] > latest[key]["revision"]:
                latest[key] = rev
        out = []
        for doc in finals:
            doc["unreadable"] = await self._open(doc, SEGMENT_SEALED)
            stored = StoredSegment.from_document(doc)
            if (rev := latest.get((doc["participantId"], int(doc["seq"])))) is not None:
                unreadable = await self._open(rev, SEGMENT_SEALED)
                stored = stored.revised_by(StoredSegment.from_document(rev).segment)
                stored.unreadable = tuple(dict.fromkeys([*stored.unreadable, *unreadable]))
            out.append(stored)
        return out

    @_translated
    async def transcript_stamp(self, interview_id: str) -> TranscriptStamp:
        # the ids alone say participant, seq and revision ("<interview>:<participant>:<seq>[:r<revision>]", ids
        # have no ':'); nx-27017 answers an `_id`-only projection in half the time of one with those fields
        which = {"interviewId": _eq(interview_id)}
        segments = await self._partition_of("segments", interview_id)
        finals = set()
        async for d in segments.find(which, {"_id": 1}):
            _, participant_id, seq = d["_id"].rsplit(":", 2)
            finals.add((participant_id, int(seq)))
        if not finals:  # a revision is only stored for a stored final (and list_segments reads none without one)
            return transcript_stamp(finals, [])
        revisions = []
        async for d in (await self._partition_of("revisions", interview_id)).find(which, {"_id": 1}):
            _, participant_id, seq, revision = d["_id"].rsplit(":", 3)
            revisions.append((participant_id, int(seq), int(revision.removeprefix("r"))))
        return transcript_stamp(finals, revisions)

    @_translated
    async def last_segment_seq(self, interview_id: str, participant_id: str) -> int | None:
        segments = await self._partition_of("segments", interview_id)
        doc = await segments.find_one({"interviewId": interview_id, "participantId": participant_id},
                                      {"seq": 1}, sort=[("seq", DESCENDING)])
        return None if doc is None else int(doc["seq"])

    # -- live guidance ------------------------------------------------------------------------------------------

    @_translated
    async def add_guidance(self, event: GuidanceRecorded) -> None:
        key = await self._interview_key(event.interview_id)
        doc_id = f"{event.interview_id}:{guidance_key(event.guidance)}"
        doc = seal_fields({"guidance": event.guidance.to_dict()}, GUIDANCE_SEALED, key)
        doc.update({"_id": doc_id, "interviewId": event.interview_id, "kind": event.kind,
                    "month": (await self._placement(event.interview_id))[1], "recordedAt": event.occurred_at,
                    "eventId": event.id, "subject": event.subject, "payload": event_payload(event, key),
                    "published": False})
        await self.guidance.replace_one({"_id": doc_id}, doc, upsert=True)

    @_translated
    async def list_guidance(self, interview_id: str) -> list[dict[str, Any]]:
        """The interview's stored guidance (opened), oldest first: each item's stream event as `guidance`, with
        `kind` and `recordedAt`."""
        out = []
        cursor = self.guidance.find({"interviewId": interview_id}, {"_id": 0, "guidance": 1, "kind": 1,
                                                                    "recordedAt": 1})
        for doc in await cursor.sort("recordedAt", ASCENDING).to_list(None):
            unreadable = await self._open(doc, GUIDANCE_SEALED)
            if unreadable:
                doc["unreadable"] = unreadable
            out.append(doc)
        return out

    # -- candidates ---------------------------------------------------------------------------------------------

    @_translated
    async def add_candidate(self, candidate: Candidate) -> None:
        doc = await self._candidate_doc(candidate)
        doc["_id"] = candidate.candidate_id
        try:
            await self.candidates.insert_one(doc)
        except DuplicateKeyError as exc:
            raise self._candidate_conflict(candidate, exc) from None

    async def _candidate_doc(self, candidate: Candidate) -> dict[str, Any]:
        """The stored form: personal fields sealed, the email's blind index, no `interviews` and `personalInfo`
        only for the location (name, email and phone are the flat fields)."""
        doc = candidate.to_document()
        del doc["interviews"]
        doc.pop("unreadable", None)
        doc["personalInfo"] = {"location": candidate.location}
        doc["emailIndex"] = self.email_index(candidate.email)
        doc["listKey"] = _list_key(candidate.metadata.created_at, candidate.candidate_id)
        return seal_fields(doc, CANDIDATE_SEALED, await self._key(candidate.candidate_id))

    def _candidate_conflict(self, candidate: Candidate, exc: DuplicateKeyError) -> Conflict:
        if "email" in str(exc):  # the duplicate key is the blind index: say so without repeating the address
            return Conflict("a candidate with this email already exists", code="duplicate")
        return Conflict(f"candidate {candidate.candidate_id} already exists", code="duplicate")

    @_translated
    async def get_candidate(self, candidate_id: str) -> Candidate:
        doc = await self.candidates.find_one({"_id": candidate_id})
        if doc is None:
            raise NotFound("candidate", candidate_id)
        return await self._read_candidate(doc)

    @_translated
    async def save_candidate(self, candidate: Candidate, expected_version: int) -> None:
        doc = await self._candidate_doc(candidate)
        doc["metadata"]["version"] = expected_version + 1
        try:
            # replace_one, not $set: see save_interview about nx-27017 and top-level dates.
            result = await self.candidates.replace_one(
                {"_id": candidate.candidate_id, "metadata.version": expected_version}, doc)
        except DuplicateKeyError as exc:
            raise self._candidate_conflict(candidate, exc) from None
        if result.matched_count == 0:
            if await self.candidates.find_one({"_id": candidate.candidate_id}, {"_id": 1}) is None:
                raise NotFound("candidate", candidate.candidate_id)
            raise Conflict(f"candidate {candidate.candidate_id} was changed concurrently", code="version_conflict")
        candidate.metadata.version = expected_version + 1

    @_translated
    async def find_candidates(self, query: CandidateQuery, limit: int) -> list[Candidate]:
        filt = {"orgId": query.org_id, **_key_range(query.after)}
        if query.email:
            filt["emailIndex"] = self.email_index(query.email)
        docs = await self.candidates.find(filt).sort("listKey", ASCENDING).limit(limit).to_list(None)
        return [await self._read_candidate(d) for d in docs]

    @_translated
    async def interview_ids_of(self, candidate_id: str) -> list[str]:
        cursor = self.interviews.find({"candidateId": candidate_id}, {"_id": 1})
        return [d["_id"] for d in await cursor.sort("listKey", ASCENDING).to_list(None)]

    # -- privacy (adapters.privacy) -----------------------------------------------------------------------------

    @_translated
    async def add_consent(self, record: dict[str, Any]) -> None:
        """A consent given or withdrawn: `interviewId`, `participantId`, `role`, `name`, `action`, `noticeVersion`,
        `at`, `address` (name and address sealed with the interview's candidate's key)."""
        doc = seal_fields({"_id": uuid.uuid4().hex, **record}, CONSENT_SEALED,
                          await self._interview_key(record["interviewId"]))
        await self.consents.insert_one(doc)

    @_translated
    async def consent_given(self, interview_id: str, participant_id: str) -> bool:
        """Whether the participant's latest consent record is an acceptance."""
        doc = await self.consents.find_one({"interviewId": interview_id, "participantId": participant_id},
                                           {"action": 1}, sort=[("at", DESCENDING), ("_id", DESCENDING)])
        return doc is not None and doc.get("action") == "accepted"

    @_translated
    async def list_consents(self, interview_id: str) -> list[dict[str, Any]]:
        out = []
        async for doc in self.consents.find({"interviewId": interview_id}, {"_id": 0}).sort("at", ASCENDING):
            unreadable = await self._open(doc, CONSENT_SEALED)
            if unreadable:
                doc["unreadable"] = unreadable
            out.append(doc)
        return out

    @_translated
    async def list_revisions(self, interview_id: str) -> list[dict[str, Any]]:
        """Every stored revision of the interview's finals (opened), in recording order: the export's history."""
        out = []
        cursor = (await self._partition_of("revisions", interview_id)).find({"interviewId": interview_id},
                                                                           _SEGMENT_HIDDEN)
        for doc in await cursor.sort([("recordedAt", ASCENDING), ("revision", ASCENDING)]).to_list(None):
            unreadable = await self._open(doc, SEGMENT_SEALED)
            if unreadable:
                doc["unreadable"] = unreadable
            out.append(doc)
        return out

    @_translated
    async def erasure_of(self, candidate_id: str) -> dict[str, Any] | None:
        return await self.erasures.find_one({"_id": candidate_id})

    @_translated
    async def begin_erasure(self, candidate_id: str, record: dict[str, Any]) -> None:
        """Mark the candidate erased before anything is destroyed: no data key is created for them from now on.
        Raises `Conflict` when another erasure of them got there first."""
        try:
            await self.erasures.insert_one({"_id": candidate_id, **record})
        except DuplicateKeyError:
            raise Conflict(f"candidate {candidate_id} is being erased already", code="erasure_in_progress") from None

    @_translated
    async def finish_erasure(self, candidate_id: str, receipt: dict[str, Any]) -> None:
        await self.erasures.update_one({"_id": candidate_id}, {"$set": {"receipt": receipt, "done": True}})

    @_translated
    async def has_data_key(self, candidate_id: str) -> bool:
        return self.keyring is not None and await self.keyring.data_key(candidate_id, create=False) is not None

    @_translated
    async def destroy_data_key(self, candidate_id: str) -> bool:
        return self.keyring is not None and await self.keyring.destroy(candidate_id)

    @_translated
    async def delete_interview_data(self, interview_ids: list[str]) -> dict[str, int]:
        """Delete the interviews' segments, revisions, consent records, guidance and logged events; the counts by
        kind."""
        if not interview_ids:
            return {"segments": 0, "revisions": 0, "consents": 0, "guidance": 0, "events": 0}
        which = {"interviewId": {"$in": interview_ids}}
        counts = {base: 0 for base in PARTITIONED}
        for base in PARTITIONED:
            for partition in await self.partitions(base, reread=True):
                counts[base] += (await partition.delete_many(which)).deleted_count
        for name, collection in (("consents", self.consents), ("guidance", self.guidance), ("events", self.events)):
            counts[name] = (await collection.delete_many(which)).deleted_count
        return counts

    @_translated
    async def delete_candidate(self, candidate_id: str) -> bool:
        return bool((await self.candidates.delete_one({"_id": candidate_id})).deleted_count)

    @_translated
    async def closed_before(self, before: datetime) -> list[Interview]:
        """Interviews completed or cancelled before `before` (the retention job's candidates)."""
        query = {"$or": [{"status": "completed", "completedAt": {"$lt": before}},
                         {"status": "cancelled", "cancelledAt": {"$lt": before}}]}
        return [await self._read_interview(d) for d in await self.interviews.find(query).to_list(None)]

    # -- outbox (adapters.outbox.OutboxStore) -------------------------------------------------------------------

    @_translated
    async def pending(self, limit: int) -> list[OutboxRecord]:
        """Up to `limit` unpublished events of committed writes, oldest first; per interview in write order.

        Interviews whose pending segments are returned always have their own pending events read too, so a
        segment is never published ahead of, say, its interview's InterviewStarted when many interviews wait.
        """
        entries: list[tuple[datetime, str, int, int, OutboxRecord]] = []
        segment_of: dict[str, str] = {}  # event id -> segment id, for segments
        revises: dict[str, tuple[str, str]] = {}  # event id -> (segment id, its month), for revisions
        segment_owners: set[str] = set()
        sources = [(1, c) for c in await self.partitions("segments")] + [
            (2, c) for c in await self.partitions("revisions")] + [(3, self.guidance)]
        for kind, collection in sources:
            docs = collection.find({"published": _eq(False)}, _OUTBOX_FIELDS)
            async for doc in docs.sort([("recordedAt", ASCENDING), ("_id", ASCENDING)]).limit(limit):
                record = OutboxRecord(id=doc["eventId"], subject=doc["subject"], payload=doc["payload"].encode())
                self._seen[record.id] = (record, collection.name, doc["_id"])
                segment_owners.add(doc["interviewId"])
                if kind == 1:
                    segment_of[record.id] = doc["_id"]
                elif kind == 2:
                    revises[record.id] = (doc["segmentId"], collection.name.removeprefix("revisions_"))
                entries.append((doc["recordedAt"], doc["interviewId"], kind, int(doc.get("seq", 0)), record))
        seen_docs: set[str] = set()
        queries = [{"outboxCount": {"$gt": 0}, "_id": {"$in": sorted(segment_owners)}}] if segment_owners else []
        queries.append({"outboxCount": {"$gt": 0}})
        for query in queries:
            async for doc in self.interviews.find(query, {"outbox": 1}).limit(limit):
                if doc["_id"] in seen_docs:
                    continue
                seen_docs.add(doc["_id"])
                for event_id, e in (doc.get("outbox") or {}).items():
                    record = OutboxRecord(id=event_id, subject=e["subject"], payload=e["payload"].encode())
                    self._seen[event_id] = (record, self.interviews.name, doc["_id"])
                    entries.append((e["occurredAt"], doc["_id"], 0, int(e.get("version", 0)), record))
        entries.sort(key=lambda t: t[:4])
        batch = [t[4] for t in entries[:limit]]
        if revises:
            batch = await self._revisions_after_their_finals(batch, segment_of, revises)
        return batch

    async def _revisions_after_their_finals(self, batch: list[OutboxRecord], segment_of: dict[str, str],
                                            revises: dict[str, tuple[str, str]]) -> list[OutboxRecord]:
        """`batch` without the revisions whose final is unpublished and not ahead of them in it (a clock stepped
        back between the two writes, or the final fell beyond `limit`): they come back once it is published."""
        in_batch = {segment_of[r.id] for r in batch if r.id in segment_of}
        elsewhere: dict[str, set[str]] = {}  # month -> finals to look up in its partition
        for r in batch:
            if r.id in revises and revises[r.id][0] not in in_batch:
                elsewhere.setdefault(revises[r.id][1], set()).add(revises[r.id][0])
        unpublished = set(in_batch)
        for month, ids in elsewhere.items():
            cursor = self.db[partition_name("segments", month)].find({"_id": {"$in": sorted(ids)}, "published": False},
                                                                     {"_id": 1})
            unpublished.update([d["_id"] async for d in cursor])
        out: list[OutboxRecord] = []
        ahead: set[str] = set()
        for record in batch:
            if record.id in segment_of:
                ahead.add(segment_of[record.id])
            elif record.id in revises and revises[record.id][0] in unpublished - ahead:
                log.debug("revision event %s waits for its final %s", record.id, revises[record.id][0])
                continue
            out.append(record)
        return out

    @_translated
    async def mark_published(self, ids: list[str]) -> None:
        if not ids:
            return
        unknown = [i for i in ids if i not in self._seen]
        if unknown:
            # Not read by this process's pending() (a relay in another process?): read them now.
            await self.pending(max(1000, len(unknown)))
        records = [self._seen[i] for i in ids if i in self._seen]
        await self._log_events([r for r, _, _ in records])
        for where in sorted({where for _, where, _ in records if where != self.interviews.name}):
            event_ids = [r.id for r, w, _ in records if w == where]  # a segment / revision partition, or guidance
            await self.db[where].update_many({"eventId": {"$in": event_ids}, "published": False},
                                             {"$set": {"published": True}})
        # one round trip for the batch (a pass after a burst of writes marks dozens), each update as before
        unsets = [UpdateOne({"_id": owner, f"outbox.{record.id}": {"$exists": True}},
                            {"$unset": {f"outbox.{record.id}": ""}, "$inc": {"outboxCount": -1, "outboxRev": 1}})
                  for record, where, owner in records if where == self.interviews.name]
        if unsets:
            await self.interviews.bulk_write(unsets, ordered=True)
        for i in ids:
            self._seen.pop(i, None)

    async def _log_events(self, records: list[OutboxRecord]) -> None:
        now = datetime.now(UTC)
        docs = []
        for record in records:
            payload = json.loads(record.payload)
            docs.append({"_id": record.id, "interviewId": payload.get("interviewId"), "type": payload.get("type"),
                         "subject": record.subject, "occurredAt": payload.get("occurredAt"), "publishedAt": now,
                         "event": payload})
        if not docs:
            return
        try:
            await self.events.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            # Already logged by an earlier, interrupted mark_published: the same id, the same event.
            if any(err.get("code") != 11000 for err in exc.details.get("writeErrors", [])):
                raise
        except DuplicateKeyError:
            pass

    @_translated
    async def published_events(self, interview_id: str) -> list[dict[str, Any]]:
        """The event log of one interview (published events), oldest first."""
        cursor = self.events.find({"interviewId": interview_id}, {"_id": 0, "event": 1})
        return [d["event"] for d in await cursor.sort([("occurredAt", ASCENDING), ("_id", ASCENDING)]).to_list(None)]


# ---------------------------------------------------------------------------------------------------------
# Embedded server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedMongo:
    """Runs nx-27017 (MongoDB wire protocol over SQLite) on a free 127.0.0.1 port, data under `data_dir/mongo`.

    Ready when it accepts a connection and answers `ping`; `stop()` terminates it (SQLite commits are durable, so
    the next `start()` on the same data_dir sees everything).
    """

    def __init__(self, data_dir: Path, *, start_timeout_s: float = 30.0, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.dir = self.data_dir / "mongo"
        self.start_timeout_s = start_timeout_s
        self.fixed_port = port  # a restart on the same port lets connected clients reconnect (outage tests)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.url: str | None = None
        self._lock_fd: int | None = None

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        self.dir.mkdir(parents=True, exist_ok=True)
        # One SQLite file per logical database; log and pid files under our dir, not the shared /tmp defaults.
        cmd = [sys.executable, "-m", "nx_27017.nx_27017", "--host", "127.0.0.1", "-p", str(port),
               "--data-dir", str(self.dir), "--log-file", str(self.dir / "nx-27017.log"),
               "--pid-file", str(self.dir / "nx-27017.pid")]
        self._stop_stale()
        with open(self.dir / "nx-27017.out", "ab") as out:
            # its own session: Ctrl-C in a terminal signals the whole foreground process group, and the store must
            # outlive that signal, because shutdown drains the streams and persists their last finals first
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)

    def _lock(self) -> None:
        """Hold an exclusive lock on the data dir while this server runs (the kernel drops it when we die)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"{self.dir} is in use by another running server (give each its own DATA_DIR)"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def running_url(self) -> str | None:
        """The URL of the nx-27017 a running server keeps on this data dir (read from its pid file and command
        line), for a second process such as `server.py verify-audit`; None when there is none."""
        try:
            pid = int((self.dir / "nx-27017.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError):
            return None
        if "nx_27017.nx_27017" not in cmdline or str(self.dir) not in cmdline or "-p" not in cmdline:
            return None
        return f"mongodb://127.0.0.1:{int(cmdline[cmdline.index('-p') + 1])}/"

    def _stop_stale(self) -> None:
        """Stop an nx-27017 left running on this data dir by a server that was killed (SIGKILL, OOM): being in its
        own session, it does not die with its parent, and two servers must not share the SQLite files. Only called
        with the data dir locked, so its server is gone."""
        try:
            pid = int((self.dir / "nx-27017.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if b"nx_27017.nx_27017" not in cmdline or str(self.dir).encode() not in cmdline:
            return  # the pid was reused by something else
        log.warning("stopping a stale embedded MongoDB (pid %d) left on %s", pid, self.dir)
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
            if not Path(f"/proc/{pid}").exists():
                return
        raise RuntimeError(f"a stale nx-27017 (pid {pid}) on {self.dir} does not stop")

    async def start(self) -> str:
        if self.url is not None:
            return self.url
        if self._lock_fd is None:
            self._lock()
        last_error = ""
        for _ in range(3):  # the free port can be taken between probing and binding: try another
            port = self.fixed_port or _free_port()
            proc = await asyncio.to_thread(self._spawn, port)
            if await self._wait_ready(proc, port):
                self.proc, self.port = proc, port
                self.url = f"mongodb://127.0.0.1:{port}/"
                log.info("embedded MongoDB (nx-27017) on 127.0.0.1:%d, data in %s", port, self.dir)
                return self.url
            last_error = self._tail()
            await terminate(proc)
        self._unlock()
        raise RuntimeError(f"nx-27017 did not start; output tail:\n{last_error}")

    async def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)  # poll interval while the server process boots
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            client: AsyncIOMotorClient[Any] = AsyncIOMotorClient(f"mongodb://127.0.0.1:{port}/",
                                                                 serverSelectionTimeoutMS=5000)
            try:
                await client.admin.command("ping")
                return True
            except PyMongoError:
                return False
            finally:
                client.close()
        return False

    def _tail(self) -> str:
        try:
            return (self.dir / "nx-27017.out").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def stop(self) -> None:
        if self.proc is not None:
            await terminate(self.proc)
            log.info("embedded MongoDB stopped (exit %s)", self.proc.returncode)
        self.proc = None
        self.url = None
        self.port = None
        self._unlock()
