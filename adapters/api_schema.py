"""The /api wire format, declared once: a pydantic model per request and response body, and the OpenAPI 3.1
document generated from them and the route table (`Operation`s, kept by `adapters.http_api`).

The models describe; the domain validates. `domain.commands`' `X.parse` stay the one authority on what a request
may hold (they produce the 422 `fields` the API promises, and the domain does not depend on pydantic); these
models say the same in JSON Schema: the same field names, required fields, types, enums (taken from
`domain.model`) and limits. Two habits of the domain the models follow: an optional request field may be null,
meaning "not given" (`Omittable` marks the few that may be left out but never null), and text limits count
characters after surrounding whitespace is stripped. Response models are closed (`additionalProperties: false`),
so tests/test_openapi.py fails on any field a response has and the document does not.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema, SkipJsonSchema, models_json_schema

from domain.access import API_KEY_SCOPES, USER_ROLES, Action
from domain.commands import APPLICATION_STATUSES, DEFAULT_PAGE, MAX_PAGE
from domain.events import ROLES
from domain.model import (
    COMPETENCY_MAX,
    EMAIL_RE,
    ID_RE,
    INTERVIEW_FORMATS,
    INTERVIEW_TYPES,
    PHONE_RE,
    QUESTION_BUDGET_S,
    RECOMMENDATIONS,
    STATUSES,
)

T = TypeVar("T")

# A timestamp the domain accepts (domain.model: years 1970-9999, with a time zone); the pattern says the years.
Timestamp = Annotated[datetime, Field(json_schema_extra={"pattern": r"^(19[7-9][0-9]|[2-9][0-9]{3})-"})]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


# May be left out, but is never null (the domain refuses null there).
Omittable = Annotated[T | SkipJsonSchema[None], Field(json_schema_extra=_no_default)]

Id = Annotated[str, Field(pattern=ID_RE.pattern)]
_SOME_TEXT = r"\S"  # not empty once stripped


def _text(max_len: int) -> Any:
    """Required text: not blank, at most `max_len` characters."""
    return Field(max_length=max_len, pattern=_SOME_TEXT)


def _maybe_text(max_len: int, pattern: re.Pattern[str] | None = None) -> Any:
    """Optional text: may be empty; when not, at most `max_len` characters (and matching `pattern`)."""
    return Field(max_length=max_len, pattern=f"^$|{pattern.pattern}" if pattern else None)


PositiveInt = Annotated[int, Field(ge=1)]
ListText = Annotated[str, Field(min_length=1, max_length=100, pattern=_SOME_TEXT)]  # a `Fields.str_list` item
TranscriptionStatus = Literal["pending", "in_progress", "completed"]


class _Closed(BaseModel):
    # The domain refuses unknown request fields; responses have none beyond what is declared.
    model_config = ConfigDict(extra="forbid")


# ---- requests ----------------------------------------------------------------------------------------------


class NewQuestion(_Closed):
    """A question to add; `questionId` is generated when not given."""

    questionId: Id | None = None
    text: Annotated[str, _text(2000)]
    category: Annotated[str, _maybe_text(100)] | None = ""
    expectedKeywords: Annotated[list[ListText], Field(max_length=50)] | None = None
    budgetS: Annotated[float, Field(ge=QUESTION_BUDGET_S[0], le=QUESTION_BUDGET_S[1])] | None = Field(
        None, description="seconds planned for this question and its answers; live guidance shows the time used "
        "against it, per question and per category")


class JobIn(_Closed):
    """What the interview recruits for: its skills and the term-like words of its description (and of the
    questions, and the candidate's CV skills) are the vocabulary speech-to-text is told for this interview."""

    title: Annotated[str, _maybe_text(200)] | None = ""
    skills: Annotated[list[ListText], Field(max_length=50)] | None = None
    description: Annotated[str, _maybe_text(5000)] | None = ""


class NewInterview(_Closed):
    """An interview to schedule."""

    interviewId: Id | None = Field(None, description="client-chosen id (makes retries idempotent)")
    candidateId: Id
    jobId: Id
    scheduledAt: Timestamp = Field(description="ISO 8601 with a time zone")
    type: Literal[INTERVIEW_TYPES] | None = "screening"  # type: ignore[valid-type]  # domain tuple
    format: Literal[INTERVIEW_FORMATS] | None = "video"  # type: ignore[valid-type]  # domain tuple
    interviewers: Annotated[list[Id], Field(max_length=20)] | None = Field(
        None, description="user ids of active users of the organisation with the role interviewer (else 422 naming "
        "each bad id)")
    questions: Annotated[list[NewQuestion], Field(max_length=200)] | None = None
    job: JobIn | None = None


class StatusChange(_Closed):
    """Optional body of start and complete."""

    expectedVersion: PositiveInt | None = Field(
        None, description="the metadata.version the change was decided on (or the If-Match header)")


class Cancellation(StatusChange):
    """Optional body of cancel."""

    reason: Annotated[str, _maybe_text(500)] | None = ""


class SentimentPointInput(_Closed):
    at_s: Annotated[float, Field(ge=0, le=7 * 24 * 3600)]
    score: Annotated[float, Field(ge=-1, le=1)]
    participantId: Id | None = None


class SentimentInput(_Closed):
    overall: Annotated[float, Field(ge=-1, le=1)] | None = None
    timeline: list[SentimentPointInput] | None = None


class KeywordInput(_Closed):
    term: Annotated[str, _text(100)]
    count: Annotated[float, Field(ge=0, le=1e9)] | None = Field(None, description="stored as an integer")
    relevance: Annotated[float, Field(ge=0, le=1)] | None = None


class OverallInput(_Closed):
    score: Annotated[float, Field(ge=0, le=100)] | None = None
    recommendation: Literal[RECOMMENDATIONS] | None = "undecided"  # type: ignore[valid-type]  # domain tuple
    summary: Annotated[str, _maybe_text(5000)] | None = ""


class AnalysisInput(_Closed):
    """The text-only analysis of a completed interview."""

    sentiment: SentimentInput | None = None
    keywords: list[KeywordInput] | None = None
    competency: dict[str, Annotated[float, Field(ge=0, le=COMPETENCY_MAX)]] | None = Field(
        None, description="name -> score")
    overall: OverallInput | None = None


_Email = Annotated[str, Field(max_length=254, pattern=EMAIL_RE.pattern)]


class ResumeInput(_Closed):
    url: Annotated[str, _maybe_text(2000, re.compile(r"^https?://"))] | None = ""
    parsed: Omittable[bool] = None
    skills: Annotated[list[ListText], Field(max_length=100)] | None = None
    experience: Annotated[float, Field(ge=0, le=80)] | None = Field(None, description="years")
    text: Annotated[str, _maybe_text(100_000)] | None = Field("", description="the CV's text")
    fileRef: Annotated[str, _maybe_text(500)] | None = Field("", description="where the CV file is kept")


class PersonalInfoInput(_Closed):
    name: Annotated[str, _text(200)]
    email: _Email
    phone: Annotated[str, _maybe_text(32, PHONE_RE)] | None = ""
    location: Annotated[str, _maybe_text(200)] | None = ""


class PersonalInfoUpdate(_Closed):
    name: Omittable[Annotated[str, _text(200)]] = None
    email: Omittable[_Email] = None
    phone: Annotated[str, _maybe_text(32, PHONE_RE)] | None = ""
    location: Annotated[str, _maybe_text(200)] | None = ""


class ExperienceInput(_Closed):
    company: Annotated[str, _text(200)]
    role: Annotated[str, _maybe_text(200)] | None = ""
    from_: Annotated[str, _maybe_text(20)] | None = Field("", alias="from")
    to: Annotated[str, _maybe_text(20)] | None = ""


class EducationInput(_Closed):
    institution: Annotated[str, _text(200)]
    degree: Annotated[str, _maybe_text(200)] | None = ""
    year: Annotated[float, Field(ge=1900, le=2200)] | None = None


class ApplicationInput(_Closed):
    jobId: Id
    status: Literal[APPLICATION_STATUSES] | None = "applied"  # type: ignore[valid-type]  # domain tuple
    appliedAt: datetime | None = None


class _Profile(_Closed):
    """The candidate's fields besides name, email and phone (all personal data: stored encrypted)."""

    location: Annotated[str, _maybe_text(200)] | None = ""
    notes: Annotated[str, _maybe_text(20_000)] | None = ""
    skills: Annotated[list[ListText], Field(max_length=100)] | None = None
    experience: Annotated[list[ExperienceInput], Field(max_length=50)] | None = None
    education: Annotated[list[EducationInput], Field(max_length=50)] | None = None
    applications: Annotated[list[ApplicationInput], Field(max_length=200)] | None = None
    resume: ResumeInput | None = None


class NewCandidate(_Profile):
    """A candidate to create; `candidateId` is generated when not given. Emails are unique (stored lowercase).
    Name, email and phone come flat or inside `personalInfo` (with `location`), not both."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["name", "email"]},
                                                           {"required": ["personalInfo"]}]})

    candidateId: Id | None = None
    name: Omittable[Annotated[str, _text(200)]] = None
    email: Omittable[_Email] = None
    phone: Annotated[str, _maybe_text(32, PHONE_RE)] | None = ""
    personalInfo: Omittable[PersonalInfoInput] = None


class CandidateUpdate(_Profile):
    """The fields to change (at least one); `version` for optimistic concurrency. A resume is merged into the
    stored one."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": [name]} for name in
                                                           ("name", "email", "phone", "resume", "personalInfo",
                                                            "location", "notes", "skills", "experience",
                                                            "education", "applications")]})

    name: Omittable[Annotated[str, _text(200)]] = None
    email: Omittable[_Email] = None
    phone: Annotated[str, _maybe_text(32, PHONE_RE)] | None = ""
    personalInfo: Omittable[PersonalInfoUpdate] = None
    version: Omittable[PositiveInt] = None


class TokenRequest(_Closed):
    """Who joins: `name` (default: the role) is shown to the others."""

    role: Literal[ROLES]  # type: ignore[valid-type]  # domain tuple
    name: Omittable[Annotated[str, Field(max_length=100, pattern=_SOME_TEXT)]] = None


class Login(_Closed):
    email: Annotated[str, Field(max_length=254)]
    password: Annotated[str, Field(max_length=1024)]


class Setup(_Closed):
    """The first admin, by the one-time setup link."""

    token: Annotated[str, Field(max_length=200, description="the `token` of the setup link")]
    email: _Email
    name: Annotated[str, _text(200)] | None = None
    password: Annotated[str, Field(min_length=10, max_length=1024)]


class NewUser(_Closed):
    """A user of the caller's organisation."""

    email: _Email
    role: Literal[USER_ROLES]  # type: ignore[valid-type]  # domain tuple
    name: Annotated[str, _text(200)]
    password: Annotated[str, Field(min_length=10, max_length=1024)]


class NewApiKey(_Closed):
    name: Annotated[str, _text(100)]
    scopes: Annotated[list[Literal[API_KEY_SCOPES]], Field(min_length=1)]  # type: ignore[valid-type]


class AuditParams(_Closed):
    actor: str | None = Field(None, description="actor id (user, API key or participant)")
    resource: str | None = Field(None, description="resource id")
    from_: datetime | None = Field(None, alias="from", description="at >= from")
    to: datetime | None = Field(None, description="at < to")
    cursor: str | None = Field(None, description="nextCursor of the previous page")
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = Field(DEFAULT_PAGE, description="page size")


class InterviewListParams(_Closed):
    status: Literal[STATUSES] | None = Field(None, description="filter by status")  # type: ignore[valid-type]  # domain tuple
    candidateId: Id | None = Field(None, description="filter by candidate")
    jobId: Id | None = Field(None, description="filter by job")
    from_: Timestamp | None = Field(None, alias="from", description="scheduledAt >= from")
    to: Timestamp | None = Field(None, description="scheduledAt < to (after from)")
    cursor: str | None = Field(None, description="nextCursor of the previous page")
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = Field(DEFAULT_PAGE, description="page size")


class CandidateListParams(_Closed):
    email: str | None = Field(None, description="exact email, case-insensitive (compared by its blind index)")
    cursor: str | None = Field(None, description="nextCursor of the previous page")
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = Field(DEFAULT_PAGE, description="page size")


# ---- responses ---------------------------------------------------------------------------------------------


class AccessToken(_Closed):
    accessToken: str = Field(description="JWT; send as `Authorization: Bearer`; keep it in memory only")
    tokenType: Literal["Bearer"]
    expiresIn: int = Field(description="seconds")


class LoggedOut(_Closed):
    loggedOut: bool


class Me(_Closed):
    userId: str
    email: str
    name: str
    role: Literal[USER_ROLES]  # type: ignore[valid-type]  # domain tuple
    orgId: str


class UserCreated(_Closed):
    userId: str


class UserItem(_Closed):
    userId: str
    email: str
    name: str
    role: Literal[USER_ROLES]  # type: ignore[valid-type]  # domain tuple
    createdAt: datetime
    disabled: bool


class UserPage(_Closed):
    items: list[UserItem]


class UserDisabled(_Closed):
    userId: str
    disabled: bool


class ApiKeyCreated(_Closed):
    keyId: str
    key: str = Field(description="shown once; stored only as a hash")
    name: str
    scopes: list[str]


class ApiKeyItem(_Closed):
    keyId: str
    name: str
    scopes: list[str]
    createdAt: datetime
    lastUsedAt: datetime | None
    revoked: bool


class ApiKeyPage(_Closed):
    items: list[ApiKeyItem]


class ApiKeyRevoked(_Closed):
    keyId: str
    revoked: bool


class TokenRevoked(_Closed):
    interviewId: str
    tokenId: str
    revoked: bool


class AuditPage(_Closed):
    items: list[dict[str, Any]]
    nextCursor: str | None


class Metadata(_Closed):
    createdAt: datetime
    updatedAt: datetime
    createdBy: str
    version: PositiveInt


class Question(_Closed):
    questionId: Id
    text: str
    category: str
    order: int
    expectedKeywords: list[str]
    askedAt: datetime | None
    budgetS: float | None = Field(None, description="present when the question has a time budget")


class Job(_Closed):
    title: str
    skills: list[str]
    description: str


class Speaker(_Closed):
    role: Literal[ROLES]  # type: ignore[valid-type]  # domain tuple
    name: str | None
    participantId: Id


_Unreadable = Omittable[list[str]]
_UNREADABLE = Field(None, description="fields that could not be decrypted (they read as null or empty)")


class Word(_Closed):
    word: str
    start_s: float
    end_s: float
    probability: float


class Segment(_Closed):
    """A final segment as stored, with its latest revision applied (then `revision` and `originalText`)."""

    interviewId: Id
    participantId: Id
    speaker: Speaker
    seq: Annotated[int, Field(ge=0)]
    start_s: float = Field(description="stream time, seconds")
    end_s: float
    text: str | None
    words: list[Word]
    confidence: float
    no_speech_prob: float
    language: str
    engine: str
    model: str
    hallucination: bool
    crosstalk: bool = Field(description="another participant's voice heard by this microphone: not analysed")
    recordedAt: datetime
    emitted_at_s: Omittable[float] = None
    revision: Omittable[PositiveInt] = None
    originalText: Omittable[str | None] = Field(None, description="the live final's text a revision replaced")
    unreadable: _Unreadable = _UNREADABLE


class Transcription(_Closed):
    status: TranscriptionStatus
    segments: list[Segment]


class SentimentPoint(_Closed):
    at_s: float
    score: float
    participantId: Id | None


class Sentiment(_Closed):
    overall: float | None
    timeline: list[SentimentPoint]


class Keyword(_Closed):
    term: str
    count: Annotated[int, Field(ge=0)]
    relevance: float | None


class Overall(_Closed):
    score: float | None
    recommendation: Literal[RECOMMENDATIONS]  # type: ignore[valid-type]  # domain tuple
    summary: str | None


class Analysis(_Closed):
    status: Literal["pending", "completed"]
    sentiment: Sentiment
    keywords: list[Keyword]
    competency: dict[str, float]
    overall: Overall | None
    completedAt: datetime | None


class AnalysisRunRequest(_Closed):
    """Optional body of an on-demand analysis run."""

    skills: Annotated[list[ListText], Field(max_length=100)] | None = Field(
        None, description="the job's skills: terms of the rubric's technical competency")


class AnalysisParams(_Closed):
    version: Literal["confirmed", "machine"] | None = Field(
        None, description="confirmed (default): the reviewer's confirmed scorecard once there is one; machine: the "
                          "providers' aggregate")


class EvidenceRef(_Closed):
    participantId: Id
    seq: Annotated[int, Field(ge=0)]
    quote: str
    turn: int = Field(description="index of the turn in `turns`")


class ScoredCompetency(_Closed):
    name: str
    score: float | None = Field(description="0..5; null without verified evidence")
    rationale: str
    evidence: list[EvidenceRef]


class ProviderScorecard(_Closed):
    competencies: list[ScoredCompetency]
    strengths: list[str]
    improvements: list[str]
    recommendation: Literal[RECOMMENDATIONS]  # type: ignore[valid-type]  # domain tuple
    overall: float | None


class Tokens(_Closed):
    input: int
    output: int


class ProviderRun(_Closed):
    provider: str
    model: str
    kind: Literal["llm", "heuristic", "manual"]
    status: Literal["completed", "failed"]
    promptVersion: str
    inputHash: str = Field(description="sha256 of the pseudonymised transcript, rubric and prompt version")
    latencySeconds: float
    tokens: Tokens
    attempts: int
    error: str
    evidenceRejected: int = Field(description="citations dropped: the quote is not in the segment cited")
    scorecard: ProviderScorecard | None


class AggregateCompetency(_Closed):
    name: str
    score: float | None = Field(description="median of the providers' scores")
    spread: float
    flagged: bool = Field(description="providers disagree by 2 points or more")
    scores: dict[str, float]
    rationales: dict[str, str]
    evidence: list[EvidenceRef]


class AggregateScorecard(_Closed):
    competencies: list[AggregateCompetency]
    strengths: list[str]
    improvements: list[str]
    recommendation: Literal[RECOMMENDATIONS]  # type: ignore[valid-type]  # domain tuple
    overall: float | None
    basis: list[str] = Field(description="the providers whose scorecards it merges")
    flagged: list[str]


Jurisdiction = Literal["eu", "us-nyc", "none"]


class Policy(_Closed):
    """How the organisation's jurisdiction lets this analysis be shown."""

    jurisdiction: Jurisdiction
    advisory: bool = Field(description="always true: a person decides")
    final: bool = Field(description="eu: false until a reviewer confirms; false once rejected")
    label: str = Field(description='what every view says, starting with "advisory"')
    scoresHidden: bool = Field(description="eu: a rejected analysis shows no scores")
    tone: bool = Field(description="whether the tone of words (text sentiment) is shown (toneEnabled)")


class InterviewAnalysis(_Closed):
    """The interview's analysis: the job's status, the aggregate scorecard, each provider's run, the review, and
    the fields of an analysis recorded with PUT."""

    interviewId: Id
    status: Literal["pending", "running", "completed", "partial", "failed"]
    aggregate: AggregateScorecard | None
    providers: list[ProviderRun]
    review: dict[str, Any]
    version: Literal["confirmed", "machine"] = Field(
        description="which scorecard `aggregate` is: the reviewer's confirmed one, or the providers'")
    structure: dict[str, Any] | None = Field(description="question/answer pairs, talk time, delays, guide")
    turns: list[dict[str, Any]] = Field(description="the pseudonymised transcript the providers read")
    rubric: list[dict[str, Any]]
    inputHash: str | None
    requestedAt: datetime | None
    finishedAt: datetime | None
    error: str
    policy: Policy
    sentiment: Sentiment
    keywords: list[Keyword]
    competency: dict[str, float]
    overall: Overall | None
    completedAt: datetime | None


class ReviewEvidence(_Closed):
    participantId: Id
    seq: Annotated[int, Field(ge=0)]
    quote: Annotated[str, Field(min_length=1, max_length=600)] = Field(description="words of that segment")
    turn: int | None = Field(None, description="ignored: found from participantId and seq")


class ReviewCompetency(_Closed):
    """A competency as the reviewer scores it (the aggregate's `spread`, `flagged`, `scores` and `rationales`
    may be sent back as they came; they are not kept)."""

    name: Annotated[str, Field(min_length=1, max_length=100)]
    score: Annotated[float, Field(ge=0, le=COMPETENCY_MAX)] | None = Field(description="0..5, or null")
    rationale: Annotated[str, Field(max_length=2000)] | None = ""
    evidence: Annotated[list[ReviewEvidence], Field(max_length=20)] | None = None
    spread: float | None = None
    flagged: bool | None = None
    scores: dict[str, float] | None = None
    rationales: dict[str, str] | None = None


_ReviewText = Annotated[str, Field(max_length=500)]


class ReviewScorecard(_Closed):
    """The same shape as the aggregate; scores 0..5, overall 0..100."""

    competencies: Annotated[list[ReviewCompetency], Field(max_length=50)]
    strengths: Annotated[list[_ReviewText], Field(max_length=10)] | None = None
    improvements: Annotated[list[_ReviewText], Field(max_length=10)] | None = None
    recommendation: Literal[RECOMMENDATIONS] | None = "undecided"  # type: ignore[valid-type]  # domain tuple
    overall: Annotated[float, Field(ge=0, le=100)] | None = None
    basis: list[str] | None = None
    flagged: list[str] | None = None


class ReviewRequest(_Closed):
    """A reviewer's change: `edit` (needs `scorecard`: the draft), `confirm` (the draft, `scorecard` if given,
    else the machine aggregate, becomes the confirmed version), `reject`."""

    action: Literal["edit", "confirm", "reject"]
    scorecard: ReviewScorecard | None = None
    note: Annotated[str, Field(max_length=5000)] | None = Field("", description="why (kept in the history)")


class OrganisationUpdate(_Closed):
    """The settings to change (at least one); null resets one to its default."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": [name]} for name in (
        "jurisdiction", "biasAuditDate", "alternativeProcessContact", "toneEnabled")]})

    jurisdiction: Omittable[Jurisdiction] = Field(None, description="eu, us-nyc or none")
    biasAuditDate: Annotated[str, Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")] | None = \
        Field(None, description="YYYY-MM-DD of the latest independent bias audit (us-nyc)")
    alternativeProcessContact: Annotated[str, Field(max_length=500)] | None = Field(
        None, description="whom candidates ask for an alternative selection process or accommodation")
    toneEnabled: bool | None = Field(None, description="show the tone of words; null: the jurisdiction's "
                                                       "default (off in eu)")


class CandidateNotice(_Closed):
    law: str
    automatedTool: bool
    text: str
    biasAuditDate: str | None
    alternativeProcessContact: str | None


class Organisation(_Closed):
    orgId: str
    name: str
    jurisdiction: Jurisdiction
    biasAuditDate: str | None
    alternativeProcessContact: str | None
    toneEnabled: bool | None
    tone: bool = Field(description="whether the tone of words is shown (toneEnabled, or the jurisdiction's default)")
    candidateNotice: CandidateNotice | None = Field(description="what candidates are shown (us-nyc)")


class JoinNotice(_Closed):
    """What a participant's page shows before joining: the privacy notice's version and the organisation's
    policy (the Local Law 144 notice for candidates under us-nyc)."""

    noticeVersion: str
    jurisdiction: Jurisdiction
    advisory: bool
    tone: bool
    candidateNotice: CandidateNotice | None


class ExportParams(_Closed):
    from_: Timestamp | None = Field(None, alias="from", description="scheduledAt >= from")
    to: Timestamp | None = Field(None, description="scheduledAt < to (after from)")
    format: Literal["json", "csv"] | None = Field(None, description="json (default) or csv")


class ExportRow(_Closed):
    interviewId: Id
    candidateId: Id
    jobId: Id
    scheduledAt: datetime
    completedAt: datetime | None
    analysisStatus: Literal["pending", "running", "completed", "partial", "failed"]
    reviewStatus: Literal["unreviewed", "edited", "confirmed", "rejected"]
    version: Literal["confirmed", "machine"]
    final: bool
    advisory: bool
    overall: float | None
    recommendation: Literal[RECOMMENDATIONS] | None  # type: ignore[valid-type]  # domain tuple
    competencies: dict[str, float | None]
    basis: list[str]


class AnalysisExport(_Closed):
    """Per interview of the organisation (completed, scheduled in [from, to)) the scores of its default view."""

    jurisdiction: Jurisdiction
    items: list[ExportRow]
class StructureParams(_Closed):
    tone: bool | None = Field(None, description="compute the tone of words per speaker (text only); default: "
                                                "false with JURISDICTION=eu, else true")


class SegmentRef(_Closed):
    participantId: Id
    seq: Annotated[int, Field(ge=0)]


class StructureExchange(_Closed):
    question: list[SegmentRef] = Field(description="the interviewer's consecutive segments")
    answer: list[SegmentRef] = Field(description="the candidate's segments that follow")
    questionText: str
    answerText: str
    answerWords: int
    answerSeconds: float
    responseDelaySeconds: float | None


class StructurePair(_Closed):
    question: StructureExchange
    followUps: list[StructureExchange]
    guideQuestionId: str | None
    guideMatch: float
    answerWords: int


class GuideCoverage(_Closed):
    questionId: str
    text: str
    asked: bool
    match: float
    at: SegmentRef | None


class TonePoint(_Closed):
    seq: Annotated[int, Field(ge=0)]
    at_s: float = Field(description="seconds since the interview's first segment")
    score: float = Field(description="VADER compound score of the sentence's text, -1..1")
    rolling: float


class KeywordRef(_Closed):
    term: str
    count: int
    relevance: float
    seqs: list[int] = Field(description="the speaker's segments it came from")


class StructureSpeaker(_Closed):
    participantId: Id
    name: str | None
    role: Literal[ROLES]  # type: ignore[valid-type]  # domain tuple
    label: str
    talkSeconds: float
    talkShare: float
    turns: int
    words: int
    tone: list[TonePoint] | None = Field(description="null unless `tone` was asked for (or is the default)")
    keywords: list[KeywordRef]


class InterviewStructure(_Closed):
    """What the stored transcript's text shows (never voice): question/answer pairs, talk time, the guide's
    coverage, and per speaker the tone of their words and their keywords."""

    interviewId: Id
    basis: Literal["text"]
    tone: bool
    speakers: list[StructureSpeaker]
    pairs: list[StructurePair]
    guide: list[GuideCoverage]
    candidateShare: float
    responseDelayMedianSeconds: float | None
    answerWordsMedian: float | None


class Interview(_Closed):
    interviewId: Id
    orgId: str
    candidateId: Id
    jobId: Id
    status: Literal[STATUSES]  # type: ignore[valid-type]  # domain tuple
    scheduledAt: datetime
    startedAt: datetime | None
    completedAt: datetime | None
    cancelledAt: datetime | None
    cancelReason: str | None
    duration: float | None = Field(description="seconds from start to completion")
    interviewers: list[Id]
    type: Literal[INTERVIEW_TYPES]  # type: ignore[valid-type]  # domain tuple
    format: Literal[INTERVIEW_FORMATS]  # type: ignore[valid-type]  # domain tuple
    questions: list[Question]
    job: Job | None = Field(description="what the interview recruits for (the vocabulary of its transcription)")
    transcription: Transcription
    analysis: Analysis
    metadata: Metadata
    dataErasedAt: datetime | None = Field(description="when the candidate's data in it was erased")
    unreadable: _Unreadable = _UNREADABLE


class InterviewPage(_Closed):
    items: list[Interview]
    nextCursor: str | None


class TranscriptMarker(_Closed):
    """A participant gave or withdrew consent: from a withdrawal until consent is given again none of their audio
    was processed, so their transcript has a gap there."""

    type: Literal["consent.given", "consent.withdrawn"]
    participantId: Id
    role: Literal[ROLES] | None  # type: ignore[valid-type]  # domain tuple
    at: datetime
    afterSeq: int | None = Field(description="the participant's last final segment before it (null: none)")
    noticeVersion: str


class Transcript(_Closed):
    interviewId: Id
    status: TranscriptionStatus
    segments: list[Segment]
    markers: list[TranscriptMarker] = Field(description="consent changes, in time order")


class Resume(_Closed):
    url: str | None
    parsed: bool
    skills: list[str]
    experience: float | None = Field(description="years")
    text: str | None
    fileRef: str | None


class PersonalInfo(_Closed):
    name: str | None
    email: str | None
    phone: str | None
    location: str | None


class Experience(_Closed):
    company: str
    role: str
    from_: str = Field(alias="from")
    to: str


class Education(_Closed):
    institution: str
    degree: str
    year: int | None


class Application(_Closed):
    jobId: Id
    status: Literal[APPLICATION_STATUSES]  # type: ignore[valid-type]  # domain tuple
    appliedAt: datetime | None


class ListedCandidate(_Closed):
    """A candidate as listed: without `interviews` (GET /api/candidates/{id} has them)."""

    candidateId: Id
    orgId: str
    name: str | None
    email: str | None
    phone: str | None
    personalInfo: PersonalInfo
    resume: Resume
    skills: list[str]
    experience: list[Experience]
    education: list[Education]
    applications: list[Application]
    notes: str | None
    metadata: Metadata
    unreadable: _Unreadable = _UNREADABLE


class Candidate(ListedCandidate):
    interviews: list[Id] = Field(description="ids of the candidate's interviews")


class CandidatePage(_Closed):
    items: list[ListedCandidate]
    nextCursor: str | None


class JoinToken(_Closed):
    token: str
    joinUrl: str = Field(description="the page to open, with the token")
    expiresAt: datetime
    participantId: Id
    role: Literal[ROLES]  # type: ignore[valid-type]  # domain tuple
    name: str


class ErrorDetail(_Closed):
    code: str
    message: str
    fields: Omittable[dict[str, str]] = Field(None, description="422: what is wrong with each bad field")
    receiptId: Omittable[str] = Field(None, description="404/410 for an erased candidate: its erasure receipt")


# ---- privacy -----------------------------------------------------------------------------------------------


class ErasureParams(_Closed):
    reason: Annotated[str, Field(min_length=1, max_length=500)] = Field(description="why (kept in the receipt)")


class Receipt(_Closed):
    """What was done about a candidate's data, by whom and when; `kid` names the signing key."""

    id: str
    what: Literal["erasure", "export"]
    candidateId: Id
    counts: dict[str, int]
    at: datetime
    by: str
    requestId: str
    kid: str = Field(description="the key in /.well-known/interview-worker-keys that signed it")
    erasureId: Omittable[str] = None
    reason: Omittable[str] = None
    interviewIds: Omittable[list[Id]] = None
    archiveSha256: Omittable[str] = Field(None, description="export: SHA-256 of the archive, hex")


class SignedReceipt(_Closed):
    receipt: Receipt
    signature: str = Field(description="Ed25519 over the receipt as JSON with sorted keys and no spaces, base64url")


class ConsentRequest(_Closed):
    """Consent to the processing of the caller's audio under the notice shown (`noticeVersion`)."""

    noticeVersion: Annotated[str, Field(min_length=1, max_length=40)]
    accepted: Literal[True]


class Error(_Closed):
    error: ErrorDetail


# ---- the document ------------------------------------------------------------------------------------------

# Every /api route may answer these; every route with a body or a query string the ones below.
_ALWAYS = (401, 429, 503)
_FOR_BODY = (413, 415, 422)
_FOR_QUERY = (422,)
_ERROR_TEXT = {401: "Missing or invalid bearer token", 403: "The caller's role or scopes do not allow this",
               429: "Over a rate limit; retry after Retry-After seconds",
               404: "Unknown id", 410: "Gone: the candidate's data was erased (`receiptId`), or the setup link was "
                                          "used or expired or an admin exists",
               409: "Illegal status move, stale version or duplicate", 413: "Body too large",
               415: "Body is not JSON", 422: "Invalid input; `fields` names each bad field",
               503: "Storage unavailable; retry after Retry-After seconds"}


@dataclass(frozen=True, slots=True)
class Operation:
    """One route as the document declares it. `name` is its handler and its operationId."""

    name: str
    method: str
    path: str
    summary: str
    response: type[BaseModel] | None  # None: no JSON body (204, or `media_type`)
    status: int = 200
    media_type: str = "application/json"
    also: tuple[str, ...] = ()  # other media types the response may have (as text), e.g. text/csv on request
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()  # besides _ALWAYS, _FOR_BODY and _FOR_QUERY
    if_match: bool = False  # takes `If-Match: "<metadata.version>"`
    tag: str = "interviews"
    action: Action = Action.PUBLIC  # what domain.access.authorize is asked
    resource: str = "org"  # what the action is on: interview | candidate | org (the caller's organisation)
    auth: str = "admin"  # the security scheme: "admin" (bearer: access token or API key) or "joinToken"

    @property
    def error_statuses(self) -> list[int]:
        return sorted({*_ALWAYS, *self.errors, *(_FOR_BODY if self.body else ()),
                       *(_FOR_QUERY if self.query else ())})


class _Schemas(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # a property's title would only repeat its name


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: its property's, where leaving the parameter out is the null."""
    variants = [s for s in schema.get("anyOf", ()) if s != {"type": "null"}]
    out = {k: v for k, v in schema.items() if k not in ("anyOf", "description") and v is not None}
    return {**variants[0], **out} if len(variants) == 1 else out


@functools.cache
def openapi_document(operations: tuple[Operation, ...]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations`; every body schema is a component generated from its model.
    Built once per table and shared: callers must not change it."""
    models: set[type[BaseModel]] = {Error}
    models.update(m for op in operations for m in (op.response, op.body, op.query) if m is not None)
    refs, defs = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                    ref_template="#/components/schemas/{model}", schema_generator=_Schemas)
    schemas = defs["$defs"]

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return refs[(model, "validation")]

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string",
                                                                                "pattern": ID_RE.pattern}}
                      for name in re.findall(r"{(\w+)}", op.path)]
        if op.query is not None:
            query = schemas.pop(op.query.__name__)  # parameters, not a body: no component of their own
            for name, schema in query["properties"].items():
                param = {"name": name, "in": "query", "required": False}
                if "description" in schema:
                    param["description"] = schema["description"]
                parameters.append({**param, "schema": _without_null(schema)})
        if op.if_match:
            parameters.append({"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
                               "description": 'the metadata.version the change was decided on, as "<version>"'})
        operation: dict[str, Any] = {"operationId": op.name, "summary": op.summary, "tags": [op.tag]}
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            operation["requestBody"] = {"required": op.body_required, "content": _json(ref(op.body))}
        if op.auth != "admin":
            operation["security"] = [{op.auth: []}]
        described: dict[str, Any] = {"description": {201: "Created", 204: "No Content"}.get(op.status, "OK")}
        if op.response is not None:
            described["content"] = _json(ref(op.response))
            for media in op.also:
                described["content"][media] = {"schema": {"type": "string"}}
        elif op.media_type != "application/json":
            described["content"] = {op.media_type: {"schema": {"type": "string", "contentMediaType": op.media_type}}}
        operation["responses"] = {
            str(op.status): described,
            **{str(s): {"description": _ERROR_TEXT[s], "content": _json(ref(Error))} for s in op.error_statuses}}
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "interview-worker API", "version": "0.1.0",
                 "description": "Interviews, candidates, live transcripts and text-only analysis. /api routes "
                                "but login and refresh need `Authorization: Bearer <access token or API key>`."},
        "components": {"securitySchemes": {"admin": {"type": "http", "scheme": "bearer"},
                                           "joinToken": {"type": "http", "scheme": "bearer",
                                                         "description": "a participant's join token"}},
                       "schemas": schemas},
        "security": [{"admin": []}],
        "paths": paths,
    }
