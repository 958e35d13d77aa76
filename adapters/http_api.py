"""The HTTP API under /api (Starlette): interviews, candidates, transcripts, analysis; OpenAPI at /openapi.json.

`api_routes(service, admin_key)` returns routes with their full paths (`/api/...`, `/openapi.json`); the
composition root adds them to its app as they are (`Starlette(routes=[*api_routes(...), ...])`, not under a
Mount). Every /api route needs `Authorization: Bearer <ADMIN_API_KEY>`.

Errors are JSON `{"error": {"code", "message", ...}}`: 422 `validation_error` with `fields` naming each bad
field (bad JSON, wrong types, missing or unknown fields, bad query parameters), 401 bad/missing key, 404 unknown
id, 409 illegal status move / stale version / duplicate, 413 body over `max_body_bytes`, 415 non-JSON body,
503 database unavailable. Each is logged once, here.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from domain.commands import (
    AddQuestion,
    CandidateQuery,
    CreateCandidate,
    CreateInterview,
    InterviewQuery,
    InterviewService,
    RecordAnalysis,
    UpdateCandidate,
)
from domain.events import iso
from domain.model import (
    INTERVIEW_FORMATS,
    INTERVIEW_TYPES,
    RECOMMENDATIONS,
    STATUSES,
    Conflict,
    DomainError,
    Fields,
    NotFound,
    Unavailable,
    ValidationError,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "body_too_large", 415: "unsupported_media_type",
               422: "validation_error", 429: "too_many_requests", 503: "unavailable"}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class ApiJSONResponse(JSONResponse):
    """JSON with dates as ISO 8601 UTC ('...Z')."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=_json_default).encode()


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
               **extra: Any) -> JSONResponse:
    return ApiJSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status,
                           headers=headers)


def require_admin(request: Request, admin_key: str) -> None:
    """Raise 401 unless the request carries `Authorization: Bearer <admin_key>` (constant-time compare)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if (scheme.lower() != "bearer" or not token or not admin_key
            or not hmac.compare_digest(token.encode(), admin_key.encode())):
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refusing (413) more than `max_bytes` without reading past the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise HTTPException(413, f"body larger than {max_bytes} bytes")
        except ValueError:
            raise HTTPException(400, "invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"body larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, max_bytes: int = MAX_BODY_BYTES, *, required: bool = True) -> Any:
    """Parse a JSON body: 413 too big, 415 not JSON, 422 invalid JSON (or missing when `required`)."""
    body = await read_body(request, max_bytes)
    if not body.strip():
        if required:
            raise ValidationError({"body": "a JSON body is required"})
        return {}
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise HTTPException(415, "expected Content-Type: application/json")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ValidationError({"body": "invalid JSON: not UTF-8"}) from None
    except json.JSONDecodeError as exc:
        raise ValidationError({"body": f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"}) from None


def error_response(request: Request, exc: Exception) -> Response:
    """Translate an error into its JSON response and log it once."""
    where = f"{request.method} {request.url.path}"
    if isinstance(exc, ValidationError):
        log.info("%s -> 422 %s", where, exc.message)
        return json_error(422, exc.code, "invalid request", fields=exc.fields)
    if isinstance(exc, NotFound):
        log.info("%s -> 404 %s", where, exc.message)
        return json_error(404, exc.code, exc.message)
    if isinstance(exc, Conflict):
        log.info("%s -> 409 %s: %s", where, exc.code, exc.message)
        return json_error(409, exc.code, exc.message)
    if isinstance(exc, Unavailable):
        log.warning("%s -> 503 %s", where, exc.message)
        return json_error(503, exc.code, "storage unavailable, retry later", headers={"Retry-After": "1"})
    if isinstance(exc, DomainError):
        log.info("%s -> 400 %s", where, exc.message)
        return json_error(400, exc.code, exc.message)
    if isinstance(exc, HTTPException):
        log.info("%s -> %d %s", where, exc.status_code, exc.detail)
        return json_error(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail),
                          headers=dict(exc.headers or {}))
    log.exception("%s -> 500", where, exc_info=exc)
    return json_error(500, "internal_error", "internal error")


async def _handle(request: Request, exc: Exception) -> Response:
    return error_response(request, exc)


# For the app: Starlette(..., exception_handlers=exception_handlers) renders routes outside this module alike.
exception_handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    HTTPException: _handle, DomainError: _handle, Unavailable: _handle}

Handler = Callable[[Request], Awaitable[Response]]


def _expected_version(request: Request, body: Fields) -> int | None:
    """From the body's `expectedVersion` or an `If-Match: "<version>"` header."""
    value: Any = body.data.get("expectedVersion")
    if value is None and "if-match" in request.headers:
        raw = request.headers["if-match"].strip().removeprefix("W/").strip('"')
        try:
            value = int(raw)
        except ValueError:
            body.error("If-Match", "expected the interview's metadata.version")
            return None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        body.error("expectedVersion", "expected a positive integer")
        return None
    return value


def api_routes(service: InterviewService, admin_key: str, *,
               max_body_bytes: int = MAX_BODY_BYTES) -> list[BaseRoute]:
    def endpoint(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def wrapper(request: Request) -> Response:
            try:
                require_admin(request, admin_key)
                return await fn(request)
            except Exception as exc:  # noqa: BLE001 - every failure becomes one logged JSON error response
                return error_response(request, exc)

        return wrapper

    async def body_of(request: Request, required: bool = True) -> Any:
        return await read_json(request, max_body_bytes, required=required)

    def params(request: Request) -> dict[str, str]:
        return dict(request.query_params)

    # -- interviews ---------------------------------------------------------------------------------------------

    @endpoint
    async def create_interview(request: Request) -> Response:
        doc = await service.create_interview(CreateInterview.parse(await body_of(request)))
        return ApiJSONResponse(doc, status_code=201, headers={"Location": f"/api/interviews/{doc['interviewId']}"})

    @endpoint
    async def list_interviews(request: Request) -> Response:
        return ApiJSONResponse(await service.list_interviews(InterviewQuery.parse(params(request))))

    @endpoint
    async def get_interview(request: Request) -> Response:
        return ApiJSONResponse(await service.get_interview(request.path_params["interview_id"]))

    def transition(action: str) -> Handler:
        allowed = ("expectedVersion", "reason") if action == "cancel" else ("expectedVersion",)

        @endpoint
        async def move(request: Request) -> Response:
            f = Fields(await body_of(request, required=False), allowed=allowed)
            version = _expected_version(request, f)
            reason = f.text("reason", required=False, max_len=500, default="")
            f.done()
            iid = request.path_params["interview_id"]
            if action == "start":
                doc = await service.start_interview(iid, version)
            elif action == "complete":
                doc = await service.complete_interview(iid, version)
            else:
                doc = await service.cancel_interview(iid, reason, version)
            return ApiJSONResponse(doc)

        move.__name__ = f"{action}_interview"
        return move

    @endpoint
    async def add_question(request: Request) -> Response:
        cmd = AddQuestion.parse(await body_of(request))
        question = await service.add_question(request.path_params["interview_id"], cmd)
        return ApiJSONResponse(question, status_code=201)

    @endpoint
    async def ask_question(request: Request) -> Response:
        return ApiJSONResponse(await service.ask_question(request.path_params["interview_id"],
                                                          request.path_params["question_id"]))

    @endpoint
    async def get_transcript(request: Request) -> Response:
        return ApiJSONResponse(await service.get_transcript(request.path_params["interview_id"]))

    @endpoint
    async def get_analysis(request: Request) -> Response:
        return ApiJSONResponse(await service.get_analysis(request.path_params["interview_id"]))

    @endpoint
    async def put_analysis(request: Request) -> Response:
        cmd = RecordAnalysis.parse(await body_of(request))
        await service.record_analysis(request.path_params["interview_id"], cmd)
        return ApiJSONResponse(await service.get_analysis(request.path_params["interview_id"]))

    # -- candidates ---------------------------------------------------------------------------------------------

    @endpoint
    async def create_candidate(request: Request) -> Response:
        doc = await service.create_candidate(CreateCandidate.parse(await body_of(request)))
        return ApiJSONResponse(doc, status_code=201, headers={"Location": f"/api/candidates/{doc['candidateId']}"})

    @endpoint
    async def list_candidates(request: Request) -> Response:
        return ApiJSONResponse(await service.list_candidates(CandidateQuery.parse(params(request))))

    @endpoint
    async def get_candidate(request: Request) -> Response:
        return ApiJSONResponse(await service.get_candidate(request.path_params["candidate_id"]))

    @endpoint
    async def update_candidate(request: Request) -> Response:
        cmd = UpdateCandidate.parse(await body_of(request))
        return ApiJSONResponse(await service.update_candidate(request.path_params["candidate_id"], cmd))

    spec = openapi_document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    iid = "/api/interviews/{interview_id}"
    return [
        Route("/api/interviews", create_interview, methods=["POST"]),
        Route("/api/interviews", list_interviews, methods=["GET"]),
        Route(iid, get_interview, methods=["GET"]),
        *(Route(f"{iid}/{a}", transition(a), methods=["POST"]) for a in ("start", "complete", "cancel")),
        Route(f"{iid}/questions", add_question, methods=["POST"]),
        Route(iid + "/questions/{question_id}/ask", ask_question, methods=["POST"]),
        Route(f"{iid}/transcript", get_transcript, methods=["GET"]),
        Route(f"{iid}/analysis", get_analysis, methods=["GET"]),
        Route(f"{iid}/analysis", put_analysis, methods=["PUT"]),
        Route("/api/candidates", create_candidate, methods=["POST"]),
        Route("/api/candidates", list_candidates, methods=["GET"]),
        Route("/api/candidates/{candidate_id}", get_candidate, methods=["GET"]),
        Route("/api/candidates/{candidate_id}", update_candidate, methods=["PATCH"]),
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
    ]


# ---------------------------------------------------------------------------------------------------------
# OpenAPI 3.1 document (hand-written: the routes above are plain Starlette, validation lives in domain.commands)


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_S = {"type": "string"}
_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"}
_TIME = {"type": "string", "format": "date-time"}
_NTIME = {"type": ["string", "null"], "format": "date-time"}


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], status: str = "200", what: str = "OK") -> dict[str, Any]:
    return {status: {"description": what, "content": {"application/json": {"schema": schema}}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {401: "Missing or invalid bearer token", 403: "A join token is not an admin key", 404: "Unknown id", 409: "Illegal status move, stale version "
             "or duplicate", 413: "Body too large", 415: "Body is not JSON", 422: "Invalid input; `fields` names "
             "each bad field", 503: "Storage unavailable"}
    return {str(c): {"description": words[c], "content": {"application/json": {"schema": _ref("Error")}}}
            for c in (401, 503, *codes)}


def _op(summary: str, responses: dict[str, Any], *, body: dict[str, Any] | None = None,
        parameters: list[dict[str, Any]] | None = None, tag: str = "interviews") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        op["requestBody"] = body
    if parameters:
        op["parameters"] = parameters
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _ID}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def openapi_document() -> dict[str, Any]:
    question = _obj({"questionId": _ID, "text": _S, "category": _S, "order": {"type": "integer"},
                     "expectedKeywords": {"type": "array", "items": _S}, "askedAt": _NTIME})
    segment = _obj({"participantId": _ID, "seq": {"type": "integer"}, "speaker": _obj(
        {"role": {"enum": ["interviewer", "candidate", "observer"]}, "name": _S, "participantId": _ID}),
        "start_s": {"type": "number"}, "end_s": {"type": "number"}, "text": _S,
        "words": {"type": "array", "items": _obj({"word": _S, "start_s": {"type": "number"},
                                                   "end_s": {"type": "number"}, "probability": {"type": "number"}})},
        "confidence": {"type": "number"}, "language": _S, "engine": _S, "model": _S,
        "hallucination": {"type": "boolean"}, "recordedAt": _TIME,
        # only on a revised segment: the revision shown, and the live final's text it replaced
        "revision": {"type": "integer", "minimum": 1}, "originalText": _S})
    analysis_in = _obj({
        "sentiment": _obj({"overall": {"type": "number", "minimum": -1, "maximum": 1},
                           "timeline": {"type": "array", "items": _obj(
                               {"at_s": {"type": "number", "minimum": 0},
                                "score": {"type": "number", "minimum": -1, "maximum": 1},
                                "participantId": _ID}, ("at_s", "score"))}}),
        "keywords": {"type": "array", "items": _obj({"term": _S, "count": {"type": "integer", "minimum": 0},
                                                     "relevance": {"type": "number", "minimum": 0,
                                                                   "maximum": 1}}, ("term",))},
        "competency": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 5}},
        "overall": _obj({"score": {"type": "number", "minimum": 0, "maximum": 100},
                         "recommendation": {"enum": list(RECOMMENDATIONS)}, "summary": _S})})
    analysis = {"allOf": [analysis_in, _obj({"status": {"enum": ["pending", "completed"]},
                                             "completedAt": _NTIME})]}
    metadata = _obj({"createdAt": _TIME, "updatedAt": _TIME, "createdBy": _S, "version": {"type": "integer"}})
    interview = _obj({
        "interviewId": _ID, "candidateId": _ID, "jobId": _ID, "status": {"enum": list(STATUSES)},
        "scheduledAt": _TIME, "startedAt": _NTIME, "completedAt": _NTIME, "cancelledAt": _NTIME,
        "cancelReason": _S, "duration": {"type": ["number", "null"], "description": "seconds"},
        "interviewers": {"type": "array", "items": _ID}, "type": {"enum": list(INTERVIEW_TYPES)},
        "format": {"enum": list(INTERVIEW_FORMATS)}, "questions": {"type": "array", "items": _ref("Question")},
        "transcription": _obj({"status": {"enum": ["pending", "in_progress", "completed"]},
                               "segments": {"type": "array", "items": _ref("Segment")}}),
        "analysis": _ref("Analysis"), "metadata": _ref("Metadata")})
    create_interview = _obj({
        "interviewId": {**_ID, "description": "optional client-chosen id"}, "candidateId": _ID, "jobId": _ID,
        "scheduledAt": {**_TIME, "description": "ISO 8601 with a zone"}, "type": {"enum": list(INTERVIEW_TYPES)},
        "format": {"enum": list(INTERVIEW_FORMATS)}, "interviewers": {"type": "array", "items": _ID},
        "questions": {"type": "array", "items": _ref("NewQuestion")}}, ("candidateId", "jobId", "scheduledAt"))
    resume = _obj({"url": {"type": "string", "format": "uri"}, "parsed": {"type": "boolean"},
                   "skills": {"type": "array", "items": _S},
                   "experience": {"type": ["number", "null"], "description": "years"}})
    candidate = _obj({"candidateId": _ID, "name": _S, "email": {"type": "string", "format": "email"},
                      "phone": _S, "resume": resume, "interviews": {"type": "array", "items": _ID},
                      "metadata": _ref("Metadata")})
    page: dict[str, Any] = {"type": "object", "properties": {"items": {"type": "array"},
                                              "nextCursor": {"type": ["string", "null"]}}}
    iid = [_path_param("interview_id")]
    moves = {
        f"/api/interviews/{{interview_id}}/{action}": {"post": _op(
            f"Move the interview to {to}", {**_ok(_ref("Interview")), **_errors(404, 409, 413, 422)},
            body=_json_body(_obj({"expectedVersion": {"type": "integer", "minimum": 1},
                                  **({"reason": _S} if action == "cancel" else {})}), required=False),
            parameters=iid + [{"name": "If-Match", "in": "header", "required": False, "schema": _S,
                               "description": "the metadata.version the change was decided on"}])}
        for action, to in (("start", "in_progress"), ("complete", "completed"), ("cancel", "cancelled"))}
    return {
        "openapi": "3.1.0",
        "info": {"title": "interview-worker API", "version": "0.1.0",
                 "description": "Interviews, candidates, live transcripts and text-only analysis. Every /api "
                                "route needs `Authorization: Bearer <ADMIN_API_KEY>`."},
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _obj({"error": _obj({"code": _S, "message": _S, "fields": {
                    "type": "object", "additionalProperties": _S}}, ("code", "message"))}, ("error",)),
                "Interview": interview, "NewInterview": create_interview, "Question": question,
                "NewQuestion": _obj({"questionId": _ID, "text": _S, "category": _S,
                                     "expectedKeywords": {"type": "array", "items": _S}}, ("text",)),
                "Segment": segment, "Analysis": analysis, "AnalysisInput": analysis_in, "Metadata": metadata,
                "Candidate": candidate,
                "NewCandidate": _obj({"candidateId": _ID, "name": _S, "email": {"type": "string", "format": "email"},
                                      "phone": _S, "resume": resume}, ("name", "email")),
                "CandidateUpdate": _obj({"name": _S, "email": {"type": "string", "format": "email"}, "phone": _S,
                                         "resume": resume, "version": {"type": "integer", "minimum": 1}}),
            },
        },
        "security": [{"admin": []}],
        "paths": {
            "/api/interviews": {
                "post": _op("Schedule an interview",
                            {**_ok(_ref("Interview"), "201", "Created"), **_errors(409, 413, 415, 422)},
                            body=_json_body(_ref("NewInterview"))),
                "get": _op("List interviews, oldest scheduledAt first, with cursor pagination",
                           {**_ok({**page, "properties": {**page["properties"], "items": {
                               "type": "array", "items": _ref("Interview")}}}), **_errors(422)},
                           parameters=[_query("status", {"enum": list(STATUSES)}, "filter by status"),
                                       _query("candidateId", _ID, "filter by candidate"),
                                       _query("jobId", _ID, "filter by job"),
                                       _query("from", _TIME, "scheduledAt >= from"),
                                       _query("to", _TIME, "scheduledAt < to"),
                                       _query("cursor", _S, "nextCursor of the previous page"),
                                       _query("limit", {"type": "integer", "minimum": 1, "maximum": 200},
                                              "page size (default 50)")])},
            "/api/interviews/{interview_id}": {"get": _op(
                "Get an interview with its transcript segments", {**_ok(_ref("Interview")), **_errors(404)},
                parameters=iid)},
            **moves,
            "/api/interviews/{interview_id}/questions": {"post": _op(
                "Add a question (scheduled or in_progress)",
                {**_ok(_ref("Question"), "201", "Created"), **_errors(404, 409, 413, 422)},
                body=_json_body(_ref("NewQuestion")), parameters=iid)},
            "/api/interviews/{interview_id}/questions/{question_id}/ask": {"post": _op(
                "Mark a question asked (in_progress)", {**_ok(_ref("Question")), **_errors(404, 409)},
                parameters=iid + [_path_param("question_id")])},
            "/api/interviews/{interview_id}/transcript": {"get": _op(
                "Final transcript segments in recording order", {**_ok(_obj({
                    "interviewId": _ID, "status": _S, "segments": {"type": "array", "items": _ref("Segment")}})),
                    **_errors(404)}, parameters=iid)},
            "/api/interviews/{interview_id}/analysis": {
                "get": _op("Get the analysis (text only)", {**_ok(_ref("Analysis")), **_errors(404)},
                           parameters=iid),
                "put": _op("Record the analysis of a completed interview",
                           {**_ok(_ref("Analysis")), **_errors(404, 409, 413, 422)},
                           body=_json_body(_ref("AnalysisInput")), parameters=iid)},
            "/api/interviews/{interview_id}/tokens": {"post": _op(
                "Issue a join token for a participant",
                {**_ok(_obj({"token": _S, "joinUrl": _S, "expiresAt": _TIME, "participantId": _ID,
                             "role": _S, "name": _S}), "201", "Created"),
                 **_errors(403, 404, 409, 413, 415, 422)},
                body=_json_body(_obj({"role": {"enum": ["candidate", "interviewer", "observer"]}, "name": _S},
                                     ("role",))), parameters=iid)},
            "/api/candidates": {
                "post": _op("Create a candidate", {**_ok(_ref("Candidate"), "201", "Created"),
                                                   **_errors(409, 413, 415, 422)},
                            body=_json_body(_ref("NewCandidate")), tag="candidates"),
                "get": _op("List candidates, oldest first, with cursor pagination",
                           {**_ok({**page, "properties": {**page["properties"], "items": {
                               "type": "array", "items": _ref("Candidate")}}}), **_errors(422)},
                           parameters=[_query("cursor", _S, "nextCursor of the previous page"),
                                       _query("limit", {"type": "integer", "minimum": 1, "maximum": 200},
                                              "page size (default 50)")], tag="candidates")},
            "/api/candidates/{candidate_id}": {
                "get": _op("Get a candidate", {**_ok(_ref("Candidate")), **_errors(404)},
                           parameters=[_path_param("candidate_id")], tag="candidates"),
                "patch": _op("Update a candidate (only the fields given; `version` for optimistic concurrency)",
                             {**_ok(_ref("Candidate")), **_errors(404, 409, 413, 415, 422)},
                             body=_json_body(_ref("CandidateUpdate")), parameters=[_path_param("candidate_id")],
                             tag="candidates")},
        },
    }
