"""Application layer: the commands and queries of the interviews service and `InterviewService`, their handlers.

Commands parse untrusted JSON once (`X.parse(data)` raises `ValidationError` naming every bad field) into
dataclasses the handlers take. Handlers load the aggregate, apply the change, and save it with the events it
recorded; the store writes both in one document write (see `adapters.mongo` for the outbox design). Reads return
seed-shaped documents (`domain.model` `to_document()`), datetimes as aware UTC `datetime`s.

Optimistic concurrency: a caller that read version N may pass `expected_version=N`; a stale write is a `Conflict`.
Without it the handler retries the whole load-apply-save a few times on a version race, so concurrent but
compatible changes (two questions added at once) both land and incompatible ones (two starts) end in one winner
and one `Conflict` (illegal transition) instead of a lost update.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from domain.access import DEFAULT_ORG
from domain.events import (
    DomainEvent,
    GuidanceEvent,
    GuidanceRecorded,
    SegmentEvent,
    SegmentRevised,
    SegmentTranscribed,
    StoredSegment,
    iso,
)
from domain.model import (
    COMPETENCY_MAX,
    EMAIL_RE,
    INTERVIEW_FORMATS,
    INTERVIEW_TYPES,
    PHONE_RE,
    QUESTION_BUDGET_S,
    RECOMMENDATIONS,
    STATUSES,
    Analysis,
    Candidate,
    Conflict,
    Fields,
    Interview,
    Job,
    Metadata,
    NotFound,
    Question,
    Resume,
    ValidationError,
    is_valid_id,
    parse_time,
    utc_now,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_PAGE = 200
DEFAULT_PAGE = 50
_RETRIES = 5

# ---------------------------------------------------------------------------------------------------------
# Commands


@dataclass(slots=True)
class CreateInterview:
    candidate_id: str
    job_id: str
    scheduled_at: datetime
    type: str = "screening"
    format: str = "video"
    interviewers: list[str] = field(default_factory=list)
    questions: list[AddQuestion] = field(default_factory=list)
    interview_id: str | None = None  # client-chosen id (idempotent retries); generated when None
    job: Job | None = None

    @classmethod
    def parse(cls, data: object) -> CreateInterview:
        f = Fields(data, allowed=("interviewId", "candidateId", "jobId", "scheduledAt", "type", "format",
                                  "interviewers", "questions", "job"))
        interview_id = f.ident("interviewId", required=False)
        candidate_id = f.ident("candidateId")
        job_id = f.ident("jobId")
        scheduled_at = f.time("scheduledAt")
        type_ = f.choice("type", INTERVIEW_TYPES, default="screening")
        format_ = f.choice("format", INTERVIEW_FORMATS, default="video")
        interviewers = f.str_list("interviewers", max_items=20, ids=True)
        questions: list[AddQuestion] = []
        raw_questions = f.data.get("questions")
        if raw_questions is not None:
            if not isinstance(raw_questions, list) or len(raw_questions) > 200:
                f.error("questions", "expected an array of at most 200 questions")
            else:
                for i, raw in enumerate(raw_questions):
                    try:
                        questions.append(AddQuestion.parse(raw, prefix=f"questions[{i}]."))
                    except ValidationError as exc:
                        for k, v in exc.fields.items():
                            f.errors.setdefault(k, v)
        job = None
        j = f.nested("job", allowed=("title", "skills", "description"))
        if j is not None:
            job = Job(title=j.text("title", required=False, max_len=200, default=""),
                      skills=j.str_list("skills", max_items=50, max_len=100),
                      description=j.text("description", required=False, max_len=5000, default=""))
            f.merge(j)
        f.done()
        return cls(candidate_id=candidate_id, job_id=job_id, scheduled_at=scheduled_at,  # type: ignore[arg-type]
                   type=type_, format=format_, interviewers=interviewers, questions=questions,
                   interview_id=interview_id, job=job)


@dataclass(slots=True)
class AddQuestion:
    text: str
    category: str = ""
    expected_keywords: list[str] = field(default_factory=list)
    question_id: str | None = None
    budget_s: float | None = None

    @classmethod
    def parse(cls, data: object, prefix: str = "") -> AddQuestion:
        f = Fields(data, prefix=prefix, allowed=("questionId", "text", "category", "expectedKeywords", "budgetS"))
        question_id = f.ident("questionId", required=False)
        text = f.text("text", max_len=2000)
        category = f.text("category", required=False, max_len=100, default="")
        keywords = f.str_list("expectedKeywords", max_items=50, max_len=100)
        budget_s = f.number("budgetS", *QUESTION_BUDGET_S, required=False)
        f.done()
        return cls(text=text, category=category, expected_keywords=keywords, question_id=question_id,
                   budget_s=budget_s)


@dataclass(slots=True)
class RecordAnalysis:
    analysis: Analysis

    @classmethod
    def parse(cls, data: object) -> RecordAnalysis:
        f = Fields(data, allowed=("sentiment", "keywords", "competency", "overall"))
        overall_sentiment: float | None = None
        timeline: list[dict[str, Any]] = []
        s = f.nested("sentiment", allowed=("overall", "timeline"))
        if s is not None:
            overall_sentiment = s.number("overall", -1.0, 1.0, required=False)
            raw = s.data.get("timeline")
            if raw is not None and not isinstance(raw, list):
                s.error("timeline", "expected an array")
            for i, item in enumerate(raw if isinstance(raw, list) else []):
                t = Fields(item, prefix=f"sentiment.timeline[{i}].", allowed=("at_s", "score", "participantId"))
                at_s, score = t.number("at_s", 0.0, 7 * 24 * 3600.0), t.number("score", -1.0, 1.0)
                pid = t.ident("participantId", required=False)
                f.merge(t)
                if not t.errors:
                    timeline.append({"at_s": at_s, "score": score, "participantId": pid})
            f.merge(s)
        keywords: list[dict[str, Any]] = []
        raw_kw = f.data.get("keywords")
        if raw_kw is not None and not isinstance(raw_kw, list):
            f.error("keywords", "expected an array")
        for i, item in enumerate(raw_kw if isinstance(raw_kw, list) else []):
            k = Fields(item, prefix=f"keywords[{i}].", allowed=("term", "count", "relevance"))
            term, count = k.text("term", max_len=100), k.number("count", 0, 1e9, required=False)
            relevance = k.number("relevance", 0.0, 1.0, required=False)
            f.merge(k)
            if not k.errors:
                keywords.append({"term": term, "count": int(count or 0), "relevance": relevance})
        competency: dict[str, float] = {}
        raw_c = f.data.get("competency")
        if raw_c is not None and not isinstance(raw_c, dict):
            f.error("competency", "expected an object of name -> score")
        for name in raw_c if isinstance(raw_c, dict) else {}:
            c = Fields(raw_c, prefix="competency.")
            score = c.number(name, 0.0, COMPETENCY_MAX)
            f.merge(c)
            if score is not None:
                competency[str(name)] = score
        overall: dict[str, Any] | None = None
        o = f.nested("overall", allowed=("score", "recommendation", "summary"))
        if o is not None:
            overall = {"score": o.number("score", 0.0, 100.0, required=False),
                       "recommendation": o.choice("recommendation", RECOMMENDATIONS, default="undecided"),
                       "summary": o.text("summary", required=False, max_len=5000, default="")}
            f.merge(o)
        f.done()
        return cls(Analysis(sentiment_overall=overall_sentiment, sentiment_timeline=timeline, keywords=keywords,
                            competency=competency, overall=overall))


_PROFILE_FIELDS = ("location", "notes", "skills", "experience", "education", "applications")
_CANDIDATE_FIELDS = ("candidateId", "name", "email", "phone", "personalInfo", "resume", *_PROFILE_FIELDS)
_PERSONAL_INFO_FIELDS = ("name", "email", "phone", "location")
_RESUME_FIELDS = ("url", "parsed", "skills", "experience", "text", "fileRef")
APPLICATION_STATUSES = ("applied", "screening", "interviewing", "offered", "hired", "rejected", "withdrawn")


def _parse_resume(f: Fields, base: Resume | None = None) -> Resume | None:
    r = f.nested("resume", allowed=_RESUME_FIELDS)
    if r is None:
        return base
    out = Resume() if base is None else Resume(base.url, base.parsed, list(base.skills), base.experience_years,
                                               base.text, base.file_ref)
    if r.has("url"):
        url = r.text("url", required=False, max_len=2000, default="")
        if url and not url.startswith(("http://", "https://")):
            r.error("url", "expected an http(s) URL")
        out.url = url
    if r.has("parsed"):
        parsed = r.data.get("parsed")
        if not isinstance(parsed, bool):
            r.error("parsed", "expected true or false")
        else:
            out.parsed = parsed
    if r.has("skills"):
        out.skills = r.str_list("skills", max_items=100, max_len=100)
    if r.has("experience"):
        out.experience_years = r.number("experience", 0.0, 80.0, required=False)
    if r.has("text"):
        out.text = r.text("text", required=False, max_len=100_000, default="")
    if r.has("fileRef"):
        out.file_ref = r.text("fileRef", required=False, max_len=500, default="")
    f.merge(r)
    return out


def _records(f: Fields, name: str, read: Callable[[Fields], dict[str, Any]], allowed: tuple[str, ...],
             max_items: int = 50) -> list[dict[str, Any]]:
    """A list of small objects (`read` validates one, through its `Fields`)."""
    raw = f.data.get(name)
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > max_items:
        f.error(name, f"expected an array of at most {max_items} objects")
        return []
    out = []
    for i, item in enumerate(raw):
        sub = Fields(item, prefix=f"{f.prefix}{name}[{i}].", allowed=allowed)
        record = read(sub)
        f.merge(sub)
        out.append(record)
    return out


def _experience(r: Fields) -> dict[str, Any]:
    return {"company": r.text("company", max_len=200), "role": r.text("role", required=False, max_len=200,
                                                                      default=""),
            "from": r.text("from", required=False, max_len=20, default=""),
            "to": r.text("to", required=False, max_len=20, default="")}


def _education(r: Fields) -> dict[str, Any]:
    year = r.number("year", 1900, 2200, required=False)
    return {"institution": r.text("institution", max_len=200),
            "degree": r.text("degree", required=False, max_len=200, default=""),
            "year": int(year) if year is not None else None}


def _application(r: Fields) -> dict[str, Any]:
    applied = r.time("appliedAt", required=False)
    return {"jobId": r.ident("jobId"), "status": r.choice("status", APPLICATION_STATUSES, default="applied"),
            "appliedAt": iso(applied) if applied else None}


def _parse_profile(f: Fields) -> dict[str, Any]:
    """The personal fields besides name, email, phone and resume, the ones present only (for updates)."""
    out: dict[str, Any] = {}
    if f.has("location"):
        out["location"] = f.text("location", required=False, max_len=200, default="")
    if f.has("notes"):
        out["notes"] = f.text("notes", required=False, max_len=20_000, default="")
    if f.has("skills"):
        out["skills"] = f.str_list("skills", max_items=100, max_len=100)
    if f.has("experience"):
        out["experience"] = _records(f, "experience", _experience, ("company", "role", "from", "to"))
    if f.has("education"):
        out["education"] = _records(f, "education", _education, ("institution", "degree", "year"))
    if f.has("applications"):
        out["applications"] = _records(f, "applications", _application, ("jobId", "status", "appliedAt"), 200)
    return out


def _personal_info(f: Fields) -> Fields:
    """The fields of `personalInfo` (the full shape), or the flat name/email/phone/location of `f` itself."""
    info = f.nested("personalInfo", allowed=_PERSONAL_INFO_FIELDS)
    if info is None:
        return f
    for name in _PERSONAL_INFO_FIELDS:
        if f.has(name):
            f.error(name, "give it either flat or in personalInfo, not both")
    return info


@dataclass(slots=True)
class CreateCandidate:
    name: str
    email: str
    phone: str = ""
    resume: Resume = field(default_factory=Resume)
    candidate_id: str | None = None
    profile: dict[str, Any] = field(default_factory=dict)  # location, notes, skills, experience, ...

    @classmethod
    def parse(cls, data: object) -> CreateCandidate:
        f = Fields(data, allowed=_CANDIDATE_FIELDS)
        candidate_id = f.ident("candidateId", required=False)
        info = _personal_info(f)
        name = info.text("name", max_len=200)
        email = info.text("email", max_len=254, pattern=EMAIL_RE, what="email address")
        phone = info.text("phone", required=False, max_len=32, pattern=PHONE_RE, what="phone number", default="")
        profile = _parse_profile(f)
        if info is not f and info.has("location"):
            profile["location"] = info.text("location", required=False, max_len=200, default="")
        f.merge(info if info is not f else None)
        resume = _parse_resume(f) or Resume()
        f.done()
        return cls(name=name, email=email.lower(), phone=phone, resume=resume, candidate_id=candidate_id,
                   profile=profile)


@dataclass(slots=True)
class UpdateCandidate:
    """Partial update: only the fields present change."""

    changes: dict[str, Any]
    expected_version: int | None = None

    @classmethod
    def parse(cls, data: object) -> UpdateCandidate:
        f = Fields(data, allowed=(*_CANDIDATE_FIELDS[1:], "version"))
        info = _personal_info(f)
        changes: dict[str, Any] = {}
        if info.has("name"):
            changes["name"] = info.text("name", max_len=200)
        if info.has("email"):
            email = info.text("email", max_len=254, pattern=EMAIL_RE, what="email address")
            changes["email"] = email.lower() if isinstance(email, str) else email
        if info.has("phone"):
            changes["phone"] = info.text("phone", required=False, max_len=32, pattern=PHONE_RE,
                                         what="phone number", default="")
        changes.update(_parse_profile(f))
        if info is not f:
            if info.has("location"):
                changes["location"] = info.text("location", required=False, max_len=200, default="")
            f.merge(info)
        if f.has("resume"):
            changes["resume"] = f.data["resume"]  # validated against the current resume by the handler
            _parse_resume(f)
        version: int | None = None
        if f.has("version"):
            raw = f.data["version"]
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
                f.error("version", "expected a positive integer")
            else:
                version = raw
        if not changes and not f.errors:
            f.error("body", "nothing to update")
        f.done()
        return cls(changes=changes, expected_version=version)


# ---------------------------------------------------------------------------------------------------------
# Queries


@dataclass(slots=True, frozen=True)
class Cursor:
    """Keyset position: the sort key of the last item of the previous page. Opaque to clients."""

    at: datetime
    ident: str

    def encode(self) -> str:
        raw = json.dumps({"t": iso(self.at), "i": self.ident}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            d = json.loads(raw)
            cursor = cls(at=parse_time(d["t"]), ident=d["i"])
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
            raise ValueError("not a cursor returned by this API") from None
        if not is_valid_id(cursor.ident):
            raise ValueError("not a cursor returned by this API")
        return cursor


def _parse_page(f: Fields) -> tuple[Cursor | None, int]:
    after = None
    token = f.data.get("cursor")
    if token:
        if not isinstance(token, str):
            f.error("cursor", "expected a string")
        else:
            try:
                after = Cursor.decode(token)
            except ValueError as exc:
                f.error("cursor", str(exc))
    limit = DEFAULT_PAGE
    raw = f.data.get("limit")
    if raw not in (None, ""):
        try:
            limit = int(raw)
            if not 1 <= limit <= MAX_PAGE:
                raise ValueError
        except (TypeError, ValueError):
            f.error("limit", f"expected an integer from 1 to {MAX_PAGE}")
            limit = DEFAULT_PAGE
    return after, limit


@dataclass(slots=True, frozen=True)
class InterviewQuery:
    status: str | None = None
    candidate_id: str | None = None
    job_id: str | None = None
    scheduled_from: datetime | None = None  # inclusive
    scheduled_to: datetime | None = None  # exclusive
    after: Cursor | None = None
    limit: int = DEFAULT_PAGE
    org_id: str = DEFAULT_ORG  # set by the caller's organisation, never from the query string
    interviewer: str | None = None  # only interviews this user is assigned to (an interviewer's list)

    @classmethod
    def parse(cls, params: dict[str, Any]) -> InterviewQuery:
        """From query-string parameters: status, candidateId, jobId, from, to, cursor, limit."""
        f = Fields(params, allowed=("status", "candidateId", "jobId", "from", "to", "cursor", "limit"))
        status = f.choice("status", STATUSES) if params.get("status") else None
        candidate_id = f.ident("candidateId", required=False) if params.get("candidateId") else None
        job_id = f.ident("jobId", required=False) if params.get("jobId") else None
        start = f.time("from", required=False) if params.get("from") else None
        end = f.time("to", required=False) if params.get("to") else None
        if start and end and end <= start:
            f.error("to", "must be after 'from'")
        after, limit = _parse_page(f)
        f.done()
        return cls(status=status, candidate_id=candidate_id, job_id=job_id, scheduled_from=start,
                   scheduled_to=end, after=after, limit=limit)


@dataclass(slots=True, frozen=True)
class CandidateQuery:
    after: Cursor | None = None
    limit: int = DEFAULT_PAGE
    org_id: str = DEFAULT_ORG
    email: str | None = None  # exact match, case-insensitive (the store compares blind indexes)

    @classmethod
    def parse(cls, params: dict[str, Any]) -> CandidateQuery:
        f = Fields(params, allowed=("cursor", "limit", "email"))
        email = f.text("email", required=False, max_len=254, pattern=EMAIL_RE, what="email address") \
            if params.get("email") else None
        after, limit = _parse_page(f)
        f.done()
        return cls(after=after, limit=limit, email=email.lower() if email else None)


# ---------------------------------------------------------------------------------------------------------
# The store the handlers need. Implemented over MongoDB (the `adapters.mongo` store, on a real MongoDB or the
# embedded nx-27017); tests/test_domain.py runs the same service over an in-memory one to pin the contract.


class InterviewStore(Protocol):
    """Interviews, candidates and transcript segments, with the outbox written in the same document write.

    Writes that change an interview carry the events they produced; the store keeps them with the change
    atomically, so the outbox yields exactly the events of committed writes. Any method raises
    `domain.model.Unavailable` when the store cannot answer now.
    """

    async def add_interview(self, interview: Interview, events: list[DomainEvent]) -> None:
        """Insert a new interview. Raises `Conflict` if the id exists."""
        ...

    async def get_interview(self, interview_id: str) -> Interview:
        """Raises `NotFound`."""
        ...

    async def interview_access(self, interview_id: str) -> tuple[str, tuple[str, ...]]:
        """(organisation, interviewers) of the interview, what the access policy needs. Raises `NotFound`."""
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

    async def list_segments(self, interview_id: str) -> list[StoredSegment]:
        """Stored finals in recording order, each with its highest stored revision applied
        (`StoredSegment.revised_by`)."""
        ...

    async def last_segment_seq(self, interview_id: str, participant_id: str) -> int | None: ...

    async def transcript_stamp(self, interview_id: str) -> TranscriptStamp:
        """`transcript_stamp` of the stored finals and revisions, read without their contents (a cheap query)."""
        ...

    async def add_guidance(self, event: GuidanceRecorded) -> None:
        """Store live guidance with its unpublished event, replacing the stored one of the same `guidance_key`
        (and, if that was not published yet, its event: only the latest state is published)."""
        ...

    async def add_candidate(self, candidate: Candidate) -> None:
        """Raises `Conflict` if the id or the email exists."""
        ...

    async def get_candidate(self, candidate_id: str) -> Candidate: ...

    async def save_candidate(self, candidate: Candidate, expected_version: int) -> None: ...

    async def find_candidates(self, query: CandidateQuery, limit: int) -> list[Candidate]:
        """Ordered by (createdAt, candidateId), strictly after `query.after` when it is set."""
        ...

    async def interview_ids_of(self, candidate_id: str) -> list[str]: ...


# ---------------------------------------------------------------------------------------------------------
# The transcript cache the API and the reports read (`adapters.shared_state`: in Redis with REDIS_URL, every node
# sharing it; else in this process).

TranscriptStamp = tuple[int, int]


def transcript_stamp(finals: Collection[tuple[str, int]], revisions: Iterable[tuple[str, int, int]]) -> TranscriptStamp:
    """What a transcript shows depends on, as two numbers: how many finals are stored, and the sum over them of each
    one's highest stored revision (0 if none). `finals` are (participant, seq), `revisions` (participant, seq,
    revision); revisions of finals not in `finals` do not count (a list read before their final was stored).

    Finals and revisions are only ever added, never rewritten, and a final's highest revision only grows, so two
    reads of an interview with equal stamps show the same transcript, whatever happened in between and whichever
    node wrote it: a cached transcript whose stamp equals the store's current one is exactly what the store would
    answer (erasure deletes them all, and an erased interview takes no more)."""
    highest: dict[tuple[str, int], int] = {}
    for participant_id, seq, revision in revisions:
        key = (participant_id, seq)
        if key in finals and revision > highest.get(key, 0):
            highest[key] = revision
    return len(finals), sum(highest.values())


def stamp_of(segments: list[StoredSegment]) -> TranscriptStamp:
    """`transcript_stamp` of a transcript as `InterviewStore.list_segments` read it (revisions applied)."""
    return len(segments), sum(s.segment.revision for s in segments)


class TranscriptCache(Protocol):
    """Transcripts as the API shows them (`StoredSegment.to_document()` of each stored final, revisions applied),
    kept with the stamp of the store state they were read from. Never raises: an unavailable cache answers None and
    keeps nothing. What it answers is the caller's to change."""

    async def transcript(self, interview_id: str, stamp: TranscriptStamp) -> list[dict[str, Any]] | None:
        """The kept transcript if it was read at `stamp`, else None."""
        ...

    async def keep_transcript(self, interview_id: str, stamp: TranscriptStamp,
                              segments: list[dict[str, Any]]) -> None: ...

    async def forget_transcript(self, interview_id: str) -> None:
        """The interview's data is erased: its kept transcript goes."""
        ...


# ---------------------------------------------------------------------------------------------------------
# Handlers


def _new_id() -> str:
    return uuid.uuid4().hex


def _check_id(kind: str, ident: str) -> None:
    # An id that cannot exist is simply not found (and never reaches a query or a subject).
    if not is_valid_id(ident):
        raise NotFound(kind, ident)


class InterviewService:
    def __init__(self, store: InterviewStore, clock: Callable[[], datetime] = utc_now,
                 new_id: Callable[[], str] = _new_id, on_commit: Callable[[], None] | None = None,
                 transcripts: TranscriptCache | None = None) -> None:
        self.store = store
        self.transcripts = transcripts
        self.clock = clock
        self.new_id = new_id
        # called after every write that committed domain events (the outbox relay's wake-up), so events
        # leave promptly instead of waiting for the relay's next poll
        self.on_commit = on_commit or (lambda: None)

    async def _change(self, interview_id: str, apply: Callable[[Interview, datetime], T],
                      expected_version: int | None = None) -> tuple[Interview, T]:
        _check_id("interview", interview_id)
        for attempt in range(_RETRIES):
            interview = await self.store.get_interview(interview_id)
            version = interview.metadata.version
            if expected_version is not None and version != expected_version:
                raise Conflict(f"interview {interview_id} is at version {version}, not {expected_version}",
                               code="version_conflict")
            result = apply(interview, self.clock())
            try:
                await self.store.save_interview(interview, version, interview.take_events())
                self.on_commit()
            except Conflict as exc:
                if exc.code != "version_conflict" or expected_version is not None or attempt == _RETRIES - 1:
                    raise
                log.debug("interview %s changed concurrently; retrying", interview_id)
                continue
            return interview, result
        raise AssertionError("unreachable")

    # -- interview commands -----------------------------------------------------------------------------------

    async def create_interview(self, cmd: CreateInterview, created_by: str = "api",
                               org_id: str = DEFAULT_ORG) -> dict[str, Any]:
        now = self.clock()
        interview_id = cmd.interview_id or self.new_id()
        questions = [Question(question_id=q.question_id or self.new_id(), text=q.text, category=q.category,
                              order=i + 1, expected_keywords=list(q.expected_keywords), budget_s=q.budget_s)
                     for i, q in enumerate(cmd.questions)]
        if len({q.question_id for q in questions}) != len(questions):
            raise ValidationError({"questions": "question ids must be unique"})
        interview = Interview.schedule(interview_id=interview_id, candidate_id=cmd.candidate_id, job_id=cmd.job_id,
                                       scheduled_at=cmd.scheduled_at, now=now, created_by=created_by, type=cmd.type,
                                       format=cmd.format, interviewers=cmd.interviewers, questions=questions,
                                       org_id=org_id, job=cmd.job)
        await self.store.add_interview(interview, interview.take_events())
        self.on_commit()
        log.info("interview %s scheduled for candidate %s", interview_id, cmd.candidate_id)
        return interview.to_document()

    async def start_interview(self, interview_id: str, expected_version: int | None = None) -> dict[str, Any]:
        interview, _ = await self._change(interview_id, lambda i, now: i.start(now), expected_version)
        log.info("interview %s started", interview_id)
        return interview.to_document()

    async def complete_interview(self, interview_id: str, expected_version: int | None = None) -> dict[str, Any]:
        interview, _ = await self._change(interview_id, lambda i, now: i.complete(now), expected_version)
        log.info("interview %s completed after %.1f s", interview_id, interview.duration_s or 0.0)
        return interview.to_document()

    async def cancel_interview(self, interview_id: str, reason: str = "",
                               expected_version: int | None = None) -> dict[str, Any]:
        interview, _ = await self._change(interview_id, lambda i, now: i.cancel(now, reason), expected_version)
        log.info("interview %s cancelled", interview_id)
        return interview.to_document()

    async def add_question(self, interview_id: str, cmd: AddQuestion,
                           expected_version: int | None = None) -> dict[str, Any]:
        qid = cmd.question_id or self.new_id()

        def apply(i: Interview, now: datetime) -> Question:
            return i.add_question(Question(question_id=qid, text=cmd.text, category=cmd.category,
                                           expected_keywords=list(cmd.expected_keywords), budget_s=cmd.budget_s),
                                  now)

        _, question = await self._change(interview_id, apply, expected_version)
        return question.to_document()

    async def ask_question(self, interview_id: str, question_id: str) -> dict[str, Any]:
        _, question = await self._change(interview_id, lambda i, now: i.ask_question(question_id, now))
        return question.to_document()

    async def record_analysis(self, interview_id: str, cmd: RecordAnalysis) -> dict[str, Any]:
        interview, _ = await self._change(interview_id, lambda i, now: i.record_analysis(cmd.analysis, now))
        return interview.analysis.to_document()

    async def note_analysis(self, interview_id: str, event: Callable[[datetime], DomainEvent]) -> None:
        """Publish an analysis job's event (built at the write's time) through the interview's outbox."""
        await self._change(interview_id, lambda i, now: i.note_analysis(event(now), now))

    async def erase_interview_data(self, interview_id: str, erasure_id: str) -> dict[str, Any]:
        """Cancel (if open) and clear the interview's personal data, recording `InterviewDataErased`."""
        interview, _ = await self._change(interview_id, lambda i, now: i.erase_personal_data(now, erasure_id))
        log.info("interview %s: candidate data erased (erasure %s)", interview_id, erasure_id)
        return interview.to_document()

    async def _accepting_segments(self, interview_id: str, segment: SegmentEvent) -> None:
        _check_id("interview", interview_id)
        if not segment.final:
            raise ValidationError({"final": "only final segments are stored"})
        if not is_valid_id(segment.speaker.participant_id):
            raise ValidationError({"speaker.participantId": "expected an id of 1-64 letters, digits, '_' or '-'"})
        if segment.seq < 0:
            raise ValidationError({"seq": "must be >= 0"})
        interview = await self.store.get_interview(interview_id)
        if not interview.accepts_segments():
            raise Conflict(f"interview {interview_id} is {interview.status}; it records no segments",
                           code="illegal_transition")

    async def record_segment(self, interview_id: str, segment: SegmentEvent) -> bool:
        """Store a final segment once. Returns False for a retry of one already stored (same participant, seq)."""
        if segment.revision:
            raise ValidationError({"revision": "a revised segment is stored with record_revision"})
        await self._accepting_segments(interview_id, segment)
        event = SegmentTranscribed(interview_id=interview_id, occurred_at=self.clock(), segment=segment)
        return self._committed(await self.store.add_segment(event), event)

    async def record_revision(self, interview_id: str, segment: SegmentEvent) -> bool:
        """Store a revision (`segment.revision` >= 1) of a stored final once; the transcript shows the highest one.
        Returns False for a retry of one already stored (same participant, seq, revision).

        The final it revises must be stored first, else `NotFound` (kind "segment"): a revision without its final
        would show in no transcript, and its SegmentRevised would name a segment no consumer has seen. The room
        writes both through one ordered queue, so that only happens when the final itself was refused or lost."""
        if segment.revision < 1:
            raise ValidationError({"revision": "must be >= 1"})
        await self._accepting_segments(interview_id, segment)
        event = SegmentRevised(interview_id=interview_id, occurred_at=self.clock(), segment=segment)
        return self._committed(await self.store.add_revision(event), event)

    async def record_guidance(self, interview_id: str, guidance: GuidanceEvent) -> None:
        """Store a live-guidance event with the interview (an alert, the guide coverage, a question/answer pair, the
        talk balance); its `GuidanceRecorded` is published after the write."""
        _check_id("interview", interview_id)
        await self.store.add_guidance(GuidanceRecorded(interview_id, self.clock(), guidance))
        self.on_commit()

    def _committed(self, stored: bool, event: SegmentTranscribed | SegmentRevised) -> bool:
        """After a segment write: wake the outbox relay if it stored something (False: a retry, already stored)."""
        if stored:
            self.on_commit()
        else:
            seg = event.segment
            log.debug("%s %s/%s/%d revision %d already stored", type(event).__name__, event.interview_id,
                      seg.speaker.participant_id, seg.seq, seg.revision)
        return stored

    # -- candidate commands -----------------------------------------------------------------------------------

    async def create_candidate(self, cmd: CreateCandidate, created_by: str = "api",
                               org_id: str = DEFAULT_ORG) -> dict[str, Any]:
        now = self.clock()
        candidate = Candidate(candidate_id=cmd.candidate_id or self.new_id(), name=cmd.name, email=cmd.email,
                              metadata=Metadata(now, now, created_by, 1), phone=cmd.phone, resume=cmd.resume,
                              org_id=org_id, **cmd.profile)
        await self.store.add_candidate(candidate)
        return candidate.to_document()

    async def update_candidate(self, candidate_id: str, cmd: UpdateCandidate) -> dict[str, Any]:
        _check_id("candidate", candidate_id)
        for attempt in range(_RETRIES):
            candidate = await self.store.get_candidate(candidate_id)
            version = candidate.metadata.version
            if cmd.expected_version is not None and version != cmd.expected_version:
                raise Conflict(f"candidate {candidate_id} is at version {version}, not {cmd.expected_version}",
                               code="version_conflict")
            for key, value in cmd.changes.items():
                if key == "resume":
                    f = Fields({"resume": value})
                    candidate.resume = _parse_resume(f, candidate.resume) or candidate.resume
                    f.done()
                else:
                    setattr(candidate, key, value)
            candidate.metadata.updated_at = self.clock()
            try:
                await self.store.save_candidate(candidate, version)
            except Conflict as exc:
                if exc.code != "version_conflict" or cmd.expected_version is not None or attempt == _RETRIES - 1:
                    raise
                continue
            return candidate.to_document(await self.store.interview_ids_of(candidate_id))
        raise AssertionError("unreachable")

    # -- queries ------------------------------------------------------------------------------------------------

    async def interview_access(self, interview_id: str) -> tuple[str, tuple[str, ...]]:
        """(organisation, interviewer user ids) of the interview, for `domain.access.authorize`; `NotFound`."""
        _check_id("interview", interview_id)
        return await self.store.interview_access(interview_id)

    async def get_interview(self, interview_id: str, *, with_segments: bool = True) -> dict[str, Any]:
        _check_id("interview", interview_id)
        interview = await self.store.get_interview(interview_id)
        doc = interview.to_document()
        if with_segments:
            doc["transcription"]["segments"] = await self._segments(interview)
        return doc

    async def last_segment_seq(self, interview_id: str, participant_id: str) -> int | None:
        """The highest stored `seq` of a participant's final segments (None if none): where a resumed stream
        continues."""
        _check_id("interview", interview_id)
        if not is_valid_id(participant_id):
            return None
        return await self.store.last_segment_seq(interview_id, participant_id)

    async def list_interviews(self, query: InterviewQuery) -> dict[str, Any]:
        items = await self.store.find_interviews(query, query.limit + 1)
        return _page([i.to_document() for i in items[: query.limit]],
                     Cursor(items[query.limit - 1].scheduled_at, items[query.limit - 1].interview_id)
                     if len(items) > query.limit else None)

    async def get_transcript(self, interview_id: str) -> dict[str, Any]:
        _check_id("interview", interview_id)
        interview = await self.store.get_interview(interview_id)
        return {"interviewId": interview_id, "status": interview.transcription_status,
                "segments": await self._segments(interview)}

    async def _segments(self, interview: Interview) -> list[dict[str, Any]]:
        """The stored transcript's segment documents, from the cache when they were read at the store's current
        stamp. The stamp is read from the store on every call, so a final or revision stored by any node, during a
        cache outage or not, is in the next answer; the cache saves reading, decrypting and converting every
        segment."""
        interview_id = interview.interview_id
        if self.transcripts is None or interview.data_erased_at is not None:  # erased: nothing is kept again
            return [s.to_document() for s in await self.store.list_segments(interview_id)]
        cached = await self.transcripts.transcript(interview_id, await self.store.transcript_stamp(interview_id))
        if cached is not None:
            return cached
        segments = await self.store.list_segments(interview_id)
        docs = [s.to_document() for s in segments]
        if not any(s.unreadable for s in segments):  # a field that did not open now may open on the next read
            await self.transcripts.keep_transcript(interview_id, stamp_of(segments), docs)
        return docs

    async def forget_transcript(self, interview_id: str) -> None:
        """After the interview's segments were deleted (erasure, retention): no cached copy outlives them."""
        if self.transcripts is not None:
            await self.transcripts.forget_transcript(interview_id)

    async def get_analysis(self, interview_id: str) -> dict[str, Any]:
        _check_id("interview", interview_id)
        interview = await self.store.get_interview(interview_id)
        return {"interviewId": interview_id, **interview.analysis.to_document()}

    async def get_candidate(self, candidate_id: str) -> dict[str, Any]:
        _check_id("candidate", candidate_id)
        candidate = await self.store.get_candidate(candidate_id)
        return candidate.to_document(await self.store.interview_ids_of(candidate_id))

    async def list_candidates(self, query: CandidateQuery) -> dict[str, Any]:
        items = await self.store.find_candidates(query, query.limit + 1)
        last = items[query.limit - 1] if len(items) > query.limit else None
        # Listed candidates omit `interviews` (one query per candidate); GET /api/candidates/{id} has it.
        docs = [c.to_document() for c in items[: query.limit]]
        for d in docs:
            del d["interviews"]
        return _page(docs,
                     Cursor(last.metadata.created_at, last.candidate_id) if last else None)


def _page(items: list[dict[str, Any]], next_cursor: Cursor | None) -> dict[str, Any]:
    return {"items": items, "nextCursor": next_cursor.encode() if next_cursor else None}

