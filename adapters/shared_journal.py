"""The segment journal every node reads: finals and revisions sent to viewers and not stored yet, in the JetStream
stream `SEGMENT_JOURNAL` (file storage, on the bus's NATS: the embedded nats-server by default, a cluster's with
`NATS_URL`).

Why a stream and not only the node's file (`adapters.rooms.SegmentJournal`): a node killed in the few ms between
sending a final and storing it leaves that final in its own `DATA_DIR`, which no other node reads; the node that
takes the room over would number its next final the same seq and the journaled one would then be a duplicate, lost
from the store although the interviewer saw it. In the stream, the node taking a room over (`adapters.rooms`
`RoomRegistry.join`) first stores the interview's entries with their original seq, then numbers new finals after
them; a periodic sweep stores the entries of interviews that no node holds any more (nobody re-joined). A takeover
that cannot read them (NATS down, no answer within `READ_TIMEOUT_S`) numbers the room's finals
`adapters.rooms.UNREAD_JOURNAL_SEQ_GAP` above what it knows, so the sweep that reads them later stores them with their
own seq instead of finding it taken.

One message per segment on the subject `journal.<interviewId>`, `Nats-Msg-Id` = `interview:participant:seq:revision`
(the same segment published twice is kept once: JetStream drops the second inside its duplicate window), the segment sealed with the
journal key every node derives from the shared master key file (no transcript on NATS in clear). A message is
deleted once the store has its segment; stored twice (a replay racing the first node's own write) is harmless: the
store keeps one segment per (interview, participant, seq[, revision]).

An entry no node can parse (corrupt, on another interview's subject) would never be stored: the read that meets it
logs it once, counts it (`segment_journal_unreadable_total{reason="corrupt"}`) and deletes it (in the background: a
takeover's read never waits on deletes). An entry this node cannot open (sealed with another master key, or sealed
while this node has no key) may be one a correctly keyed node can store: it is logged once per process, counted
(`reason="key"`) and kept; the stream's max age expires it if no node ever can.

NATS unreachable, or an append not acknowledged within `APPEND_TIMEOUT_S` (then for `RETRY_AFTER_S`): `available` is
False and the room writes to the file journal instead (a live interview must survive a bus outage); the first
failing call is logged once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js.api import StorageType, StreamConfig

from adapters.bus import BusUnavailable, check_subject
from adapters.crypto import DataKey, Unreadable
from adapters.nats_bus import MSG_ID_HEADER
from adapters.rooms import journal_entry, journal_record
from domain.events import SegmentEvent

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from adapters.metrics import Metrics
    from adapters.nats_bus import JetStreamBus

log = logging.getLogger(__name__)

STREAM = "SEGMENT_JOURNAL"
PREFIX = "journal."
# A publish is awaited before viewers get the final (adapters.rooms.Room): past this, the room gives up on the
# stream for that final and writes it to the file journal (measured: ~0.4 ms p50 on loopback, `benchmarks.placement`)
APPEND_TIMEOUT_S = 0.5
READ_TIMEOUT_S = 2.0  # a takeover's read of an interview's entries; past it, the room opens without them
# after a failed append, finals go straight to the file journal for this long: NATS connected but JetStream not
# answering would otherwise hold every final APPEND_TIMEOUT_S
RETRY_AFTER_S = 5.0
_TRANSIENT = (nats.errors.Error, asyncio.TimeoutError, OSError, BusUnavailable)
_NO_MESSAGE = 10057  # JetStream's error code for deleting a message that is not there (JSStreamMsgDeleteFailedF)


def _deleted_already(exc: BaseException) -> bool:
    return isinstance(exc, nats.js.errors.NotFoundError) or getattr(exc, "err_code", None) == _NO_MESSAGE


class SharedJournal:
    """The `SEGMENT_JOURNAL` stream on `bus`. Entries are sealed with `key` (None: in clear, tests only); `metrics`
    counts the unreadable entries deleted."""

    def __init__(self, bus: JetStreamBus, key: DataKey | None, *, max_age_s: float = 30 * 24 * 3600.0,
                 duplicate_window_s: float = 120.0, metrics: Metrics | None = None) -> None:
        if duplicate_window_s <= 0 or max_age_s < duplicate_window_s:
            raise ValueError("need 0 < duplicate_window_s <= max_age_s")
        self.bus = bus
        self._key = key
        self._metrics = metrics
        self._config = StreamConfig(name=STREAM, subjects=[PREFIX + ">"], storage=StorageType.FILE,
                                    duplicate_window=duplicate_window_s, max_age=max_age_s)
        self._ready = False
        self._failing = False
        self._retry_at = 0.0  # loop time before which `available` is False (an append failed)
        self.appended = 0
        self.deleted = 0
        # subject -> the unreadable entries its last read met and logged (not logged again while they are there)
        self._reported: dict[str, set[int]] = {}
        self._discarding: set[int] = set()  # corrupt entries being deleted
        self._discards: set[asyncio.Task[None]] = set()  # their deletes (awaited by `aclose`)

    @property
    def available(self) -> bool:
        """Whether a write would be tried now (connected to NATS); else the room writes to the file journal."""
        return self.bus.connected and asyncio.get_running_loop().time() >= self._retry_at

    async def _js(self) -> JetStreamContext:
        js = self.bus.jetstream()
        if not self._ready:
            try:
                await js.stream_info(STREAM)
            except nats.js.errors.NotFoundError:
                await js.add_stream(self._config)
            self._ready = True
        return js

    @staticmethod
    def subject(interview_id: str) -> str:
        return check_subject(PREFIX + interview_id)

    async def append(self, interview_id: str, segment: SegmentEvent) -> int:
        """Write the segment; its stream sequence number (for `done`). BusUnavailable if NATS did not take it within
        `APPEND_TIMEOUT_S` (it may still have: the store keeps one copy whoever writes it)."""
        payload = json.dumps(journal_record(interview_id, segment, self._key), separators=(",", ":")).encode()
        msg_id = f"{interview_id}:{segment.speaker.participant_id}:{segment.seq}:{segment.revision}"
        subject = self.subject(interview_id)
        try:
            async with asyncio.timeout(APPEND_TIMEOUT_S):
                js = await self._js()
                try:
                    ack = await js.publish(subject, payload, headers={MSG_ID_HEADER: msg_id})
                except nats.js.errors.NoStreamResponseError:  # the server lost the stream (a fresh data dir)
                    self._ready = False
                    js = await self._js()
                    ack = await js.publish(subject, payload, headers={MSG_ID_HEADER: msg_id})
        except _TRANSIENT as exc:
            self._retry_at = asyncio.get_running_loop().time() + RETRY_AFTER_S
            raise self._unavailable("append", exc) from exc
        self._failing = False
        self.appended += 1
        return int(ack.seq)

    async def entries(self, interview_id: str) -> list[tuple[int, SegmentEvent]]:
        """The interview's entries not stored yet, oldest first: (stream sequence, segment). Each unreadable entry is
        logged once: a corrupt one is deleted in the background (no node could ever store it, and left it would be read
        again by every sweep); one this node cannot open is kept for a node with the right key. BusUnavailable if NATS
        does not answer."""
        out: list[tuple[int, SegmentEvent]] = []
        corrupt: list[int] = []
        met: set[int] = set()  # unreadable entries of this read
        subject = self.subject(interview_id)
        reported = self._reported.get(subject, set())
        seq = 1
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                js = await self._js()
                while True:
                    try:
                        msg = await js.get_msg(STREAM, seq=seq, subject=subject, next=True)
                    except nats.js.errors.NotFoundError:
                        break
                    n = int(msg.seq or seq)
                    seq = n + 1
                    try:
                        iid, segment = journal_entry(json.loads(msg.data or b""), self._key)
                        if iid != interview_id:
                            raise ValueError(f"an entry of {iid} on {subject}")
                    except Unreadable as exc:
                        met.add(n)
                        if n not in reported:
                            self._unreadable(n, subject, "key", exc)
                        continue
                    except (ValueError, KeyError, TypeError, AttributeError) as exc:
                        met.add(n)
                        if n not in reported:
                            self._unreadable(n, subject, "corrupt", exc)
                        corrupt.append(n)
                        continue
                    out.append((n, segment))
        except _TRANSIENT as exc:
            raise self._unavailable("read", exc) from exc
        if met:  # what the next read meets again is not logged again; what is gone is forgotten
            self._reported[subject] = met
        else:
            self._reported.pop(subject, None)
        corrupt = [n for n in corrupt if n not in self._discarding]
        if corrupt:
            self._discarding.update(corrupt)
            task = asyncio.get_running_loop().create_task(self._discard(corrupt))
            self._discards.add(task)
            task.add_done_callback(self._discards.discard)
        return out

    def _unreadable(self, seq: int, subject: str, reason: str, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.journal_unreadable.labels(reason=reason).inc()
        # the type only: the message of a decoding error may quote the entry, and that may be a transcript
        if reason == "key":
            log.warning("segment journal: entry %d of %s does not open with this node's journal key (%s); kept for a "
                        "node that has the right MASTER_KEY_FILE (it expires with the stream's max age)", seq,
                        subject, type(exc).__name__)
        else:
            log.warning("segment journal: entry %d of %s is corrupt (%s); deleting it", seq, subject,
                        type(exc).__name__)

    async def _discard(self, seqs: list[int]) -> None:
        """Delete corrupt entries, together under one READ_TIMEOUT_S. One not deleted (NATS not answering) is left for
        the next read, which does not log it again; gone already: another node deleted it."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                js = self.bus.jetstream()
                await asyncio.gather(*(js.delete_msg(STREAM, n) for n in seqs), return_exceptions=True)
        except _TRANSIENT:
            pass
        finally:
            self._discarding.difference_update(seqs)

    async def aclose(self) -> None:
        """Wait for the deletes of corrupt entries under way (each batch bounded by READ_TIMEOUT_S)."""
        await asyncio.gather(*self._discards, return_exceptions=True)

    async def interviews(self) -> list[str]:
        """The interviews with entries in the journal (for the sweep). BusUnavailable if NATS does not answer."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                js = await self._js()
                info = await js.stream_info(STREAM, subjects_filter=PREFIX + ">")
        except _TRANSIENT as exc:
            raise self._unavailable("list", exc) from exc
        return sorted(s[len(PREFIX):] for s in (info.state.subjects or {}))

    async def done(self, seq: int) -> None:
        """The store has the entry's segment: delete it. A failure leaves it for a replay, which finds it stored."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                js = await self._js()
                await js.delete_msg(STREAM, seq)
        except _TRANSIENT as exc:
            if not _deleted_already(exc):  # else another node replayed and deleted it
                self._unavailable("delete", exc)
                return
        self.deleted += 1

    async def forget(self, interview_id: str) -> None:
        """Delete every entry of the interview (its candidate's data is being erased)."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                js = await self._js()
                await js.purge_stream(STREAM, subject=self.subject(interview_id))
        except _TRANSIENT as exc:
            raise self._unavailable("purge", exc) from exc

    def _unavailable(self, what: str, exc: BaseException) -> BusUnavailable:
        if isinstance(exc, BusUnavailable):
            err = exc
        else:
            err = BusUnavailable(f"segment journal {what} failed: {type(exc).__name__}: {exc}")
        if not self._failing:
            self._failing = True
            log.warning("shared segment journal unavailable (%s); finals are journaled in DATA_DIR until NATS is back",
                        err)
        return err

