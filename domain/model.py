"""The interview aggregate, candidates, and the value rules they enforce. Pure: no I/O, time comes in as data.

An `Interview` moves scheduled -> in_progress -> completed, or scheduled|in_progress -> cancelled, and nothing
else. Every state change records a domain event (see `domain.events`); the repository persists the events in the
same document write as the change (the outbox), so an event exists if and only if its write committed.

Documents (`to_document()`) use the field names of the service's MongoDB collections and HTTP API; they are the
one serialised form of these entities.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from domain.access import DEFAULT_ORG
from domain.events import (
    AnalysisCompleted,
    DomainEvent,
    InterviewCancelled,
    InterviewCompleted,
    InterviewDataErased,
    InterviewScheduled,
    InterviewStarted,
    StoredSegment,
)

# ---------------------------------------------------------------------------------------------------------
# Errors: the one family the application raises; adapters translate them (HTTP status, log lines).


class DomainError(Exception):
    code = "domain_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(DomainError):
    code = "not_found"

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class Conflict(DomainError):
    """An illegal status move, a stale `metadata.version`, or a duplicate unique value."""

    code = "conflict"


class Unavailable(Exception):
    """A backing service (the database) cannot take the request now; retrying later may succeed.

    Deliberately not a DomainError: callers treat DomainError as "refused for good" and this as "retry".
    """

    code = "unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(DomainError, ValueError):
    """Bad input. `fields` maps each offending field (dotted path) to what is wrong with it."""

    code = "validation_error"

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.fields = dict(fields)
        super().__init__("invalid " + ", ".join(f"{k}: {v}" for k, v in self.fields.items()))


# ---------------------------------------------------------------------------------------------------------
# Value rules

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # no '.', '*', '>' so an id is one NATS subject token
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
PHONE_RE = re.compile(r"^\+?[0-9 ()./-]{5,32}$")

SCHEDULED, IN_PROGRESS, COMPLETED, CANCELLED = "scheduled", "in_progress", "completed", "cancelled"
STATUSES = (SCHEDULED, IN_PROGRESS, COMPLETED, CANCELLED)
TRANSITIONS: dict[str, frozenset[str]] = {
    SCHEDULED: frozenset({IN_PROGRESS, CANCELLED}),
    IN_PROGRESS: frozenset({COMPLETED, CANCELLED}),
    COMPLETED: frozenset(),
    CANCELLED: frozenset(),
}
INTERVIEW_TYPES = ("screening", "technical", "behavioral", "cultural", "case", "final")
INTERVIEW_FORMATS = ("video", "audio", "phone", "in_person")
RECOMMENDATIONS = ("strong_hire", "hire", "undecided", "no_hire", "strong_no_hire")
COMPETENCY_MAX = 5.0
# A guide question's time budget, seconds: at least one, and no longer than a long interview day (a larger value
# is a typo in minutes or milliseconds, better refused than silently never reached)
QUESTION_BUDGET_S = (1.0, 8 * 3600.0)


def utc_now() -> datetime:
    """Wall clock in UTC truncated to milliseconds, the precision BSON dates keep (so round-trips compare equal)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def parse_time(value: object) -> datetime:
    """ISO 8601 with an explicit offset (or 'Z'), or an aware datetime -> aware UTC datetime at ms precision."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError("not an ISO 8601 timestamp") from None
    else:
        raise ValueError("expected an ISO 8601 timestamp string")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("timestamp needs a timezone (e.g. 'Z' or '+02:00')")
    if not 1970 <= dt.year <= 9999:
        raise ValueError("timestamp out of range")
    dt = dt.astimezone(UTC)
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


class Fields:
    """Reads untrusted JSON objects field by field, collecting every problem before raising one ValidationError.

    Unknown fields are errors too (a typo'd field silently ignored is a bug report later).
    """

    _MISSING = object()

    def __init__(self, data: object, *, prefix: str = "", allowed: Iterable[str] = ()) -> None:
        self.prefix = prefix
        self.errors: dict[str, str] = {}
        self.invalid = not isinstance(data, Mapping)  # then only that is reported, not each missing field
        if not isinstance(data, Mapping):
            self.data: Mapping[str, Any] = {}
            self.errors[prefix.rstrip(".") or "body"] = "expected a JSON object"
            return
        self.data = data
        allowed = set(allowed)
        if allowed:
            for key in data:
                if key not in allowed:
                    self.errors[prefix + str(key)] = "unknown field"

    def has(self, name: str) -> bool:
        return name in self.data

    def error(self, name: str, message: str) -> None:
        self.errors.setdefault(self.prefix + name, message)

    def _get(self, name: str, required: bool) -> Any:
        value = self.data.get(name, self._MISSING)
        if value is self._MISSING or value is None:
            if required and not self.invalid:
                self.error(name, "field required")
            return self._MISSING
        return value

    def text(self, name: str, *, required: bool = True, max_len: int = 200, default: str | None = None,
            pattern: re.Pattern[str] | None = None, what: str = "") -> Any:
        value = self._get(name, required)
        if value is self._MISSING:
            return default
        if not isinstance(value, str):
            self.error(name, "expected a string")
            return default
        value = value.strip()
        if required and not value:
            self.error(name, "must not be empty")
        elif len(value) > max_len:
            self.error(name, f"longer than {max_len} characters")
        elif value and pattern is not None and pattern.fullmatch(value) is None:
            self.error(name, f"not a valid {what or name}")
        return value

    def ident(self, name: str, *, required: bool = True) -> Any:
        value = self._get(name, required)
        if value is self._MISSING:
            return None
        if not is_valid_id(value):
            self.error(name, "expected an id of 1-64 letters, digits, '_' or '-'")
            return None
        return value

    def time(self, name: str, *, required: bool = True) -> datetime | None:
        value = self._get(name, required)
        if value is self._MISSING:
            return None
        try:
            return parse_time(value)
        except ValueError as exc:
            self.error(name, str(exc))
            return None

    def choice(self, name: str, choices: tuple[str, ...], *, default: str | None = None) -> Any:
        value = self._get(name, default is None)
        if value is self._MISSING:
            return default
        if value not in choices:
            self.error(name, "expected one of " + ", ".join(choices))
            return default
        return value

    def number(self, name: str, lo: float, hi: float, *, required: bool = True) -> float | None:
        value = self._get(name, required)
        if value is self._MISSING:
            return None
        # an int is finite whatever its size (JSON allows 10**400; math.isfinite would overflow converting it)
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                isinstance(value, float) and not math.isfinite(value)):
            self.error(name, "expected a number")
            return None
        if not lo <= value <= hi:  # exact for ints of any size: only one in range is converted below
            self.error(name, f"must be between {lo:g} and {hi:g}")
            return None
        return float(value)

    def str_list(self, name: str, *, max_items: int = 50, max_len: int = 100, ids: bool = False) -> list[str]:
        value = self._get(name, False)
        if value is self._MISSING:
            return []
        if not isinstance(value, list):
            self.error(name, "expected an array of strings")
            return []
        if len(value) > max_items:
            self.error(name, f"more than {max_items} items")
            return []
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip() or len(item) > max_len:
                self.error(f"{name}[{i}]", f"expected a non-empty string of at most {max_len} characters")
            elif ids and not is_valid_id(item):
                self.error(f"{name}[{i}]", "expected an id of 1-64 letters, digits, '_' or '-'")
            else:
                out.append(item.strip())
        return out

    def nested(self, name: str, allowed: Iterable[str]) -> Fields | None:
        value = self._get(name, False)
        if value is self._MISSING:
            return None
        sub = Fields(value, prefix=f"{self.prefix}{name}.", allowed=allowed)
        return sub

    def merge(self, sub: Fields | None) -> None:
        if sub is not None:
            for k, v in sub.errors.items():
                self.errors.setdefault(k, v)

    def done(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)


# ---------------------------------------------------------------------------------------------------------
# Entities


@dataclass(slots=True)
class Metadata:
    created_at: datetime
    updated_at: datetime
    created_by: str
    version: int = 1

    def to_document(self) -> dict[str, Any]:
        return {"createdAt": self.created_at, "updatedAt": self.updated_at, "createdBy": self.created_by,
                "version": self.version}

    @classmethod
    def from_document(cls, d: Mapping[str, Any]) -> Metadata:
        return cls(created_at=d["createdAt"], updated_at=d["updatedAt"], created_by=d.get("createdBy", ""),
                   version=int(d["version"]))


@dataclass(slots=True)
class Question:
    question_id: str
    text: str
    category: str = ""
    order: int = 0
    expected_keywords: list[str] = field(default_factory=list)
    asked_at: datetime | None = None
    budget_s: float | None = None  # the time the guide plans for its question and answers (live guidance)

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"questionId": self.question_id, "text": self.text, "category": self.category,
                               "order": self.order, "expectedKeywords": list(self.expected_keywords),
                               "askedAt": self.asked_at}
        if self.budget_s is not None:  # only when planned: questions stored before budgets keep their shape
            doc["budgetS"] = self.budget_s
        return doc

    @classmethod
    def from_document(cls, d: Mapping[str, Any]) -> Question:
        budget = d.get("budgetS")
        return cls(question_id=d["questionId"], text=d["text"], category=d.get("category", ""),
                   order=int(d.get("order", 0)), expected_keywords=list(d.get("expectedKeywords", [])),
                   asked_at=d.get("askedAt"), budget_s=float(budget) if budget is not None else None)


@dataclass(slots=True)
class Job:
    """What an interview recruits for, as far as the live transcription needs it: its skills and description name
    the terms speech-to-text is told for that interview (`pipeline.vocabulary`). Not personal data: stored in
    clear."""

    title: str = ""
    skills: list[str] = field(default_factory=list)
    description: str = ""

    def to_document(self) -> dict[str, Any]:
        return {"title": self.title, "skills": list(self.skills), "description": self.description}

    @classmethod
    def from_document(cls, d: Mapping[str, Any] | None) -> Job | None:
        if not d:
            return None
        return cls(title=d.get("title", ""), skills=list(d.get("skills") or []), description=d.get("description", ""))


@dataclass(slots=True)
class Analysis:
    """Text-only analysis of the transcript: sentiment from words, never from voice or face."""

    status: str = "pending"  # pending | completed
    sentiment_overall: float | None = None  # -1..1
    sentiment_timeline: list[dict[str, Any]] = field(default_factory=list)  # [{"at_s", "score", "participantId"}]
    keywords: list[dict[str, Any]] = field(default_factory=list)  # [{"term", "count", "relevance"}]
    competency: dict[str, float] = field(default_factory=dict)  # name -> 0..5
    overall: dict[str, Any] | None = None  # {"score": 0..100, "recommendation", "summary"}
    completed_at: datetime | None = None

    def to_document(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "sentiment": {"overall": self.sentiment_overall, "timeline": [dict(t) for t in self.sentiment_timeline]},
            "keywords": [dict(k) for k in self.keywords],
            "competency": dict(self.competency),
            "overall": dict(self.overall) if self.overall is not None else None,
            "completedAt": self.completed_at,
        }

    @classmethod
    def from_document(cls, d: Mapping[str, Any] | None) -> Analysis:
        if not d:
            return cls()
        sentiment = d.get("sentiment") or {}
        return cls(status=d.get("status", "pending"), sentiment_overall=sentiment.get("overall"),
                   sentiment_timeline=list(sentiment.get("timeline", [])), keywords=list(d.get("keywords", [])),
                   competency=dict(d.get("competency", {})), overall=d.get("overall"),
                   completed_at=d.get("completedAt"))


@dataclass(slots=True)
class Interview:
    interview_id: str
    candidate_id: str
    job_id: str
    scheduled_at: datetime
    metadata: Metadata
    type: str = "screening"
    format: str = "video"
    interviewers: list[str] = field(default_factory=list)
    status: str = SCHEDULED
    started_at: datetime | None = None
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None
    cancel_reason: str = ""
    duration_s: float | None = None
    questions: list[Question] = field(default_factory=list)
    job: Job | None = None
    transcription_status: str = "pending"  # pending | in_progress | completed
    analysis: Analysis = field(default_factory=Analysis)
    events: list[DomainEvent] = field(default_factory=list)  # recorded, not yet handed to the repository
    org_id: str = DEFAULT_ORG
    data_erased_at: datetime | None = None  # the candidate's data in it was erased (erasure or retention)
    unreadable: list[str] = field(default_factory=list)  # fields that did not decrypt on this read

    @classmethod
    def schedule(cls, *, interview_id: str, candidate_id: str, job_id: str, scheduled_at: datetime, now: datetime,
                 created_by: str, type: str = "screening", format: str = "video",
                 interviewers: list[str] | None = None, questions: list[Question] | None = None,
                 org_id: str = DEFAULT_ORG, job: Job | None = None) -> Interview:
        interview = cls(interview_id=interview_id, candidate_id=candidate_id, job_id=job_id,
                        scheduled_at=scheduled_at, metadata=Metadata(now, now, created_by, 1), type=type,
                        format=format, interviewers=list(interviewers or []), questions=list(questions or []),
                        org_id=org_id, job=job)
        interview.events.append(InterviewScheduled(interview_id=interview_id, occurred_at=now,
                                                   candidate_id=candidate_id, job_id=job_id,
                                                   scheduled_at=scheduled_at))
        return interview

    # -- behaviour ------------------------------------------------------------------------------------------

    def _move(self, to: str) -> None:
        if to not in TRANSITIONS[self.status]:
            raise Conflict(f"interview {self.interview_id} is {self.status}; it cannot become {to}",
                           code="illegal_transition")
        self.status = to

    def _touch(self, now: datetime) -> None:
        self.metadata.updated_at = now

    def start(self, now: datetime) -> None:
        self._move(IN_PROGRESS)
        self.started_at = now
        self.transcription_status = "in_progress"
        self._touch(now)
        self.events.append(InterviewStarted(interview_id=self.interview_id, occurred_at=now))

    def complete(self, now: datetime) -> None:
        self._move(COMPLETED)
        self.completed_at = now
        assert self.started_at is not None  # in_progress implies started
        self.duration_s = round(max(0.0, (now - self.started_at).total_seconds()), 3)
        self.transcription_status = "completed"
        self._touch(now)
        self.events.append(InterviewCompleted(interview_id=self.interview_id, occurred_at=now,
                                              duration_s=self.duration_s))

    def cancel(self, now: datetime, reason: str = "") -> None:
        was = self.status
        self._move(CANCELLED)
        self.cancelled_at = now
        self.cancel_reason = reason
        if self.transcription_status == "in_progress":
            self.transcription_status = "completed"
        self._touch(now)
        self.events.append(InterviewCancelled(interview_id=self.interview_id, occurred_at=now, reason=reason,
                                              previous_status=was))

    def add_question(self, question: Question, now: datetime) -> Question:
        if self.status not in (SCHEDULED, IN_PROGRESS):
            raise Conflict(f"interview {self.interview_id} is {self.status}; questions can no longer be added",
                           code="illegal_transition")
        if any(q.question_id == question.question_id for q in self.questions):
            raise Conflict(f"question {question.question_id!r} already exists", code="duplicate")
        if len(self.questions) >= 200:
            raise ValidationError({"questions": "an interview holds at most 200 questions"})
        question.order = len(self.questions) + 1
        self.questions.append(question)
        self._touch(now)
        return question

    def ask_question(self, question_id: str, now: datetime) -> Question:
        if self.status != IN_PROGRESS:
            raise Conflict(f"interview {self.interview_id} is {self.status}; questions are asked while in_progress",
                           code="illegal_transition")
        for q in self.questions:
            if q.question_id == question_id:
                if q.asked_at is not None:
                    raise Conflict(f"question {question_id!r} was already asked", code="already_asked")
                q.asked_at = now
                self._touch(now)
                return q
        raise NotFound("question", question_id)

    def record_analysis(self, analysis: Analysis, now: datetime) -> None:
        if self.status != COMPLETED:
            raise Conflict(f"interview {self.interview_id} is {self.status}; analysis follows completion",
                           code="illegal_transition")
        analysis.status = "completed"
        analysis.completed_at = now
        self.analysis = analysis
        self._touch(now)
        self.events.append(AnalysisCompleted(interview_id=self.interview_id, occurred_at=now,
                                             sentiment_overall=analysis.sentiment_overall,
                                             overall=dict(analysis.overall) if analysis.overall else None,
                                             keywords=[str(k.get("term", "")) for k in analysis.keywords][:20]))

    def note_analysis(self, event: DomainEvent, now: datetime) -> None:
        """An analysis job's progress (AnalysisRequested, AnalysisSucceeded, AnalysisFailed), published through this
        interview's outbox like its own events. The job's state lives in its own collection."""
        if self.status != COMPLETED:
            raise Conflict(f"interview {self.interview_id} is {self.status}; analysis follows completion",
                           code="illegal_transition")
        self._touch(now)
        self.events.append(event)

    def erase_personal_data(self, now: datetime, erasure_id: str) -> None:
        """The candidate's data was erased: an open interview is cancelled (nothing more is recorded), the analysis
        and any free text are cleared. The transcript itself lives in the store and is deleted there."""
        if self.status in (SCHEDULED, IN_PROGRESS):
            self.cancel(now, "")
        self.cancel_reason = ""
        self.analysis = Analysis()
        self.data_erased_at = now
        self._touch(now)
        self.events.append(InterviewDataErased(interview_id=self.interview_id, occurred_at=now,
                                               candidate_id=self.candidate_id, erasure_id=erasure_id))

    def accepts_segments(self) -> bool:
        """Finals may arrive after completion (a drained stream); a cancelled interview records nothing more."""
        return self.status != CANCELLED

    def take_events(self) -> list[DomainEvent]:
        events, self.events = self.events, []
        return events

    # -- documents ------------------------------------------------------------------------------------------

    def to_document(self, segments: list[StoredSegment] | None = None) -> dict[str, Any]:
        """The seed-shaped document. `segments` fills transcription.segments on reads (they live in their own
        append-only collection; the stored interview document keeps an empty list)."""
        return {
            "interviewId": self.interview_id,
            "orgId": self.org_id,
            "candidateId": self.candidate_id,
            "jobId": self.job_id,
            "status": self.status,
            "scheduledAt": self.scheduled_at,
            "startedAt": self.started_at,
            "completedAt": self.completed_at,
            "cancelledAt": self.cancelled_at,
            "cancelReason": self.cancel_reason,
            "duration": self.duration_s,
            "interviewers": list(self.interviewers),
            "type": self.type,
            "format": self.format,
            "questions": [q.to_document() for q in self.questions],
            "job": self.job.to_document() if self.job is not None else None,
            "transcription": {"status": self.transcription_status,
                              "segments": [s.to_document() for s in segments or ()]},
            "analysis": self.analysis.to_document(),
            "metadata": self.metadata.to_document(),
            "dataErasedAt": self.data_erased_at,
            **({"unreadable": list(self.unreadable)} if self.unreadable else {}),
        }

    @classmethod
    def from_document(cls, d: Mapping[str, Any]) -> Interview:
        transcription = d.get("transcription") or {}
        return cls(
            interview_id=d["interviewId"], candidate_id=d["candidateId"], job_id=d["jobId"],
            scheduled_at=d["scheduledAt"], metadata=Metadata.from_document(d["metadata"]),
            type=d.get("type", "screening"), format=d.get("format", "video"),
            interviewers=list(d.get("interviewers", [])), status=d["status"], started_at=d.get("startedAt"),
            completed_at=d.get("completedAt"), cancelled_at=d.get("cancelledAt"),
            cancel_reason=d.get("cancelReason", ""), duration_s=d.get("duration"),
            questions=[Question.from_document(q) for q in d.get("questions", [])],
            job=Job.from_document(d.get("job")),
            transcription_status=transcription.get("status", "pending"),
            analysis=Analysis.from_document(d.get("analysis")),
            org_id=d.get("orgId") or DEFAULT_ORG,
            unreadable=list(d.get("unreadable", [])), data_erased_at=d.get("dataErasedAt"),
        )


@dataclass(slots=True)
class Resume:
    url: str = ""
    parsed: bool = False
    skills: list[str] = field(default_factory=list)
    experience_years: float | None = None
    text: str = ""  # the CV's text
    file_ref: str = ""  # where the CV file is kept (an opaque reference, e.g. an object-store key)

    def to_document(self) -> dict[str, Any]:
        return {"url": self.url, "parsed": self.parsed, "skills": list(self.skills),
                "experience": self.experience_years, "text": self.text, "fileRef": self.file_ref}

    @classmethod
    def from_document(cls, d: Mapping[str, Any] | None) -> Resume:
        d = d or {}
        return cls(url=d.get("url", ""), parsed=bool(d.get("parsed", False)), skills=list(d.get("skills") or []),
                   experience_years=d.get("experience"), text=d.get("text", ""), file_ref=d.get("fileRef", ""))


@dataclass(slots=True)
class Candidate:
    """A candidate's record. Every field but the id, metadata and `resume.parsed` is personal data (the store
    encrypts it). `experience` items are {company, role, from, to}, `education` {institution, degree, year},
    `applications` {jobId, status, appliedAt}."""

    candidate_id: str
    name: str
    email: str
    metadata: Metadata
    phone: str = ""
    resume: Resume = field(default_factory=Resume)
    org_id: str = DEFAULT_ORG
    location: str = ""
    notes: str = ""
    skills: list[str] = field(default_factory=list)
    experience: list[dict[str, Any]] = field(default_factory=list)
    education: list[dict[str, Any]] = field(default_factory=list)
    applications: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # fields that did not decrypt on this read

    def to_document(self, interviews: list[str] | None = None) -> dict[str, Any]:
        """`interviews` is filled on reads from the interviews collection (one source of truth, no dual write).
        `personalInfo` repeats the flat name/email/phone (both shapes are read by clients)."""
        doc = {"candidateId": self.candidate_id, "orgId": self.org_id, "name": self.name, "email": self.email, "phone": self.phone,
               "personalInfo": {"name": self.name, "email": self.email, "phone": self.phone,
                                "location": self.location},
               "resume": self.resume.to_document(), "skills": list(self.skills),
               "experience": [dict(e) for e in self.experience], "education": [dict(e) for e in self.education],
               "applications": [dict(a) for a in self.applications], "notes": self.notes,
               "interviews": list(interviews or []), "metadata": self.metadata.to_document()}
        if self.unreadable:
            doc["unreadable"] = list(self.unreadable)
        return doc

    @classmethod
    def from_document(cls, d: Mapping[str, Any]) -> Candidate:
        info = d.get("personalInfo") or {}
        return cls(candidate_id=d["candidateId"], name=d["name"], email=d["email"],
                   metadata=Metadata.from_document(d["metadata"]), phone=d.get("phone", ""),
                   resume=Resume.from_document(d.get("resume")), location=info.get("location", ""),
                   notes=d.get("notes", ""), skills=list(d.get("skills") or []),
                   experience=list(d.get("experience") or []), education=list(d.get("education") or []),
                   applications=list(d.get("applications") or []), unreadable=list(d.get("unreadable", [])),
                   org_id=d.get("orgId") or DEFAULT_ORG)
