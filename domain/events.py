"""Every event the service produces, defined once with one stable JSON form.

Two families live here:

* **stream events**: what one participant's pipeline emits while an interview is live
  (`segment.partial`, `segment.final`, `segment.revised`, `sentiment`, `keywords`, `level`, `error`,
  `participant.joined` / `participant.left`). The same JSON goes to stdout from
  `python -m pipeline`, over the interviewer's `analysis` data channel, and into storage.
* **domain events**: what the interview aggregate records (InterviewScheduled, ...), published on NATS
  after the write that produced them commits.

`to_dict()` is the only serialiser; field names in it are the wire contract. A `StoredSegment` (a stored final
with its highest revision applied) also has `to_document()`: its transcript entry, in the stored document's fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

ROLES = ("interviewer", "candidate", "observer")


@dataclass(slots=True, frozen=True)
class Speaker:
    role: str
    name: str
    participant_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "name": self.name, "participantId": self.participant_id}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Speaker:
        return cls(role=str(d["role"]), name=str(d.get("name", "")), participant_id=str(d["participantId"]))


@dataclass(slots=True, frozen=True)
class Word:
    word: str
    start_s: float
    end_s: float
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "word": self.word,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "probability": round(self.probability, 4),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Word:
        return cls(word=str(d["word"]), start_s=d["start_s"], end_s=d["end_s"], probability=d["probability"])


@dataclass(slots=True)
class SegmentEvent:
    """A transcript segment. `final=False` is a partial that a later partial or the final replaces.

    Times are stream time (seconds since the participant's stream started), never wall clock.
    `hallucination=True` marks text the guards consider invented (it is shown but never analysed).
    `crosstalk=True` marks another participant's voice picked up by this participant's microphone (the same words
    as an overlapping, louder final of someone else): shown, never analysed, never context for other decodes.
    `revision` > 0 (wire type `segment.revised`): the final of the same speaker and `seq` decoded again, after
    it was sent, with the conversation's preceding audio and text as context; it replaces that final's text,
    words and confidence (the live final is decoded alone, for speed), or, with `crosstalk=True`, marks a final
    already sent as cross-talk once the louder final it repeats came out. Higher revisions replace lower ones.
    `continues` (finals only): the seq of this speaker's previous final, which closed early on a short pause after
    a complete sentence (pipeline.turns) while the speaker went on: the two are one turn, shown joined.
    `timing` (finals only, live streams): where the time from speech end to this final went, in ms (`FINAL_TIMING`);
    sent on the data channel and the CLI's output, never stored.
    """

    speaker: Speaker
    seq: int
    start_s: float
    end_s: float
    text: str
    final: bool
    words: list[Word] = field(default_factory=list)
    confidence: float = 0.0
    no_speech_prob: float = 0.0
    language: str = "en"
    engine: str = ""
    model: str = ""
    hallucination: bool = False
    emitted_at_s: float | None = None
    revision: int = 0
    crosstalk: bool = False
    continues: int | None = None
    timing: dict[str, float] | None = None

    @property
    def type(self) -> str:
        if not self.final:
            return "segment.partial"
        return "segment.revised" if self.revision else "segment.final"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type,
            "speaker": self.speaker.to_dict(),
            "seq": self.seq,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "text": self.text,
            "words": [w.to_dict() for w in self.words],
            "confidence": round(self.confidence, 4),
            "no_speech_prob": round(self.no_speech_prob, 4),
            "language": self.language,
            "engine": self.engine,
            "model": self.model,
            "hallucination": self.hallucination,
            "crosstalk": self.crosstalk,
        }
        if self.revision:
            d["revision"] = self.revision
        if self.continues is not None:
            d["continues"] = self.continues
        if self.emitted_at_s is not None:
            d["emitted_at_s"] = round(self.emitted_at_s, 3)
        if self.timing is not None:
            d["timing"] = {k: round(v, 4 if k == "at" else 1) for k, v in self.timing.items()}
        return d


# A final's `timing` (ms): the silence that closed the utterance (stream time: `close`), how late the audio arrived
# against the stream's clock when it closed (`ingest`), then on the stream's clock from the close: waiting for the
# speaker's previous final (`previous`), for a speculative decode still running (`speculative_wait`), for a worker
# (`queue`), the decode (`decode`), guards and analysers up to the emit (`post`), and the whole (`server`, close ->
# emitted). `speculative` is 1 when the final reused the decode started in the pause (no decode of its own). `at`:
# the emitting host's monotonic clock in seconds when it was emitted (a receiver on that host measures delivery).
FINAL_TIMING = ("close", "ingest", "bleed", "previous", "speculative_wait", "queue", "decode", "post", "server", "speculative",
                "at")

# What a `segment.revised` replaces in the final of the same speaker and seq (start_s / end_s stay the utterance's).
REVISED_FIELDS = ("text", "words", "confidence", "no_speech_prob", "hallucination", "crosstalk")


@dataclass(slots=True)
class StoredSegment:
    """A stored final as transcripts show it: `segment` is the final or, once revised (`revised_by`), the final
    with its highest revision's `REVISED_FIELDS` and `revision`, and `original_text` the live final's text.
    `recorded_at` is when the final was stored (aware UTC)."""

    interview_id: str
    segment: SegmentEvent
    recorded_at: datetime
    original_text: str | None = None
    unreadable: tuple[str, ...] = ()  # fields that did not decrypt on this read (then null in `to_document`)

    def revised_by(self, revision: SegmentEvent) -> StoredSegment:
        """This final as `revision` (of the same speaker and seq) replaces it."""
        changes = {name: getattr(revision, name) for name in REVISED_FIELDS}
        original = self.segment.text if self.original_text is None else self.original_text
        return StoredSegment(self.interview_id, replace(self.segment, revision=revision.revision, **changes),
                             self.recorded_at, original_text=original, unreadable=self.unreadable)

    def to_dict(self) -> dict[str, Any]:
        """The message the data channel sent for it, `segment.final` or (revised) its last `segment.revised`, with
        `originalText` when revised; without `emitted_at_s`, a time on the clock of the stream that emitted it."""
        d = self.segment.to_dict()
        d.pop("emitted_at_s", None)
        d.pop("timing", None)
        if self.original_text is not None:
            d["originalText"] = self.original_text
        return d

    def to_document(self) -> dict[str, Any]:
        """Its transcript entry: interviewId, participantId, the segment's fields but `type`, recordedAt, and when
        revised `originalText` and `revision` (the fields of the stored segment document)."""
        seg = self.segment.to_dict()
        del seg["type"]
        seg.pop("timing", None)  # how this process was busy: not part of the transcript
        revision = seg.pop("revision", 0)
        doc = {"interviewId": self.interview_id, "participantId": self.segment.speaker.participant_id, **seg,
               "recordedAt": self.recorded_at}
        if revision:
            doc.update(originalText=self.original_text, revision=revision)
        if self.unreadable:
            doc["unreadable"] = list(self.unreadable)
            for name in self.unreadable:
                if name in ("text", "originalText"):
                    doc[name] = None
        return doc

    @classmethod
    def from_document(cls, d: Mapping[str, Any]) -> StoredSegment:
        """From a stored segment (or revision) document: `to_document()`'s fields; others are ignored."""
        segment = SegmentEvent(
            speaker=Speaker.from_dict(d["speaker"]), seq=int(d["seq"]), start_s=d["start_s"], end_s=d["end_s"],
            text=d["text"] or "", final=True, words=[Word.from_dict(w) for w in d.get("words", ())],
            confidence=d.get("confidence", 0.0), no_speech_prob=d.get("no_speech_prob", 0.0),
            language=d.get("language", "en"), engine=d.get("engine", ""), model=d.get("model", ""),
            hallucination=d.get("hallucination", False), crosstalk=d.get("crosstalk", False), emitted_at_s=d.get("emitted_at_s"),
            revision=d.get("revision", 0))
        return cls(interview_id=d["interviewId"], segment=segment, recorded_at=d["recordedAt"],
                   original_text=d.get("originalText"), unreadable=tuple(d.get("unreadable", ())))


@dataclass(slots=True)
class SentimentEvent:
    """Sentiment of one final segment's *text* (never voice or face), and the speaker's smoothed value."""

    speaker: Speaker
    seq: int
    score: float
    rolling: float
    start_s: float
    end_s: float
    emitted_at_s: float | None = None
    type: Literal["sentiment"] = "sentiment"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type,
            "speaker": self.speaker.to_dict(),
            "seq": self.seq,
            "score": round(self.score, 4),
            "rolling": round(self.rolling, 4),
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
        }
        if self.emitted_at_s is not None:
            d["emitted_at_s"] = round(self.emitted_at_s, 3)
        return d


@dataclass(slots=True, frozen=True)
class Keyword:
    term: str
    count: int
    relevance: float
    seqs: tuple[int, ...] = ()  # segments the term came from, so every item is traceable

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "count": self.count, "relevance": round(self.relevance, 4), "seqs": list(self.seqs)}


@dataclass(slots=True)
class KeywordsEvent:
    speaker: Speaker
    keywords: list[Keyword]
    seq: int  # the segment whose arrival produced this update
    emitted_at_s: float | None = None
    type: Literal["keywords"] = "keywords"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type,
            "speaker": self.speaker.to_dict(),
            "seq": self.seq,
            "keywords": [k.to_dict() for k in self.keywords],
        }
        if self.emitted_at_s is not None:
            d["emitted_at_s"] = round(self.emitted_at_s, 3)
        return d


@dataclass(slots=True)
class LevelEvent:
    """Audio level for the overlay's meter (loudness only; nothing is inferred from the voice)."""

    speaker: Speaker
    rms_dbfs: float
    peak_dbfs: float
    clipped: int
    speaking: bool
    at_s: float
    type: Literal["level"] = "level"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "speaker": self.speaker.to_dict(),
            "rms_dbfs": round(self.rms_dbfs, 1),
            "peak_dbfs": round(self.peak_dbfs, 1),
            "clipped": self.clipped,
            "speaking": self.speaking,
            "at_s": round(self.at_s, 3),
        }


@dataclass(slots=True)
class ErrorEvent:
    """Something failed in a live stream. `affected` says what: e.g. {"seq": 4, "start_s": 1.2, "end_s": 3.4}."""

    speaker: Speaker | None
    code: str
    message: str
    affected: dict[str, Any] = field(default_factory=dict)
    emitted_at_s: float | None = None
    type: Literal["error"] = "error"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type,
            "speaker": self.speaker.to_dict() if self.speaker else None,
            "code": self.code,
            "message": self.message,
            "affected": self.affected,
        }
        if self.emitted_at_s is not None:
            d["emitted_at_s"] = round(self.emitted_at_s, 3)
        return d


@dataclass(slots=True)
class ParticipantEvent:
    speaker: Speaker
    joined: bool

    @property
    def type(self) -> str:
        return "participant.joined" if self.joined else "participant.left"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "speaker": self.speaker.to_dict()}


@dataclass(slots=True)
class ConsentEvent:
    """A participant gave (`consent.given`) or withdrew (`consent.withdrawn`) consent to the processing of their
    audio under the notice `notice_version`, at `at`. Until given, none of their audio is processed; once withdrawn,
    none more is (the transcript marks it: `after_seq` is the participant's last final before it, None if none)."""

    speaker: Speaker
    given: bool
    notice_version: str
    at: datetime | None = None
    after_seq: int | None = None

    @property
    def type(self) -> str:
        return "consent.given" if self.given else "consent.withdrawn"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "speaker": self.speaker.to_dict(), "noticeVersion": self.notice_version,
                "at": iso(self.at), "afterSeq": self.after_seq}



# ---- live guidance (pipeline.guidance): interviewers' and observers' eyes only, from transcript text only ----


@dataclass(slots=True)
class ProtectedTopicAlert:
    """An interviewer's final (`seq` of `participant_id`) asked about a protected topic; a lawful rephrasing."""

    participant_id: str
    seq: int
    text: str
    topic: str
    score: float
    rephrase: str
    type: Literal["alert.protected_topic"] = "alert.protected_topic"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "participantId": self.participant_id, "seq": self.seq, "text": self.text,
                "topic": self.topic, "score": round(self.score, 3), "rephrase": self.rephrase}  # fmt: skip


@dataclass(slots=True, frozen=True)
class AskedRef:
    """Where something was said: a final of a participant (traceable to the segment)."""

    participant_id: str
    seq: int
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"participantId": self.participant_id, "seq": self.seq, "text": self.text}


@dataclass(slots=True)
class GuideItemStatus:
    """A guide question: covered by which final, its time budget (seconds, None: none) and the time spent on it
    (its question/answer exchanges, from the question to the next question that is not a follow-up)."""

    question_id: str
    text: str
    category: str
    covered_by: AskedRef | None = None
    score: float = 0.0
    budget_s: float | None = None
    spent_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"questionId": self.question_id, "text": self.text, "category": self.category,
                "covered": self.covered_by is not None,
                "coveredBy": self.covered_by.to_dict() if self.covered_by else None, "score": round(self.score, 3),
                "budgetS": self.budget_s, "spentS": round(self.spent_s, 2),
                "over": self.budget_s is not None and self.spent_s > self.budget_s}  # fmt: skip


@dataclass(slots=True)
class GuideCoverageEvent:
    """The interview guide's questions, which are covered (by which final), which are left, and questions asked
    that are not in the guide; `sections`: per category, questions covered, answer time used (`seconds`), time spent
    on its questions (`spentS`) against its budget (`budgetS`, the sum of its questions' budgets, None when none has
    one; `remainingS`, `over`).

    `time_only` (not in `to_dict`): only the times moved since the last coverage that was not time-only, and that one is
    less than `pipeline.guidance.RECORD_TIMES_EVERY_S` of room time old. Viewers get every coverage (the clock runs
    on their page); the room stores a time-only one only when it is the last (the next coverage supersedes it)."""

    items: list[GuideItemStatus]
    extra: list[AskedRef]
    sections: list[dict[str, Any]]
    time_only: bool = False
    type: Literal["guide.coverage"] = "guide.coverage"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "items": [i.to_dict() for i in self.items],
                "left": [i.question_id for i in self.items if i.covered_by is None],
                "extra": [e.to_dict() for e in self.extra], "sections": self.sections}  # fmt: skip


@dataclass(slots=True)
class QaPairEvent:
    """An interviewer question and the candidate's answer so far (follow-up questions nested), with the answer's
    length and the guide item the question covers. Sent again, same `question.seq`, as the answer grows."""

    question: AskedRef
    answer: list[AskedRef]
    answer_words: int
    answer_s: float
    guide_item: str | None
    follow_ups: list[QaPairEvent] = field(default_factory=list)
    type: Literal["qa.pair"] = "qa.pair"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "question": self.question.to_dict(), "answer": [a.to_dict() for a in self.answer],
                "answerWords": self.answer_words, "answerSeconds": round(self.answer_s, 2),
                "guideItem": self.guide_item, "followUps": [f.to_dict() for f in self.follow_ups]}  # fmt: skip


@dataclass(slots=True)
class TalkBalanceEvent:
    """Share of speaking time per participant, interruptions (speech starting while another's utterance is open)
    and the longest candidate answer: for the interviewer's own pacing, never for scoring the candidate."""

    participants: list[dict[str, Any]]  # {"participantId", "role", "speakingSeconds", "share", "interruptions"}
    longest_answer: dict[str, Any] | None  # {"questionSeq", "seconds", "words"}
    type: Literal["talk.balance"] = "talk.balance"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "participants": self.participants, "longestCandidateAnswer": self.longest_answer}


GuidanceEvent = ProtectedTopicAlert | GuideCoverageEvent | QaPairEvent | TalkBalanceEvent
StreamEvent = (SegmentEvent | SentimentEvent | KeywordsEvent | LevelEvent | ErrorEvent | ParticipantEvent
               | ConsentEvent | GuidanceEvent)  # fmt: skip


def to_json(event: StreamEvent | StoredSegment) -> str:
    return json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------------------
# Domain events of the interview aggregate (issue 4 adds them below this line).
# Each serialises as {"type": <class name>, "id": <uuid, the JetStream msg id>, "interviewId", "occurredAt", ...data}
# and goes to the NATS subject `interviews.<interviewId>.<SUBJECT>`.

import uuid  # noqa: E402  (domain-event section imports kept next to their use)
from datetime import UTC as _UTC  # noqa: E402


def iso(dt: Any) -> str | None:
    """Aware datetime -> ISO 8601 UTC with milliseconds and 'Z' (naive datetimes are taken as UTC)."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_UTC)
    return str(dt.astimezone(_UTC).isoformat(timespec="milliseconds")).replace("+00:00", "Z")


def _event_id() -> str:
    return str(uuid.uuid4())


class DomainEvent:
    """Mixin for the domain events below (slotted dataclasses with interview_id, occurred_at, id)."""

    __slots__ = ()
    SUBJECT = ""
    # Declared for type checkers; each subclass defines them as dataclass fields.
    id: str
    interview_id: str
    occurred_at: Any

    def data(self) -> dict[str, Any]:
        return {}

    @property
    def subject(self) -> str:
        return f"interviews.{self.interview_id}.{self.SUBJECT}"

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "id": self.id, "interviewId": self.interview_id,
                "occurredAt": iso(self.occurred_at), **self.data()}

    def to_json_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(slots=True, frozen=True)
class InterviewScheduled(DomainEvent):
    interview_id: str
    occurred_at: Any  # datetime (aware UTC)
    candidate_id: str
    job_id: str
    scheduled_at: Any
    id: str = field(default_factory=_event_id)
    SUBJECT = "scheduled"

    def data(self) -> dict[str, Any]:
        return {"candidateId": self.candidate_id, "jobId": self.job_id, "scheduledAt": iso(self.scheduled_at)}


@dataclass(slots=True, frozen=True)
class InterviewStarted(DomainEvent):
    interview_id: str
    occurred_at: Any
    id: str = field(default_factory=_event_id)
    SUBJECT = "started"


@dataclass(slots=True, frozen=True)
class _SegmentStored(DomainEvent):
    """A segment write: the stored segment as its wire form, keyed by participant and seq."""

    interview_id: str
    occurred_at: Any
    segment: SegmentEvent
    id: str = field(default_factory=_event_id)

    def data(self) -> dict[str, Any]:
        seg = self.segment.to_dict()
        seg.pop("type", None)
        return {"participantId": self.segment.speaker.participant_id, "seq": self.segment.seq, "segment": seg}


@dataclass(slots=True, frozen=True)
class SegmentTranscribed(_SegmentStored):
    """A final transcript segment was stored (one per (interviewId, participantId, seq))."""

    SUBJECT = "segment"


@dataclass(slots=True, frozen=True)
class SegmentRevised(_SegmentStored):
    """A revision of a stored final was stored (one per (interviewId, participantId, seq, revision)).

    Published after the SegmentTranscribed of the same segment, never before; `segment` is the revised segment
    (its `text`, `words`, ... replace the final's, see `REVISED_FIELDS`)."""

    SUBJECT = "revision"

    def data(self) -> dict[str, Any]:
        return {**_SegmentStored.data(self), "revision": self.segment.revision}


@dataclass(slots=True, frozen=True)
class InterviewCompleted(DomainEvent):
    interview_id: str
    occurred_at: Any
    duration_s: float | None
    id: str = field(default_factory=_event_id)
    SUBJECT = "completed"

    def data(self) -> dict[str, Any]:
        return {"duration": self.duration_s}


@dataclass(slots=True, frozen=True)
class InterviewCancelled(DomainEvent):
    interview_id: str
    occurred_at: Any
    reason: str
    previous_status: str
    id: str = field(default_factory=_event_id)
    SUBJECT = "cancelled"

    def data(self) -> dict[str, Any]:
        return {"reason": self.reason, "previousStatus": self.previous_status}


@dataclass(slots=True, frozen=True)
class AnalysisCompleted(DomainEvent):
    interview_id: str
    occurred_at: Any
    sentiment_overall: float | None
    overall: dict[str, Any] | None
    keywords: list[str]
    id: str = field(default_factory=_event_id)
    SUBJECT = "analysis"

    def data(self) -> dict[str, Any]:
        return {"sentiment": {"overall": self.sentiment_overall}, "overall": self.overall, "keywords": self.keywords}


@dataclass(slots=True, frozen=True)
class AnalysisRequested(DomainEvent):
    """A scorecard analysis of the interview was asked for (on completion, or on demand)."""

    interview_id: str
    occurred_at: Any
    trigger: str  # "completed" | "on_demand" | "resumed"
    providers: list[str]
    id: str = field(default_factory=_event_id)
    SUBJECT = "analysis.requested"

    def data(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "providers": list(self.providers)}


@dataclass(slots=True, frozen=True)
class AnalysisSucceeded(DomainEvent):
    """The analysis finished with a scorecard from at least one provider (`status` completed or partial)."""

    interview_id: str
    occurred_at: Any
    status: str
    overall: float | None
    recommendation: str
    basis: list[str]
    flagged: list[str]
    id: str = field(default_factory=_event_id)
    SUBJECT = "analysis.completed"

    def data(self) -> dict[str, Any]:
        return {"status": self.status, "overall": self.overall, "recommendation": self.recommendation,
                "basis": list(self.basis), "flagged": list(self.flagged)}


@dataclass(slots=True, frozen=True)
class AnalysisFailed(DomainEvent):
    """No configured provider produced a scorecard (`errors`: provider -> what went wrong)."""

    interview_id: str
    occurred_at: Any
    errors: dict[str, str]
    id: str = field(default_factory=_event_id)
    SUBJECT = "analysis.failed"

    def data(self) -> dict[str, Any]:
        return {"errors": dict(self.errors)}


@dataclass(slots=True, frozen=True)
class InterviewDataErased(DomainEvent):
    """The candidate's personal data in this interview was erased (crypto-shredded): its transcript, revisions
    and analysis are gone, and every earlier event's sealed fields no longer open. Carries no personal data."""

    interview_id: str
    occurred_at: Any
    candidate_id: str
    erasure_id: str
    id: str = field(default_factory=_event_id)
    SUBJECT = "erased"

    def data(self) -> dict[str, Any]:
        return {"candidateId": self.candidate_id, "erasureId": self.erasure_id}


# the NATS subject's last token per guidance event type: interviews.<id>.guidance.<kind>
GUIDANCE_KINDS = {"alert.protected_topic": "alert", "guide.coverage": "coverage", "qa.pair": "qa",
                  "talk.balance": "balance"}


def guidance_key(event: GuidanceEvent) -> str:
    """What a guidance event is the latest state of: one alert or question/answer pair per question final
    (`<kind>:<participantId>:<seq>`), one coverage and one talk balance per interview (`<kind>`)."""
    kind = GUIDANCE_KINDS[event.type]
    if isinstance(event, ProtectedTopicAlert):
        return f"{kind}:{event.participant_id}:{event.seq}"
    if isinstance(event, QaPairEvent):
        return f"{kind}:{event.question.participant_id}:{event.question.seq}"
    return kind


@dataclass(slots=True, frozen=True)
class GuidanceRecorded(DomainEvent):
    """Live guidance stored with the interview: a protected-topic alert, the guide's coverage, a question/answer
    pair or the talk balance (`guidance`: its stream event; a later one of the same `guidance_key` supersedes
    it). Published on `interviews.<id>.guidance.<alert|coverage|qa|balance>`; its texts are sealed there."""

    interview_id: str
    occurred_at: Any
    guidance: GuidanceEvent
    id: str = field(default_factory=_event_id)
    SUBJECT = "guidance"

    @property
    def kind(self) -> str:
        return GUIDANCE_KINDS[self.guidance.type]

    @property
    def subject(self) -> str:
        return f"interviews.{self.interview_id}.guidance.{self.kind}"

    def data(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": guidance_key(self.guidance), "guidance": self.guidance.to_dict()}
