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

from domain.commands import DEFAULT_PAGE, MAX_PAGE
from domain.events import ROLES
from domain.model import (
    COMPETENCY_MAX,
    EMAIL_RE,
    ID_RE,
    INTERVIEW_FORMATS,
    INTERVIEW_TYPES,
    PHONE_RE,
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


class NewInterview(_Closed):
    """An interview to schedule."""

    interviewId: Id | None = Field(None, description="client-chosen id (makes retries idempotent)")
    candidateId: Id
    jobId: Id
    scheduledAt: Timestamp = Field(description="ISO 8601 with a time zone")
    type: Literal[INTERVIEW_TYPES] | None = "screening"  # type: ignore[valid-type]  # domain tuple
    format: Literal[INTERVIEW_FORMATS] | None = "video"  # type: ignore[valid-type]  # domain tuple
    interviewers: Annotated[list[Id], Field(max_length=20)] | None = None
    questions: Annotated[list[NewQuestion], Field(max_length=200)] | None = None


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


class NewCandidate(_Closed):
    """A candidate to create; `candidateId` is generated when not given. Emails are unique (stored lowercase)."""

    candidateId: Id | None = None
    name: Annotated[str, _text(200)]
    email: _Email
    phone: Annotated[str, _maybe_text(32, PHONE_RE)] | None = ""
    resume: ResumeInput | None = None


class CandidateUpdate(_Closed):
    """The fields to change (at least one); `version` for optimistic concurrency. A resume is merged into the
    stored one."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": [name]} for name in
                                                           ("name", "email", "phone", "resume")]})

    name: Omittable[Annotated[str, _text(200)]] = None
    email: Omittable[_Email] = None
    phone: Annotated[str, _maybe_text(32, PHONE_RE)] | None = ""
    resume: ResumeInput | None = None
    version: Omittable[PositiveInt] = None


class TokenRequest(_Closed):
    """Who joins: `name` (default: the role) is shown to the others."""

    role: Literal[ROLES]  # type: ignore[valid-type]  # domain tuple
    name: Omittable[Annotated[str, Field(max_length=100, pattern=_SOME_TEXT)]] = None


class InterviewListParams(_Closed):
    status: Literal[STATUSES] | None = Field(None, description="filter by status")  # type: ignore[valid-type]  # domain tuple
    candidateId: Id | None = Field(None, description="filter by candidate")
    jobId: Id | None = Field(None, description="filter by job")
    from_: Timestamp | None = Field(None, alias="from", description="scheduledAt >= from")
    to: Timestamp | None = Field(None, description="scheduledAt < to (after from)")
    cursor: str | None = Field(None, description="nextCursor of the previous page")
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = Field(DEFAULT_PAGE, description="page size")


class CandidateListParams(_Closed):
    cursor: str | None = Field(None, description="nextCursor of the previous page")
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = Field(DEFAULT_PAGE, description="page size")


# ---- responses ---------------------------------------------------------------------------------------------


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


class Speaker(_Closed):
    role: Literal[ROLES]  # type: ignore[valid-type]  # domain tuple
    name: str
    participantId: Id


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
    text: str
    words: list[Word]
    confidence: float
    no_speech_prob: float
    language: str
    engine: str
    model: str
    hallucination: bool
    recordedAt: datetime
    emitted_at_s: Omittable[float] = None
    revision: Omittable[PositiveInt] = None
    originalText: Omittable[str] = Field(None, description="the live final's text a revision replaced")


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
    summary: str


class Analysis(_Closed):
    status: Literal["pending", "completed"]
    sentiment: Sentiment
    keywords: list[Keyword]
    competency: dict[str, float]
    overall: Overall | None
    completedAt: datetime | None


class InterviewAnalysis(Analysis):
    interviewId: Id


class Interview(_Closed):
    interviewId: Id
    candidateId: Id
    jobId: Id
    status: Literal[STATUSES]  # type: ignore[valid-type]  # domain tuple
    scheduledAt: datetime
    startedAt: datetime | None
    completedAt: datetime | None
    cancelledAt: datetime | None
    cancelReason: str
    duration: float | None = Field(description="seconds from start to completion")
    interviewers: list[Id]
    type: Literal[INTERVIEW_TYPES]  # type: ignore[valid-type]  # domain tuple
    format: Literal[INTERVIEW_FORMATS]  # type: ignore[valid-type]  # domain tuple
    questions: list[Question]
    transcription: Transcription
    analysis: Analysis
    metadata: Metadata


class InterviewPage(_Closed):
    items: list[Interview]
    nextCursor: str | None


class Transcript(_Closed):
    interviewId: Id
    status: TranscriptionStatus
    segments: list[Segment]


class Resume(_Closed):
    url: str
    parsed: bool
    skills: list[str]
    experience: float | None = Field(description="years")


class ListedCandidate(_Closed):
    """A candidate as listed: without `interviews` (GET /api/candidates/{id} has them)."""

    candidateId: Id
    name: str
    email: str
    phone: str
    resume: Resume
    metadata: Metadata


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


class Error(_Closed):
    error: ErrorDetail


# ---- the document ------------------------------------------------------------------------------------------

# Every /api route may answer these; every route with a body or a query string the ones below.
_ALWAYS = (401, 503)
_FOR_BODY = (413, 415, 422)
_FOR_QUERY = (422,)
_ERROR_TEXT = {401: "Missing or invalid bearer token", 403: "A join token is not an admin key",
               404: "Unknown id", 409: "Illegal status move, stale version or duplicate", 413: "Body too large",
               415: "Body is not JSON", 422: "Invalid input; `fields` names each bad field",
               503: "Storage unavailable; retry after Retry-After seconds"}


@dataclass(frozen=True, slots=True)
class Operation:
    """One route as the document declares it. `name` is its handler and its operationId."""

    name: str
    method: str
    path: str
    summary: str
    response: type[BaseModel]
    status: int = 200
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()  # besides _ALWAYS, _FOR_BODY and _FOR_QUERY
    if_match: bool = False  # takes `If-Match: "<metadata.version>"`
    tag: str = "interviews"

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
        operation["responses"] = {
            str(op.status): {"description": "Created" if op.status == 201 else "OK", "content": _json(ref(op.response))},
            **{str(s): {"description": _ERROR_TEXT[s], "content": _json(ref(Error))} for s in op.error_statuses}}
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "interview-worker API", "version": "0.1.0",
                 "description": "Interviews, candidates, live transcripts and text-only analysis. Every /api "
                                "route needs `Authorization: Bearer <ADMIN_API_KEY>`."},
        "components": {"securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}}, "schemas": schemas},
        "security": [{"admin": []}],
        "paths": paths,
    }
