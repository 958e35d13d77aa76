"""The HTTP API under /api (Starlette): interviews, candidates, transcripts, analysis and join tokens; OpenAPI
at /openapi.json.

`api_routes(service, admin_key)` returns routes with their full paths (`/api/...`, `/openapi.json`); the
composition root adds them to its app as they are (`Starlette(routes=[*api_routes(...), ...])`, not under a
Mount), with `token_route(...)` (it needs the token signer). Every /api route needs
`Authorization: Bearer <ADMIN_API_KEY>`.

`OPERATIONS` is the route table: each route's path, request and response models (adapters.api_schema) and error
statuses. The routes are built from it and /openapi.json is generated from it. `domain.commands` validates the
bodies; the models describe them.

Errors are JSON `{"error": {"code", "message", ...}}` (adapters.http_edge): 422 `validation_error` with `fields`
naming each bad field (bad JSON, wrong types, missing or unknown fields, bad query parameters), 401 bad/missing key,
403 a join token used as the key, 404 unknown id, 409 illegal status move / stale version / duplicate, 413 body
over `max_body_bytes`, 415 non-JSON body, 503 database unavailable. Each is logged once, here.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapters import api_schema as schema
from adapters.api_schema import Operation, openapi_document
from adapters.http_edge import MAX_BODY_BYTES, HttpError, error_kind, error_response, read_json
from adapters.metrics import Metrics
from adapters.tokens import InvalidToken, TokenSigner, bearer_token, validate_name, validate_role
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
from domain.model import CANCELLED, COMPLETED, Conflict, DomainError, Fields, Unavailable, ValidationError

log = logging.getLogger(__name__)

MAX_TOKEN_REQUEST_BYTES = 16 * 1024

_IID = "/api/interviews/{interview_id}"
ISSUE_TOKEN = Operation("issue_token", "POST", f"{_IID}/tokens", "Issue a join token for a participant",
                        schema.JoinToken, 201, body=schema.TokenRequest, errors=(403, 404, 409))
OPERATIONS: tuple[Operation, ...] = (
    Operation("create_interview", "POST", "/api/interviews", "Schedule an interview", schema.Interview, 201,
              body=schema.NewInterview, errors=(409,)),
    Operation("list_interviews", "GET", "/api/interviews",
              "List interviews, oldest scheduledAt first, with cursor pagination", schema.InterviewPage,
              query=schema.InterviewListParams),
    Operation("get_interview", "GET", _IID, "Get an interview with its transcript segments", schema.Interview,
              errors=(404,)),
    *(Operation(f"{action}_interview", "POST", f"{_IID}/{action}", f"Move the interview to {to}", schema.Interview,
                body=body, body_required=False, errors=(404, 409), if_match=True)
      for action, to, body in (("start", "in_progress", schema.StatusChange),
                               ("complete", "completed", schema.StatusChange),
                               ("cancel", "cancelled", schema.Cancellation))),
    Operation("add_question", "POST", f"{_IID}/questions", "Add a question (scheduled or in_progress)",
              schema.Question, 201, body=schema.NewQuestion, errors=(404, 409)),
    Operation("ask_question", "POST", _IID + "/questions/{question_id}/ask", "Mark a question asked (in_progress)",
              schema.Question, errors=(404, 409)),
    Operation("get_transcript", "GET", f"{_IID}/transcript", "Final transcript segments in recording order",
              schema.Transcript, errors=(404,)),
    Operation("get_analysis", "GET", f"{_IID}/analysis", "Get the analysis (text only)", schema.InterviewAnalysis,
              errors=(404,)),
    Operation("put_analysis", "PUT", f"{_IID}/analysis", "Record the analysis of a completed interview",
              schema.InterviewAnalysis, body=schema.AnalysisInput, errors=(404, 409)),
    ISSUE_TOKEN,
    Operation("create_candidate", "POST", "/api/candidates", "Create a candidate", schema.Candidate, 201,
              body=schema.NewCandidate, errors=(409,), tag="candidates"),
    Operation("list_candidates", "GET", "/api/candidates", "List candidates, oldest first, with cursor pagination",
              schema.CandidatePage, query=schema.CandidateListParams, tag="candidates"),
    Operation("get_candidate", "GET", "/api/candidates/{candidate_id}", "Get a candidate", schema.Candidate,
              errors=(404,), tag="candidates"),
    Operation("update_candidate", "PATCH", "/api/candidates/{candidate_id}",
              "Update a candidate (only the fields given; `version` for optimistic concurrency)", schema.Candidate,
              body=schema.CandidateUpdate, errors=(404, 409), tag="candidates"),
)


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


def require_admin(request: Request, admin_key: str) -> None:
    """Raise 401 unless the request carries `Authorization: Bearer <admin_key>` (constant-time compare)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if (scheme.lower() != "bearer" or not token or not admin_key
            or not hmac.compare_digest(token.encode(), admin_key.encode())):
        raise HttpError(401, "unauthorized", "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})


async def _handle(request: Request, exc: Exception) -> Response:
    return error_response(request, exc, log)


# For the app: Starlette(..., exception_handlers=exception_handlers) renders routes outside this module alike.
exception_handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    HTTPException: _handle, HttpError: _handle, DomainError: _handle, Unavailable: _handle}

Handler = Callable[[Request], Awaitable[Response]]


def _endpoint(fn: Handler, authorize: Callable[[Request], None],
              refused: Callable[[Response], None] | None = None) -> Handler:
    """`fn` behind `authorize`; every failure becomes one logged JSON error response (then `refused(response)`)."""

    @functools.wraps(fn)
    async def wrapper(request: Request) -> Response:
        try:
            authorize(request)
            return await fn(request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one logged JSON error response
            response = error_response(request, exc, log)
            if refused is not None:
                refused(response)
            return response

    return wrapper


def _route(op: Operation, handler: Handler) -> Route:
    return Route(op.path, handler, methods=[op.method])


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
    """Every route of `OPERATIONS` but the token route (`token_route`), and /openapi.json."""
    handlers: dict[str, Handler] = {}

    def endpoint(fn: Handler) -> Handler:
        handlers[fn.__name__] = _endpoint(fn, lambda request: require_admin(request, admin_key))
        return fn

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
        return endpoint(move)

    for action in ("start", "complete", "cancel"):
        transition(action)

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

    spec = openapi_document(OPERATIONS)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    return [*(_route(op, handlers[op.name]) for op in OPERATIONS if op is not ISSUE_TOKEN),
            Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)]


def link_host_trusted(host: str, patterns: Sequence[str]) -> bool:
    """Whether `host` is named by one of `patterns` (a host, or `*.domain`). The bare `*` names nobody: a link
    must never point wherever a request's Host header says."""
    host = host.lower()
    return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in patterns)


def token_route(signer: TokenSigner, service: InterviewService, admin_key: str, metrics: Metrics, *,
                public_url: str | None = None, link_hosts: Sequence[str] | None = None,
                max_body_bytes: int = MAX_TOKEN_REQUEST_BYTES) -> Route:
    """`POST /api/interviews/{id}/tokens` (admin key): issues a join token for one participant.

    Body `{"role": "candidate"|"interviewer"|"observer", "name": "..."}` (name defaults to the role).
    A join token in place of the admin key is a 403; refusals are counted in `errors_total`.
    `joinUrl` starts with `public_url`; without one, with the URL the request came to if its host is one of
    `link_hosts` (None: the caller vouches for every Host header), else it is relative (`/candidate?token=...`).
    """

    def authorize(request: Request) -> None:
        try:
            require_admin(request, admin_key)
            return
        except HttpError as unauthorized:
            try:
                claims = signer.verify(bearer_token(request.headers.get("authorization")))
            except InvalidToken:
                raise unauthorized from None
        # A valid join token is an authenticated caller with the wrong role for this endpoint.
        raise HttpError(403, "forbidden", f"a {claims.role} join token cannot issue tokens")

    async def issue_token(request: Request) -> Response:
        interview_id = request.path_params["interview_id"]
        data = await read_json(request, max_body_bytes)
        if not isinstance(data, dict):
            raise ValidationError({"body": "expected a JSON object with role and name"})
        problems: dict[str, str] = {}
        role = name = ""
        try:
            role = validate_role(data.get("role"))
        except ValueError as exc:
            problems["role"] = str(exc)
        try:
            name = validate_name(data["name"]) if "name" in data else role.title()
        except ValueError as exc:
            problems["name"] = str(exc)
        for key in sorted(set(data) - {"role", "name"}):
            problems[key] = "unknown field"
        if problems:
            raise ValidationError(problems)
        status = (await service.get_interview(interview_id, with_segments=False))["status"]
        if status in (COMPLETED, CANCELLED):
            raise Conflict(f"interview {interview_id} is {status}", code="interview_closed")
        token, claims = signer.issue(interview_id, role, name)
        if public_url:
            base = public_url.rstrip("/")
        elif link_hosts is None or link_host_trusted(request.url.hostname or "", link_hosts):
            base = str(request.base_url).rstrip("/")
        else:
            log.warning("joinUrl left relative: host %r is not in ALLOWED_HOSTS by name (set PUBLIC_URL)",
                        (request.url.hostname or "")[:100])
            base = ""
        page = "candidate" if claims.role == "candidate" else "interviewer"
        expires = datetime.fromtimestamp(claims.expires_at, tz=UTC).isoformat().replace("+00:00", "Z")
        log.info("join token issued: interview=%s participant=%s role=%s", interview_id, claims.participant_id,
                 claims.role)
        return ApiJSONResponse({"token": token, "joinUrl": f"{base}/{page}?token={token}", "expiresAt": expires,
                                "participantId": claims.participant_id, "role": claims.role, "name": claims.name},
                               status_code=201)

    return _route(ISSUE_TOKEN, _endpoint(issue_token, authorize,
                                         lambda response: metrics.error(error_kind(response.status_code))))
