"""Interview rooms: who is connected, each participant's pipeline stream, and where its events go.

A `Room` exists while an interview has participants. Each `Participant` owns one pipeline stream (created
at its first audio frame, with that frame's rate and channel count) and, for interviewers and observers,
the `analysis` data channels ("viewers") that receive every event of the room. Candidates never become
viewers: the WebRTC layer refuses their channels and `add_viewer` refuses them again here.

Events flow one way: stream -> `Room.publish` (on the event loop, synchronous) -> JSON once -> every
viewer's channel; finals are also kept for late joiners' backlog and queued to the `SegmentWriter`,
which persists them in order through `InterviewService.record_segment` and then wakes the outbox relay.
A `segment.revised` (a final decoded again with the conversation as context) goes the same way, through
`record_revision`, behind the final it revises in the same queue. A write that fails is retried with
backoff until it succeeds or the service shuts down; it is never dropped silently (viewers get an `error`
event, the log and `/metrics` say how many are pending). Every final and revision is journaled before it is sent to
anyone and marked done once stored: in the JetStream stream every node reads (`adapters.shared_journal`; the room's
messages wait behind the acknowledgement, ~0.4 ms), so the node that opens the room next stores what a killed node
(`kill -9`, OOM, a lost machine) left before numbering anything; or, while NATS does not answer, in this node's
`SegmentJournal` file, which it writes on its next start.

Resuming: a participant whose connection drops is kept for `resume_grace_s`; a new WHIP session with the
same token within that time re-attaches to the same stream, so segment numbering continues and nothing
is transcribed twice. After the grace period the stream is drained (in-flight speech becomes final
segments) and the participant leaves. Someone who rejoins later gets a fresh stream whose `seq`
continues after the last one seen (in this process, or in the store), because segments are unique on
(interviewId, participantId, seq) and a repeated number would be discarded as a duplicate.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from adapters.bus import BusUnavailable
from adapters.crypto import DataKey, Unreadable
from adapters.metrics import Metrics
from adapters.tokens import JoinClaims
from domain.events import (
    ConsentEvent,
    ErrorEvent,
    GuidanceEvent,
    GuideCoverageEvent,
    KeywordsEvent,
    LevelEvent,
    ParticipantEvent,
    ProtectedTopicAlert,
    QaPairEvent,
    SegmentEvent,
    SentimentEvent,
    Speaker,
    StoredSegment,
    StreamEvent,
    TalkBalanceEvent,
    to_json,
)
from domain.model import DomainError
from pipeline.guidance import Guidance, GuidanceFinal
from pipeline.stream import Conversation

if TYPE_CHECKING:
    from adapters.shared_journal import SharedJournal
    from pipeline.stream import ParticipantStream

log = logging.getLogger(__name__)

VIEWER_ROLES = ("interviewer", "observer")
# Above this many bytes queued on a viewer's channel, only messages that matter later (finals and their revisions,
# sentiment, keywords, joins/leaves, errors) are still sent; partials and levels are shed and counted.
VIEWER_BUFFER_LIMIT = 512 * 1024
# Left participants whose next segment number this process remembers (the store knows it too, once their
# segments are written): enough for every participant of the live rooms and the recently closed ones.
NEXT_SEQ_KEPT = 4096
# A room whose shared journal cannot be read when it opens here (NATS down, or no answer within its 2 s) numbers each
# participant's finals this far above what the store and this process know: the finals a dead node journaled and
# did not store keep their own seq below, so the sweep that reads them later stores them instead of finding their seq
# taken. Collision-free unless a node dies with this many unstored finals of one participant (hours of speech).
UNREAD_JOURNAL_SEQ_GAP = 10_000
_SHEDDABLE = ("segment.partial", "level")

# (speaker, emit, sample rate, channels, the room's conversation) -> the participant's pipeline stream
StreamFactory = Callable[[Speaker, Callable[[StreamEvent], None], int, int, Conversation], "ParticipantStream"]
SegmentRecorder = Callable[[str, SegmentEvent], Awaitable[bool]]
LastSeqLookup = Callable[[str, str], Awaitable[int | None]]
StoredFinals = Callable[[str], Awaitable[list[str]]]  # interview id -> finals already stored, as wire JSON
ConsentLookup = Callable[[str, str], Awaitable[bool]]  # (interview, participant) -> consent recorded and not withdrawn
# interview id -> its live guidance (the guide loaded, its questions embedded), None: no guidance for it
GuidanceFactory = Callable[[str], Awaitable[Guidance | None]]
ToneLookup = Callable[[str], Awaitable[bool]]  # organisation id -> whether its rooms show the tone of words
# interview id -> the terms its decodes are told (pipeline.vocabulary): read once, when its room opens
VocabularyLookup = Callable[[str], Awaitable[tuple[str, ...]]]
GuidanceRecorder = Callable[[str, GuidanceEvent], Awaitable[None]]  # stores it with the interview, then publishes it
GUIDANCE_QUEUE = 256  # finals waiting for guidance; beyond it they are skipped (counted), the transcript is not


class SharedBacklog(Protocol):
    """The rooms' backlogs shared by every node (adapters.shared_state.RedisState)."""

    def append_backlog(self, interview_id: str, text: str) -> None: ...

    async def backlog(self, interview_id: str) -> list[str] | None: ...  # None: unknown (unreachable)


class Channel(Protocol):
    """What a viewer needs of a data channel (aiortc's RTCDataChannel; the tests' loopback channels)."""

    @property
    def readyState(self) -> str: ...  # noqa: N802 - aiortc's (and the W3C's) spelling

    @property
    def bufferedAmount(self) -> int: ...  # noqa: N802

    def send(self, data: str) -> None: ...


@dataclass(slots=True)
class Viewer:
    participant_id: str
    channel: Channel
    shed: int = 0


def _shift_seq(event: StreamEvent, base: int) -> StreamEvent:
    """Offsets a fresh stream's segment numbers so a rejoining participant continues its numbering."""
    if base == 0:
        return event
    if isinstance(event, SegmentEvent):
        event.seq += base
        if event.continues is not None:
            event.continues += base
    elif isinstance(event, SentimentEvent):
        event.seq += base
    elif isinstance(event, KeywordsEvent):
        event.seq += base
        event.keywords = [replace(k, seqs=tuple(s + base for s in k.seqs)) for k in event.keywords]
    elif isinstance(event, ErrorEvent) and isinstance(event.affected.get("seq"), int):
        event.affected = {**event.affected, "seq": event.affected["seq"] + base}
    return event


class Participant:
    """One person in a room: identity, the pipeline stream, audio clock bookkeeping and level statistics."""

    def __init__(self, room: Room, claims: JoinClaims, *, seq_base: int, session_id: str) -> None:
        self.room = room
        self.claims = claims
        self.speaker = claims.speaker
        self.session_id: str | None = session_id
        self.stream: ParticipantStream | None = None
        self.seq_base = seq_base
        self.next_seq = seq_base  # one past the last final segment seen
        self.in_rate = 0
        self.channels = 0
        self.audio_s = 0.0  # stream time pushed so far
        # (stream time at the end of a push, loop time of that push): maps speech end -> wall time.
        self._arrival_t: deque[float] = deque(maxlen=6000)
        self._arrival_wall: deque[float] = deque(maxlen=6000)
        self.levels = 0
        self.levels_speaking = 0
        self._last_level_at = -1.0
        self.closing = False  # no more audio accepted
        self.removed = False
        # Audio is processed only while the participant's consent is recorded (adapters.privacy): before, frames are
        # dropped; a withdrawal discards the stream, and whatever it still had in flight is never published.
        self.consented = True
        self._generation = 0  # bumped when a stream is discarded: its late events are dropped
        self.linger: asyncio.TimerHandle | None = None

    @property
    def lag_s(self) -> float:
        return float(self.stream.lag_s) if self.stream is not None else 0.0

    @property
    def final_wait_s(self) -> float:
        return float(self.stream.final_wait_s) if self.stream is not None else 0.0

    def push_audio(self, pcm: np.ndarray, rate: int, channels: int) -> bool:
        """Feed interleaved int16 audio; False when the frame was not processed (leaving, or no consent)."""
        if self.closing or not self.consented:
            return False
        if self.stream is None:
            generation = self._generation
            self.seq_base = self.next_seq  # a stream after a discarded one continues the numbering

            def emit(event: StreamEvent) -> None:
                if generation == self._generation:
                    self._on_event(event)

            self.stream = self.room.registry.stream_factory(self.speaker, emit, rate, channels,
                                                            self.room.conversation)
            # each participant's stream time starts at its own first frame: the room's streams meet on arrival
            # time, which the cross-talk guard compares their finals on
            self.stream.conversation_time = self.wall_time_of
            self.in_rate, self.channels = rate, channels
        elif (rate, channels) != (self.in_rate, self.channels):
            raise ValueError(f"audio format changed mid-stream: {rate} Hz x{channels}, "
                             f"stream is {self.in_rate} Hz x{self.channels}")
        self.stream.push(pcm)
        self.audio_s += pcm.size / channels / rate
        self._arrival_t.append(self.audio_s)
        self._arrival_wall.append(asyncio.get_running_loop().time())
        return True

    def wall_time_of(self, stream_s: float) -> float | None:
        """Loop time at which the audio at `stream_s` had arrived (None if it is no longer remembered)."""
        i = bisect.bisect_left(self._arrival_t, stream_s)
        if i >= len(self._arrival_t) or (i == 0 and self._arrival_t[0] - stream_s > 0.1):
            return None
        return self._arrival_wall[i]

    def _on_event(self, event: StreamEvent) -> None:
        if isinstance(event, ErrorEvent):  # the stream's own failures; other errors are logged where they arise
            self.room.registry.metrics.error("stt" if event.code.startswith("stt") else "stream")
            log.warning("stream error of %s in interview %s: %s %s", self.speaker.participant_id,
                        self.room.interview_id, event.code, event.message)
        self.room.publish(self, _shift_seq(event, self.seq_base))

    async def discard_stream(self) -> None:
        """Stop processing at once: the stream is closed without publishing anything more (speech in progress,
        decodes in flight). Its successor, if any, starts at the next frame pushed."""
        self._generation += 1
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                await stream.aclose(drain=False)
            except Exception:
                log.exception("stream of participant %s failed while being discarded", self.speaker.participant_id)

    async def close_stream(self) -> None:
        """Drain the stream: in-flight speech becomes final segments (published before this returns)."""
        self.closing = True
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                await stream.aclose(drain=True)
            except Exception:
                log.exception("stream of participant %s failed while draining", self.speaker.participant_id)
                self.room.registry.metrics.error("stream")


class Room:
    """The live state of one interview: participants, viewers and the short history late viewers get."""

    def __init__(self, registry: RoomRegistry, interview_id: str, backlog: int, org_id: str) -> None:
        self.registry = registry
        self.interview_id = interview_id
        self.org_id = org_id  # the interview's organisation (from the join token that opened the room)
        self.participants: dict[str, Participant] = {}
        self.viewers: dict[int, Viewer] = {}
        self.history: deque[str] = deque(maxlen=backlog)  # finals, revisions, sentiment, consent changes: JSON
        self.latest_keywords: dict[str, str] = {}  # participant id -> last keywords JSON
        # every participant's recent finals: each stream's decodes are prompted with the whole conversation
        # (an answer decodes better after the question), and it outlives a participant's reconnect
        self.conversation = Conversation()
        # live guidance: finals go through one queue to one worker, which runs `Guidance.observe` in a thread
        self.t0 = asyncio.get_running_loop().time()  # room time 0: every participant's finals on one clock
        self.guidance_queue: asyncio.Queue[tuple[GuidanceFinal, float] | None] | None = None
        self.guidance_worker: asyncio.Task[None] | None = None
        self.latest_guidance: dict[str, str] = {}  # "guide.coverage" / "talk.balance" / "qa.pair:<pid>:<seq>"
        # the tone of words (sentiment) is sent only when the organisation shows it (OrgPolicy.tone; off in eu
        # unless turned on); decided when the room opens
        self.tone = True
        # messages held behind a final whose shared journal write is under way: (JSON, type, kept for the backlog,
        # that write); sent in order once it is done (~0.4 ms p50)
        self._held: deque[tuple[str, str, bool, asyncio.Task[None] | None]] = deque()

    # ---- fan-out -------------------------------------------------------------------------------------
    def publish(self, source: Participant | None, event: StreamEvent) -> None:
        metrics = self.registry.metrics
        if isinstance(event, LevelEvent):
            if source is not None:
                # The stream throttles levels; this keeps a misbehaving one from flooding viewers.
                if event.at_s - source._last_level_at < 0.08:
                    return
                source._last_level_at = event.at_s
                source.levels += 1
                source.levels_speaking += int(event.speaking)
        text = to_json(event)
        kind = event.type
        keep = False  # an entry of the backlog
        journaling: asyncio.Task[None] | None = None
        if isinstance(event, SegmentEvent) and event.final:
            (metrics.segments_revised if event.revision else metrics.segments_final).inc()
            if source is not None:
                source.next_seq = max(source.next_seq, event.seq + 1)
            # first: nothing after it can lose the final (its `timing` is how this process was busy: not stored)
            journaling = self.registry.writer.submit(self.interview_id,
                                                     replace(event, timing=None) if event.timing else event)
            keep = True
        elif isinstance(event, SentimentEvent | ConsentEvent):
            if isinstance(event, SentimentEvent) and not self.tone:
                return
            keep = True
        elif isinstance(event, KeywordsEvent):
            self.latest_keywords[event.speaker.participant_id] = text
        elif isinstance(event, ProtectedTopicAlert):
            keep = True
            metrics.guidance_alerts.labels(topic=event.topic).inc()
            if self.registry.on_alert is not None:
                try:
                    self.registry.on_alert(self.interview_id, self.org_id, event)
                except Exception:  # the audit trail's trouble must not stop the alert reaching the interviewer
                    log.exception("recording the alert on seq %d of interview %s failed", event.seq,
                                  self.interview_id)
        elif isinstance(event, QaPairEvent):
            self.latest_guidance[f"qa.pair:{event.question.participant_id}:{event.question.seq}"] = text
        elif isinstance(event, GuideCoverageEvent | TalkBalanceEvent):
            self.latest_guidance[kind] = text
        self._deliver(text, kind, keep, journaling)
        if (isinstance(event, SegmentEvent) and event.final and not event.revision and source is not None
                and self.guidance_queue is not None):
            self._queue_for_guidance(source, event)
        # (a revision comes late by design: how late is no final latency)
        if (isinstance(event, SegmentEvent) and event.final and not event.revision and event.text
                and source is not None):
            spoken_end = source.wall_time_of(event.end_s)
            if spoken_end is not None:
                loop = asyncio.get_running_loop()

                def observe(_: object = None, end: float = spoken_end) -> None:
                    metrics.final_latency.observe(max(0.0, loop.time() - end))

                if journaling is not None and not journaling.done():
                    journaling.add_done_callback(observe)  # viewers get it then: the journal's wait counts
                else:
                    observe()

    def _deliver(self, text: str, kind: str, keep: bool, journaling: asyncio.Task[None] | None) -> None:
        """Send to the viewers (and keep for the backlog) now, or, while a final's shared journal write is under way,
        after it in publishing order: a viewer never sees a final that no node could store if this one died."""
        if self._held or (journaling is not None and not journaling.done()):
            self._held.append((text, kind, keep, journaling))
            if journaling is not None:
                journaling.add_done_callback(self._release_held)
            return
        if keep:
            self.remember(text)
        self._send_all(text, kind)

    def _release_held(self, _: object = None) -> None:
        while self._held:
            text, kind, keep, journaling = self._held[0]
            if journaling is not None and not journaling.done():
                return
            self._held.popleft()
            if keep:
                self.remember(text)
            self._send_all(text, kind)

    def clear_held(self) -> None:
        self._held.clear()

    async def release_held(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the shared journal writes that hold messages back, so they reach the
        viewers still connected (shutdown: before anyone leaves the room). What is still held then is dropped, logged
        and counted (`analysis_messages_dropped_total{reason="shutdown"}`): its finals are still journaled for the
        store, only their live send is lost."""
        pending = {j for _, _, _, j in self._held if j is not None and not j.done()}
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        self._release_held()
        if self._held:
            finals = sum(kind == "segment.final" for _, kind, _, _ in self._held)
            log.warning("interview %s: %d message(s) (%d final(s)) not sent to its viewers at shutdown: their shared "
                        "journal write did not finish within %.1f s (the finals are journaled for the store)",
                        self.interview_id,
                        len(self._held), finals, timeout_s)
            self.registry.metrics.messages_dropped.labels(reason="shutdown").inc(len(self._held))
            self._held.clear()

    def remember(self, text: str) -> None:
        """An entry of the backlog late viewers get, here and (with Redis) for a node that takes the room over."""
        self.history.append(text)
        if self.registry.shared_backlog is not None:
            self.registry.shared_backlog.append_backlog(self.interview_id, text)

    def _queue_for_guidance(self, source: Participant, event: SegmentEvent) -> None:
        # text the guards distrust (invented, another's voice) is shown but never analysed
        if not event.text.strip() or event.hallucination or event.crosstalk or self.guidance_queue is None:
            return
        now = asyncio.get_running_loop().time()
        start, end = source.wall_time_of(event.start_s), source.wall_time_of(event.end_s)
        if start is None or end is None:
            end = now
            start = end - (event.end_s - event.start_s)
        final = GuidanceFinal(source.speaker.participant_id, source.claims.role, event.seq, event.text,
                              start - self.t0, end - self.t0)  # fmt: skip
        try:
            self.guidance_queue.put_nowait((final, now))
        except asyncio.QueueFull:
            self.registry.metrics.messages_dropped.labels(reason="guidance_backlog").inc()

    async def run_guidance(self, factory: GuidanceFactory) -> None:
        """The room's guidance worker: builds its `Guidance`, then feeds it the queued finals in order."""
        queue = self.guidance_queue
        assert queue is not None
        try:
            guidance = await factory(self.interview_id)
        except Exception:
            log.exception("live guidance unavailable for interview %s", self.interview_id)
            guidance = None
        loop = asyncio.get_running_loop()
        unrecorded: GuideCoverageEvent | None = None  # the latest coverage sent and not stored: its times moved only
        while (item := await queue.get()) is not None:
            final, queued_at = item
            if guidance is None:
                continue
            try:
                events = await asyncio.to_thread(guidance.observe, final)
            except Exception:  # guidance is an aid: its failure must not touch the interview
                log.exception("live guidance failed on seq %d of %s", final.seq, final.participant_id)
                self.registry.metrics.error("guidance")
                continue
            for ev in events:
                self.publish(None, ev)
                if isinstance(ev, GuideCoverageEvent):
                    unrecorded = ev if ev.time_only else None
            self.registry.metrics.guidance_latency.observe(loop.time() - queued_at)
            await self._record_guidance([ev for ev in events
                                         if not (isinstance(ev, GuideCoverageEvent) and ev.time_only)])
        if unrecorded is not None:  # the stored coverage ends with the times the viewers saw last
            await self._record_guidance([unrecorded])

    async def _record_guidance(self, events: list[GuidanceEvent]) -> None:
        """Store the room's guidance with the interview (and so publish it): after the viewers have it, on this
        room's worker, so a slow store delays only the next guidance. A failure is logged and counted; the next
        coverage, pair or balance supersedes what was lost (an alert is in the audit trail as well)."""
        record = self.registry.record_guidance
        if record is None or not events:
            return
        for ev in events:
            try:
                await record(self.interview_id, ev)
            except Exception as exc:
                log.warning("storing live guidance (%s) of interview %s failed: %s", ev.type, self.interview_id,
                            type(exc).__name__)
                self.registry.metrics.error("guidance")

    def _send_all(self, text: str, kind: str) -> None:
        metrics = self.registry.metrics
        for key, viewer in list(self.viewers.items()):
            channel = viewer.channel
            if channel.readyState != "open":
                if channel.readyState in ("closing", "closed"):
                    self.viewers.pop(key, None)
                metrics.messages_dropped.labels(reason="closed").inc()
                continue
            if kind in _SHEDDABLE and channel.bufferedAmount > self.registry.viewer_buffer_limit:
                viewer.shed += 1
                metrics.messages_dropped.labels(reason="slow_viewer").inc()
                continue
            try:
                channel.send(text)
            except Exception as exc:  # aiortc raises InvalidStateError when the transport went away
                log.info("analysis channel of %s failed (%s); dropping it", viewer.participant_id, exc)
                self.viewers.pop(key, None)
                metrics.messages_dropped.labels(reason="closed").inc()
                continue
            metrics.messages_sent.labels(type=kind).inc()

    def add_viewer(self, participant: Participant, channel: Channel) -> None:
        if participant.claims.role not in VIEWER_ROLES:
            raise PermissionError(f"a {participant.claims.role} does not receive analysis")
        viewer = Viewer(participant.speaker.participant_id, channel)
        self.viewers[id(channel)] = viewer
        backlog = [to_json(ParticipantEvent(p.speaker, joined=True)) for p in self.participants.values()]
        backlog += list(self.history)
        backlog += list(self.latest_keywords.values())
        backlog += list(self.latest_guidance.values())
        for text in backlog:
            try:
                channel.send(text)
            except Exception as exc:
                log.info("analysis channel of %s failed during backlog (%s)", viewer.participant_id, exc)
                self.viewers.pop(id(channel), None)
                return
        self.registry.metrics.messages_sent.labels(type="backlog").inc(len(backlog))

    def remove_viewer(self, channel: Channel) -> None:
        self.viewers.pop(id(channel), None)


def _segment_key(text: str) -> tuple[str, str, int] | None:
    """(type, participant, seq) of a backlog entry that is a final or a revision of one; None for anything else."""
    try:
        doc = json.loads(text)
        if doc.get("type") in ("segment.final", "segment.revised"):
            return str(doc["type"]), str(doc["speaker"]["participantId"]), int(doc["seq"])
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _named(interview_id: str, segment: SegmentEvent) -> str:
    """A segment write as the log names it: interview/participant#seq, and which revision if it is one."""
    name = f"{interview_id}/{segment.speaker.participant_id}#{segment.seq}"
    return f"{name} revision {segment.revision}" if segment.revision else name


def journal_record(interview_id: str, segment: SegmentEvent, key: DataKey | None) -> dict[str, Any]:
    """A journal entry (the file's and the shared one's, `adapters.shared_journal`): the segment sealed with `key`."""
    body = segment.to_dict()
    return {"interviewId": interview_id, "segment": key.seal("journal.segment", body) if key is not None else body}


def journal_entry(rec: dict[str, Any], key: DataKey | None) -> tuple[str, SegmentEvent]:
    """(interview id, segment) of a `journal_record`; ValueError, KeyError or TypeError if it is not one, Unreadable if
    it is sealed and `key` does not open it (another key, or none)."""
    segment = rec["segment"]
    if isinstance(segment, str):  # sealed
        if key is None:
            raise Unreadable("a sealed segment and no key to open it")
        segment = key.open("journal.segment", segment)
    doc = {**segment, "interviewId": rec["interviewId"], "recordedAt": None}
    return str(rec["interviewId"]), StoredSegment.from_document(doc).segment


class SegmentJournal:
    """The segments handed to the `SegmentWriter` and not stored yet, in an append-only file (JSON lines).

    `append` writes a segment before anyone is sent it, `done` marks it stored (or refused for good); the file is
    emptied whenever nothing is pending. `pending()` (at start) gives the segments a killed process left, in order.
    Each write reaches the operating system at once (no fsync: it survives the process, not the machine). With a
    `key` (the server's, from the master key file) each segment is sealed: transcripts are never on disk in clear."""

    def __init__(self, path: Path, key: DataKey | None = None) -> None:
        self.path = Path(path)
        self._key = key
        self._file: Any = None
        self._next = 0
        self._open = 0  # appended, not done

    def pending(self) -> list[tuple[str, SegmentEvent]]:
        """The segments appended and never marked done, in order; unreadable lines are logged and skipped."""
        entries: dict[int, tuple[str, SegmentEvent]] = {}
        with contextlib.suppress(FileNotFoundError), open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    if "done" in rec:
                        entries.pop(int(rec["done"]), None)
                        continue
                    entries[int(rec["n"])] = journal_entry(rec, self._key)
                except (ValueError, KeyError, TypeError, Unreadable) as exc:  # a line cut short by the kill
                    log.warning("segment journal %s: skipping an unreadable line (%s)", self.path, exc)
        return [entries[n] for n in sorted(entries)]

    def append(self, interview_id: str, segment: SegmentEvent) -> int:
        n = self._next
        self._next += 1
        self._write({"n": n, **journal_record(interview_id, segment, self._key)})
        self._open += 1
        return n

    def done(self, n: int) -> None:
        self._open -= 1
        if self._open == 0:  # nothing pending: start the file afresh
            self.close()
            with contextlib.suppress(FileNotFoundError):
                os.truncate(self.path, 0)
        else:
            self._write({"done": n})

    def _write(self, rec: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across writes
        self._file.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(slots=True, eq=False)
class _Write:
    """A segment queued for the store, and where it is journaled meanwhile."""

    interview_id: str
    segment: SegmentEvent
    file_entry: int = -1  # its entry in the file journal (-1: none)
    stream_seq: int | None = None  # its message in the shared journal (None: none)
    journaling: asyncio.Task[None] | None = None  # the shared journal's write, until NATS acknowledged it
    stored: asyncio.Future[None] | None = None  # set once stored (or refused): a takeover waits for its replays


class SegmentWriter:
    """Persists final segments and their revisions in one queue, so in order (a revision after its final),
    retrying failed writes with backoff; never drops one silently. With a `journal`, what is queued survives the
    process: `start()` queues what a previous process left in it first. With a `shared` journal (JetStream), a
    segment is journaled there while NATS answers, so any node taking the room over stores it (`replay`); the file
    journal is the fallback while NATS does not.

    `store_delay_s` holds every store write back that long: for tests only (SEGMENT_STORE_DELAY_S), to kill a node
    between a final's journal write and its store write."""

    RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)

    def __init__(self, record: SegmentRecorder | None, metrics: Metrics,
                 on_failure: Callable[[str, SegmentEvent, str], None],
                 record_revision: SegmentRecorder | None = None, journal: SegmentJournal | None = None,
                 shared: SharedJournal | None = None, store_delay_s: float = 0.0) -> None:
        self._record = record
        self._record_revision = record_revision
        self._metrics = metrics
        self._on_failure = on_failure
        self._journal = journal
        self.shared = shared
        self._store_delay_s = store_delay_s
        self.replayed: list[tuple[str, SegmentEvent]] = []  # what `start()` found in the journal
        self._queue: deque[_Write] = deque()
        self._queued_stream: set[int] = set()  # shared journal messages queued here: a replay skips them
        self._deleting: set[asyncio.Task[None]] = set()  # shared journal entries being deleted (stored)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None and (self._record is not None or self._record_revision is not None):
            if self._journal is not None:
                # in (interview, speaker, seq, revision) order: a final whose stream write timed out reaches the
                # file after later segments, and a revision stored before its final would be refused
                left = sorted(self._journal.pending(), key=lambda e: (
                    e[0], e[1].speaker.participant_id, e[1].seq, e[1].revision))
                self.replayed = left
                if left:
                    log.warning("writing %d segment(s) a previous process sent but had not stored", len(left))
                    with contextlib.suppress(FileNotFoundError):
                        os.truncate(self._journal.path, 0)
                for interview_id, segment in left:
                    self.submit(interview_id, segment, shared=False)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="segment-writer")

    def _accepts(self, segment: SegmentEvent) -> bool:
        if segment.revision:
            return self._record_revision is not None  # kept even without text: it replaces the stored final's
        return self._record is not None and bool(segment.text)  # an empty final only retracts partials for noise

    def submit(self, interview_id: str, segment: SegmentEvent, *, shared: bool = True) -> asyncio.Task[None] | None:
        """Queue the segment for the store, journaled first. Returns the shared journal's write while it is under
        way (the room sends the segment to viewers once it is done, whether NATS took it or the file did), None when
        the segment is journaled already (in the file) or not kept."""
        if not self._accepts(segment):
            return None
        item = _Write(interview_id, segment)
        if shared and self.shared is not None and self.shared.available:
            item.journaling = asyncio.get_running_loop().create_task(self._journal_shared(item))
        elif self._journal is not None:
            item.file_entry = self._journal.append(interview_id, segment)
        self._enqueue(item)
        return item.journaling

    async def _journal_shared(self, item: _Write) -> None:
        assert self.shared is not None
        try:
            item.stream_seq = await self.shared.append(item.interview_id, item.segment)
            self._queued_stream.add(item.stream_seq)
        except (BusUnavailable, ValueError):  # not taken in time: the file keeps it (see SharedJournal.append)
            self._journal_file(item)
        except Exception:  # never let the journal stop the writer (it awaits this task): the store still gets it
            log.exception("shared segment journal: append failed; the file journal keeps the segment")
            self._journal_file(item)

    def _journal_file(self, item: _Write) -> None:
        if self._journal is None:
            return
        try:
            item.file_entry = self._journal.append(item.interview_id, item.segment)
        except OSError:  # disk full, permissions: the segment is still queued for the store, only not journaled
            log.exception("segment journal: cannot write %s seq %d of interview %s; it is kept in memory only",
                          item.segment.speaker.participant_id, item.segment.seq, item.interview_id)

    def replay(self, interview_id: str, entries: list[tuple[int, SegmentEvent]]) -> list[asyncio.Future[None]]:
        """Queue shared journal entries another node (or this one before a restart) sent and did not store; each is
        deleted from the journal once stored. Entries queued here already are skipped. Returns one future per entry
        queued, set once it is stored."""
        waits: list[asyncio.Future[None]] = []
        for stream_seq, segment in entries:
            if stream_seq in self._queued_stream or not self._accepts(segment):
                continue
            item = _Write(interview_id, segment, stream_seq=stream_seq,
                          stored=asyncio.get_running_loop().create_future())
            assert item.stored is not None
            self._queued_stream.add(stream_seq)
            self._enqueue(item)
            waits.append(item.stored)
        return waits

    def _enqueue(self, item: _Write) -> None:
        self._queue.append(item)
        self._metrics.persist_pending.set(len(self._queue))
        self._idle.clear()
        self._wake.set()

    def forget(self, interview_id: str) -> None:
        """Drop the interview's queued writes that have not started (its candidate's data is being erased)."""
        head = self._queue[0] if self._queue else None  # may be in flight: it fails on its own once erased
        kept = [item for item in self._queue if item is head or item.interview_id != interview_id]
        kept_ids = {id(item) for item in kept}
        for item in self._queue:
            if id(item) not in kept_ids:
                if item.stream_seq is not None:
                    self._queued_stream.discard(item.stream_seq)  # the erasure purges the shared journal's entries
                if item.stored is not None and not item.stored.done():
                    item.stored.set_result(None)
        self._queue.clear()
        self._queue.extend(kept)
        self._metrics.persist_pending.set(len(self._queue))

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._queue[0]
            if item.journaling is not None:
                await asyncio.shield(item.journaling)  # its stream sequence number, to delete it once stored
            if self._store_delay_s:
                await asyncio.sleep(self._store_delay_s)
            await self._store(item.interview_id, item.segment)
            self._queue.popleft()
            if self._journal is not None and item.file_entry >= 0:
                self._journal.done(item.file_entry)
            if item.stream_seq is not None and self.shared is not None:
                self._queued_stream.discard(item.stream_seq)
                # off the queue: a delete costs ~5 ms p50 (benchmarks.placement), and one left undone is only a
                # replay that finds the segment stored
                deleting = asyncio.get_running_loop().create_task(self.shared.done(item.stream_seq))
                self._deleting.add(deleting)
                deleting.add_done_callback(self._deleting.discard)
            if item.stored is not None and not item.stored.done():
                item.stored.set_result(None)
            self._metrics.persist_pending.set(len(self._queue))

    async def _store(self, interview_id: str, segment: SegmentEvent) -> None:
        record = self._record_revision if segment.revision else self._record
        assert record is not None  # submit() queues nothing it has no recorder for
        persisted = self._metrics.revisions_persisted if segment.revision else self._metrics.segments_persisted
        attempt = 0
        while True:
            try:
                created = await record(interview_id, segment)
            except asyncio.CancelledError:
                raise
            except DomainError as exc:
                # The store refused this segment for good (e.g. the interview was cancelled): retrying
                # cannot help. Said loudly, once, to the log, the metrics and the room.
                persisted.labels(result="rejected").inc()
                self._metrics.error("persist")
                # never the text: transcripts are personal data, and a log line is plain text at rest
                log.error("segment %s (%d words) rejected by the store: %s", _named(interview_id, segment),
                          len(segment.text.split()), exc)
                self._on_failure(interview_id, segment, f"rejected: {exc}")
                return
            except Exception as exc:
                persisted.labels(result="error").inc()
                self._metrics.error("persist")
                if attempt == 0:
                    log.warning("persisting segment %s failed (%s: %s); retrying", _named(interview_id, segment),
                                type(exc).__name__, exc)
                    self._on_failure(interview_id, segment, f"{type(exc).__name__}: {exc}")
                delay = self.RETRY_DELAYS_S[min(attempt, len(self.RETRY_DELAYS_S) - 1)]
                attempt += 1
                if self._closing and attempt > len(self.RETRY_DELAYS_S):
                    raise
                await asyncio.sleep(delay)
                continue
            persisted.labels(result="created" if created else "duplicate").inc()
            if attempt:
                log.info("segment %s persisted after %d retries", _named(interview_id, segment), attempt)
            return

    async def aclose(self, drain_s: float) -> None:
        """Write what is queued (for at most `drain_s`); log every segment that could not be written."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._idle.wait()), drain_s)
        except TimeoutError:
            pass
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        # a shared journal write under way finishes (or falls back to the file) before the file is closed
        await asyncio.gather(*(item.journaling for item in self._queue if item.journaling is not None),
                             *self._deleting, return_exceptions=True)
        if self.shared is not None:
            await self.shared.aclose()
        for item in self._queue:
            segment = item.segment
            kept = (" (kept in the shared journal for the node that takes the room next)" if item.stream_seq is not None
                    else " (kept in the journal for the next start)" if item.file_entry >= 0 else "")
            log.error("final segment NOT persisted at shutdown%s: interview=%s participant=%s seq=%d revision=%d "
                      "(%d words)", kept, item.interview_id, segment.speaker.participant_id, segment.seq,
                      segment.revision, len(segment.text.split()))  # fmt: skip
        self._queue.clear()
        if self._journal is not None:
            self._journal.close()


class RoomRegistry:
    """All live rooms of this process. Methods run on the event loop."""

    def __init__(
        self,
        *,
        stream_factory: StreamFactory,
        metrics: Metrics,
        record_segment: SegmentRecorder | None = None,
        record_revision: SegmentRecorder | None = None,
        last_seq: LastSeqLookup | None = None,
        stored_finals: StoredFinals | None = None,
        consent: ConsentLookup | None = None,
        resume_grace_s: float = 5.0,
        backlog: int = 500,
        viewer_buffer_limit: int = VIEWER_BUFFER_LIMIT,
        guidance_factory: GuidanceFactory | None = None,
        record_guidance: GuidanceRecorder | None = None,
        journal: SegmentJournal | None = None,
        tone: ToneLookup | None = None,
        vocabulary: VocabularyLookup | None = None,
        shared_backlog: SharedBacklog | None = None,
        left_kept: int = NEXT_SEQ_KEPT,
        shared_journal: SharedJournal | None = None,
        store_delay_s: float = 0.0,
    ) -> None:
        self._left_kept = left_kept
        self._tone = tone  # None: the tone of words is shown in every room
        self._vocabulary = vocabulary  # None: no room has a vocabulary
        self.stream_factory = stream_factory
        self.shared_backlog = shared_backlog
        self.guidance_factory = guidance_factory
        self.record_guidance = record_guidance
        self.metrics = metrics
        self.resume_grace_s = resume_grace_s
        self.viewer_buffer_limit = viewer_buffer_limit
        self._backlog = backlog
        self._last_seq = last_seq
        self._stored_finals = stored_finals
        self._consent = consent  # None: everyone counts as consenting (rooms without a consent record)
        self.rooms: dict[str, Room] = {}
        self._next_seq: dict[tuple[str, str], int] = {}  # (interview, participant) -> seq after the last final
        self._journaled: dict[tuple[str, str], int] = {}  # the same, for segments a killed process left to store
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.writer = SegmentWriter(record_segment, metrics, self._persist_failed, record_revision, journal,
                                    shared_journal, store_delay_s)
        self._replays: dict[str, asyncio.Task[int | None]] = {}  # interview id -> its shared journal being replayed
        # rooms open here whose shared journal could not be read when they opened -> participants numbered above
        # UNREAD_JOURNAL_SEQ_GAP; the sweep reads and stores those entries, then the room numbers as usual
        self._unread: dict[str, set[str]] = {}
        # told after every join and leave (the call tells the candidate who is watching)
        self.on_membership: Callable[[Room], None] | None = None
        # told of every protected-topic alert (interview id, its organisation, alert): the server records it in the
        # audit trail of that organisation
        self.on_alert: Callable[[str, str, ProtectedTopicAlert], None] | None = None
        metrics.bind_live(speech_ratio=self.speech_ratio, stt_lag=self.max_lag_s, final_wait=self.max_final_wait_s)

    def start(self) -> None:
        self.writer.start()
        for interview_id, segment in self.writer.replayed:  # not in the store yet: numbering continues after them
            key = (interview_id, segment.speaker.participant_id)
            self._journaled[key] = max(self._journaled.get(key, 0), segment.seq + 1)

    # ---- membership ----------------------------------------------------------------------------------
    def get(self, interview_id: str, participant_id: str) -> Participant | None:
        room = self.rooms.get(interview_id)
        return room.participants.get(participant_id) if room else None

    async def join(self, claims: JoinClaims, session_id: str) -> tuple[Participant, str | None]:
        """Adds the participant, or re-attaches it to a new session. Returns it and the replaced session id."""
        if self._closed:
            raise RuntimeError("the service is shutting down")
        existing = self.get(claims.interview_id, claims.participant_id)
        if existing is not None and not existing.removed:
            previous, existing.session_id = existing.session_id, session_id
            if existing.linger is not None:
                existing.linger.cancel()
                existing.linger = None
            log.info("participant %s resumed in interview %s (session %s -> %s)", claims.participant_id,
                     claims.interview_id, previous, session_id)
            return existing, previous
        if claims.interview_id not in self.rooms:
            # the room opens here: what the node that held it before sent and did not store is stored first, with
            # its seq, so the numbering below continues after it and the backlog holds it
            if await self.replay_journal(claims.interview_id) is None:
                self._unread.setdefault(claims.interview_id, set())
            else:
                self._unread.pop(claims.interview_id, None)
        unread = self._unread.get(claims.interview_id)  # before the store read: a sweep may read the journal meanwhile
        seq_base, known = await self._first_seq(claims)
        if unread is not None and claims.participant_id not in unread:
            unread.add(claims.participant_id)
            # above what the store and the journal know, not above this node's numbering: that may be gapped already
            # (the room opened unread before), and gaps would stack
            seq_base = max(seq_base, known + UNREAD_JOURNAL_SEQ_GAP)
            log.warning("interview %s: shared segment journal unread; %s's finals are numbered from %d, above any "
                        "a dead node may have journaled", claims.interview_id, claims.participant_id, seq_base)
        room = self.rooms.get(claims.interview_id)
        if room is None:
            history = await self._history(claims.interview_id)
            tone = await self._tone_shown(claims.org_id)
            vocabulary = await self._vocabulary_of(claims.interview_id)
            room = self.rooms.get(claims.interview_id)  # someone else may have opened it meanwhile
            if room is None:
                room = self.rooms[claims.interview_id] = Room(self, claims.interview_id, self._backlog,
                                                              claims.org_id)
                room.tone = tone
                room.conversation.vocabulary = vocabulary
                room.history.extend(history)
                if self.guidance_factory is not None:
                    room.guidance_queue = asyncio.Queue(GUIDANCE_QUEUE)
                    room.guidance_worker = self._spawn(room.run_guidance(self.guidance_factory))
                self.metrics.rooms_active.set(len(self.rooms))
        participant = Participant(room, claims, seq_base=seq_base, session_id=session_id)
        participant.consented = await self._consented(claims)
        room.participants[claims.participant_id] = participant
        self.metrics.participants_active.labels(role=claims.role).inc()
        log.info("participant %s (%s) joined interview %s", claims.participant_id, claims.role,
                 claims.interview_id)
        room.publish(participant, ParticipantEvent(participant.speaker, joined=True))
        self._membership_changed(room)
        return participant, None

    async def _tone_shown(self, org_id: str) -> bool:
        if self._tone is None:
            return True
        try:
            return await self._tone(org_id)
        except Exception as exc:  # unknown policy: the tone stays off (the cautious side), the call goes on
            log.warning("cannot read organisation %s's tone setting (%s); the tone of words is off", org_id, exc)
            return False

    async def _vocabulary_of(self, interview_id: str) -> tuple[str, ...]:
        if self._vocabulary is None:
            return ()
        try:
            return await self._vocabulary(interview_id)
        except Exception as exc:  # recognition without the terms is still recognition: the call goes on
            log.warning("cannot read interview %s's vocabulary (%s); transcribing without it", interview_id, exc)
            return ()

    async def _consented(self, claims: JoinClaims) -> bool:
        if self._consent is None:
            return True
        try:
            return await self._consent(claims.interview_id, claims.participant_id)
        except Exception as exc:  # unknown consent is no consent: the audio waits, the call goes on
            log.warning("cannot read the consent of %s (%s); their audio is not processed until it is given again",
                        claims.participant_id, exc)
            self.metrics.error("persist")
            return False

    async def set_consent(self, interview_id: str, participant_id: str, given: bool, notice_version: str,
                          at: datetime | None = None) -> int | None:
        """A participant's consent was recorded (`given`) or withdrawn: start or stop processing their audio at
        once and tell the room's viewers (the event marks the transcript after the participant's last final).
        Returns that last final's seq as this process knows it (None: no final, or not known here)."""
        participant = self.get(interview_id, participant_id)
        if participant is None or participant.removed:
            last = self._next_seq.get((interview_id, participant_id))
            return last - 1 if last else None
        if participant.consented != given:
            participant.consented = given
            if not given:
                await participant.discard_stream()  # nothing it had in flight is published: `next_seq` is final
            after = participant.next_seq - 1 if participant.next_seq else None
            participant.room.publish(participant, ConsentEvent(participant.speaker, given, notice_version, at, after))
        return participant.next_seq - 1 if participant.next_seq else None

    async def end_interview(self, interview_id: str) -> int:
        """Everyone leaves the interview's room now, and nothing of it is processed or persisted any more (its
        candidate's data is being erased). Returns how many participants were removed."""
        if self.writer.shared is not None:  # journaled here or by another node: either way, nobody stores it now
            self._spawn(self._forget_journal(self.writer.shared, interview_id))
        room = self.rooms.get(interview_id)
        if room is None:
            return 0
        participants = list(room.participants.values())
        for p in participants:
            p.consented = False
            p.session_id = None
            await p.discard_stream()
        self.writer.forget(interview_id)
        await asyncio.gather(*(self._remove(p, "erased") for p in participants))
        room.history.clear()
        room.clear_held()  # finals still waiting for the journal are neither sent nor kept now
        room.latest_keywords.clear()
        return len(participants)

    @staticmethod
    async def _forget_journal(shared: SharedJournal, interview_id: str) -> None:
        try:
            await shared.forget(interview_id)
        except BusUnavailable as exc:  # its entries expire with the stream's max age; the store refuses them
            log.warning("cannot purge the shared segment journal of erased interview %s (%s)", interview_id, exc)

    async def _first_seq(self, claims: JoinClaims) -> tuple[int, int]:
        """(the participant's next seq, the part of it the store and the shared journal know). The store is read even
        when this node remembers the participant: the room may have been on another node since, which numbered on."""
        key = (claims.interview_id, claims.participant_id)
        remembered = self._next_seq.get(key, 0)
        known = self._journaled.get(key, 0)
        if self._last_seq is not None:
            try:
                last = await self._last_seq(claims.interview_id, claims.participant_id)
            except Exception as exc:  # the store being down must not keep anyone out of an interview
                log.warning("cannot read last segment number of %s (%s); continuing from %d",
                            claims.participant_id, exc, max(known, remembered))
                self.metrics.error("persist")
                last = None
            if last is not None:
                known = max(known, last + 1)
        return max(known, remembered), known

    async def replay_journal(self, interview_id: str, wait_s: float = 5.0) -> int | None:
        """Store the interview's shared journal entries (finals sent by a node that died, or by this one before a
        restart, and not stored): queued in order with their original seq, deleted from the journal once stored.
        Waits up to `wait_s` for the store (a slow store: the room opens anyway, the numbering already knows them).
        One replay per interview at a time. Returns how many entries were queued; None if the journal could not be
        read (NATS down or not answering: `join` then numbers above UNREAD_JOURNAL_SEQ_GAP)."""
        task = self._replays.get(interview_id)
        if task is None:
            task = self._replays[interview_id] = asyncio.ensure_future(self._replay(interview_id, wait_s))
            task.add_done_callback(lambda _: self._replays.pop(interview_id, None))
        return await asyncio.shield(task)

    async def sweep_journal(self, held_elsewhere: Callable[[str], Awaitable[bool]]) -> int:
        """Store the shared journal entries of interviews whose room is open nowhere (`held_elsewhere` False and not
        here): their node died and nobody re-joined, or it was this node before a restart; and of rooms open here
        whose journal could not be read when they opened (their numbering is above those entries' seq). Returns how
        many were queued; BusUnavailable while NATS does not answer. One interview's failure is logged and the
        others are swept."""
        shared = self.writer.shared
        if shared is None or not shared.bus.connected or self._closed:
            return 0
        queued = 0
        listed = await shared.interviews()
        with_entries = set(listed)
        for interview_id in list(self._unread):
            if interview_id not in with_entries:  # no entries: nothing a dead node left can collide
                self._unread.pop(interview_id, None)
        for interview_id in listed:
            if self._closed:
                break
            try:
                if interview_id in self._unread or (interview_id not in self.rooms
                                                    and not await held_elsewhere(interview_id)):
                    n = await self.replay_journal(interview_id, wait_s=0.0)
                    if n is not None:  # else logged; the next pass tries again
                        self._unread.pop(interview_id, None)
                        queued += n
            except BusUnavailable:
                raise
            except Exception:
                log.exception("shared segment journal sweep of interview %s failed", interview_id)
        return queued

    async def _replay(self, interview_id: str, wait_s: float) -> int | None:
        shared = self.writer.shared
        if shared is None:
            return 0
        if not shared.bus.connected:
            return None
        # tried even while appends skip the stream after a slow one (`available` False): the read has its own timeout
        try:
            entries = await shared.entries(interview_id)
        except BusUnavailable as exc:  # journaled in the stream, but unreadable now: the sweep stores them later
            log.warning("cannot read the shared segment journal of %s (%s)", interview_id, exc)
            return None
        waits = self.writer.replay(interview_id, entries)
        for _, segment in entries:
            key = (interview_id, segment.speaker.participant_id)
            self._journaled[key] = max(self._journaled.get(key, 0), segment.seq + 1)
        if waits:
            log.warning("interview %s: storing %d segment(s) a node sent but had not stored", interview_id,
                        len(waits))
            if wait_s > 0:
                await asyncio.wait(waits, timeout=wait_s)
        return len(waits)

    async def _history(self, interview_id: str) -> list[str]:
        """What was said before this room opened (an earlier session, before a restart, or on a node that held the
        room before), for the backlog: the shared backlog (Redis; sentiment too) when it holds every final the store
        has from its span, else the store's finals (Redis restarted empty, or a node died before sharing them)."""
        shared = await self.shared_backlog.backlog(interview_id) if self.shared_backlog is not None else None
        if self._stored_finals is None:
            return (shared or [])[-self._backlog:]
        try:
            stored = await self._stored_finals(interview_id)
        except Exception as exc:  # a backlog is a courtesy: never a reason to refuse a join
            log.warning("cannot load the stored transcript of %s for the backlog: %s", interview_id, exc)
            self.metrics.error("persist")
            stored = []
        if shared:
            # the shared backlog (sentiment too) if it has every final the store has from its time span; else it has
            # holes (a Redis restart, a node that died before sharing) and the store's finals are the backlog
            keys = [k for k in map(_segment_key, shared) if k is not None]
            have = {k[1:] for k in keys}
            # its span: as many of the newest stored finals as it holds finals (it holds sentiment and revisions
            # too, and older finals may have been trimmed from it)
            finals = sum(k[0] == "segment.final" for k in keys)
            newest = [_segment_key(text) for text in stored[len(stored) - finals:]]
            if (finals or not stored) and all(k is not None and k[1:] in have for k in newest):
                return shared[-self._backlog:]
        return stored[-self._backlog:]

    def detach(self, participant: Participant, session_id: str) -> None:
        """The session's connection is gone: keep the participant for a resume, then let it leave."""
        if participant.session_id != session_id or participant.removed:
            return
        participant.session_id = None
        if participant.linger is not None:
            participant.linger.cancel()
        participant.linger = asyncio.get_running_loop().call_later(
            self.resume_grace_s, lambda: self._spawn(self._remove(participant, "connection lost")))

    def restore(self, participant: Participant, session_id: str, previous: str) -> None:
        """Undo a resume by `session_id` that failed before it was usable: `previous` holds the participant again."""
        if participant.session_id == session_id and not participant.removed:
            participant.session_id = previous

    async def leave(self, participant: Participant, session_id: str) -> bool:
        """An explicit leave (WHIP DELETE) by the session that currently holds the participant."""
        if participant.session_id != session_id or participant.removed:
            return False
        await self._remove(participant, "left")
        return True

    async def _remove(self, participant: Participant, reason: str) -> None:
        if participant.removed:
            return
        if participant.linger is not None:
            participant.linger.cancel()
            participant.linger = None
        if participant.session_id is not None and reason == "connection lost":
            return  # resumed meanwhile
        participant.removed = True
        room = participant.room
        await participant.close_stream()
        pid = participant.speaker.participant_id
        self._remember_seq((room.interview_id, pid), participant.next_seq)
        if room.participants.get(pid) is participant:
            del room.participants[pid]
            self.metrics.participants_active.labels(role=participant.claims.role).dec()
        for key, viewer in list(room.viewers.items()):
            if viewer.participant_id == pid:
                room.viewers.pop(key, None)
        log.info("participant %s left interview %s (%s)", pid, room.interview_id, reason)
        room.publish(participant, ParticipantEvent(participant.speaker, joined=False))
        self._membership_changed(room)
        if not room.participants and self.rooms.get(room.interview_id) is room:
            if room.guidance_queue is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    room.guidance_queue.put_nowait(None)  # the worker ends after the finals already queued
            del self.rooms[room.interview_id]
            # its numbering is remembered (_next_seq); whoever opens it next reads the journal (or opens unread) afresh
            self._unread.pop(room.interview_id, None)
            self.metrics.rooms_active.set(len(self.rooms))

    def _remember_seq(self, key: tuple[str, str], next_seq: int) -> None:
        """Numbering for a participant who left; the oldest are forgotten past `left_kept` (their segments are
        long stored by then, and the store answers for them): one entry per participant ever would only grow."""
        self._next_seq.pop(key, None)
        self._next_seq[key] = next_seq  # last in the insertion order: evicted last
        while len(self._next_seq) > self._left_kept:
            del self._next_seq[next(iter(self._next_seq))]

    def _membership_changed(self, room: Room) -> None:
        if self.on_membership is not None:
            try:
                self.on_membership(room)
            except Exception:  # a listener's failure must not keep anyone out of a room
                log.exception("membership listener failed for interview %s", room.interview_id)

    def add_viewer(self, participant: Participant, channel: Channel) -> None:
        participant.room.add_viewer(participant, channel)

    def remove_viewer(self, participant: Participant, channel: Channel) -> None:
        participant.room.remove_viewer(channel)

    # ---- faults and live statistics ------------------------------------------------------------------
    def _persist_failed(self, interview_id: str, segment: SegmentEvent, reason: str) -> None:
        room = self.rooms.get(interview_id)
        if room is not None:
            code = "persist_rejected" if reason.startswith("rejected") else "persist_delayed"
            what = "the revised text of this segment" if segment.revision else "this segment"
            message = (f"{what} cannot be saved ({reason})" if code == "persist_rejected"
                       else f"saving {what} failed ({reason}); retrying")
            affected: dict[str, Any] = {"seq": segment.seq, "start_s": round(segment.start_s, 3),
                                        "end_s": round(segment.end_s, 3)}
            if segment.revision:
                affected["revision"] = segment.revision
            room.publish(None, ErrorEvent(segment.speaker, code, message, affected))

    def all_participants(self) -> list[Participant]:
        return [p for room in self.rooms.values() for p in room.participants.values()]

    def speech_ratio(self) -> float:
        levels = speaking = 0
        for p in self.all_participants():
            levels += p.levels
            speaking += p.levels_speaking
        return speaking / levels if levels else 0.0

    def max_lag_s(self) -> float:
        return max((p.lag_s for p in self.all_participants()), default=0.0)

    def max_final_wait_s(self) -> float:
        return max((p.final_wait_s for p in self.all_participants()), default=0.0)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_task_failure)
        return task

    async def aclose(self, persist_timeout_s: float = 10.0) -> None:
        """Shutdown: drain every stream to finals (sent to viewers still connected), then persist them. The waits for
        the shared journal's writes, for the replays under way and for the store share `persist_timeout_s` from the
        drained streams on (a kill grace must cover it once, not per wait)."""
        self._closed = True
        participants = self.all_participants()
        for p in participants:
            p.session_id = None  # nobody can resume during shutdown
        # Drain every stream before anyone leaves, so viewers still receive the last finals.
        await asyncio.gather(*(p.close_stream() for p in participants))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + persist_timeout_s

        def left() -> float:
            return max(0.0, deadline - loop.time())

        # finals whose shared journal write is under way reach the viewers before they leave (a write that NATS
        # does not acknowledge falls back to the file journal within its own timeout)
        await asyncio.gather(*(room.release_held(left()) for room in list(self.rooms.values())))
        workers = {room.guidance_worker for room in self.rooms.values() if room.guidance_worker is not None}
        await asyncio.gather(*(self._remove(p, "shutdown") for p in participants))
        # each room's guidance worker ends after the finals queued and stores its last coverage (bounded like the
        # segment writer below)
        if workers:
            await asyncio.wait(workers, timeout=left())
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # a replay under way queues its entries before the writer drains (a replay cut after its read would leave
        # them to the next node's sweep); bounded: its read times out after 2 s, its wait for the store after 5 s
        replays = set(self._replays.values())
        if replays:
            _, late = await asyncio.wait(replays, timeout=left())
            for task in late:
                task.cancel()
            await asyncio.gather(*replays, return_exceptions=True)
        await self.writer.aclose(left())  # what is left of the deadline


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("room task failed", exc_info=task.exception())
