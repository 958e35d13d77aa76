"""The HTTP API under /api (Starlette): sign-in, users, API keys, interviews, candidates, transcripts, analysis,
join tokens and the audit trail; OpenAPI at /openapi.json.

`api_routes(api)` returns routes with their full paths (`/api/...`, `/openapi.json`); the composition root adds
them to its app as they are. `OPERATIONS` is the route table: each route's path, request and response models
(adapters.api_schema), error statuses, and the `Action` and resource kind it is authorized as. The routes are built
from it and /openapi.json is generated from it; `domain.commands` validates the bodies.

Every route runs the same wrapper (`_endpoint`), in this order: who is calling (`Accounts.principal`: an access
token, an API key, a join token, or nobody), what the action is on (the interview or candidate named in the path,
loaded for its organisation and interviewers; else the caller's organisation), `domain.access.authorize`, then
the handler. A refusal is 401 (nobody, or an invalid token: `WWW-Authenticate: Bearer error="invalid_token"`),
403 (role or scope), or 404 exactly like an unknown id (another organisation's resource, or an interview an
interviewer is not assigned to). Every request, allowed or not, is recorded once in the audit trail
(`Audit.request`).

Errors are JSON `{"error": {"code", "message", ...}}` (adapters.http_edge): 422 `validation_error` with `fields`,
409 illegal status move / stale version / duplicate, 413 body over `max_body_bytes`, 415 non-JSON body, 429 over a
rate limit (with Retry-After), 503 database unavailable. Each is logged once, here.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import functools
import io
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapters import api_schema as schema
from adapters import read_scope
from adapters.analysis_jobs import AnalysisJobs, MemoryAnalysisRecords, interview_structure
from adapters.api_schema import Operation, openapi_document
from adapters.auth import Accounts
from adapters.crypto import ReceiptSigner
from adapters.http_edge import MAX_BODY_BYTES, Audit, HttpError, error_kind, error_response, read_json
from adapters.metrics import Metrics
from adapters.privacy import NOTICE_VERSION, Erased, Privacy
from adapters.rate_limits import RateLimits
from adapters.tokens import InvalidToken, TokenSigner, bearer_token, validate_name, validate_role
from domain.access import ANONYMOUS, INTERVIEWER, ORG_LEVEL, Action, Decision, Principal, Resource, authorize
from domain.analysis import OrgPolicy
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
    CANCELLED,
    COMPLETED,
    Conflict,
    DomainError,
    Fields,
    NotFound,
    Unavailable,
    ValidationError,
)

log = logging.getLogger(__name__)

MAX_TOKEN_REQUEST_BYTES = 16 * 1024
REFRESH_COOKIE = "iw_refresh"
REFRESH_PATH = "/api/auth"
CSRF_HEADER = "x-requested-with"  # a custom header: a cross-site form cannot send it, and we grant no CORS

_IID = "/api/interviews/{interview_id}"
A = Action
OPERATIONS: tuple[Operation, ...] = (
    Operation("login", "POST", "/api/auth/login", "Sign in: an access token, and the refresh token as a cookie",
              schema.AccessToken, body=schema.Login, tag="auth"),
    Operation("refresh", "POST", "/api/auth/refresh", "A new access token for the refresh cookie (rotated; needs "
              "the X-Requested-With header)", schema.AccessToken, errors=(403,), tag="auth"),
    Operation("logout", "POST", "/api/auth/logout", "Revoke the refresh cookie's session (needs X-Requested-With)",
              schema.LoggedOut, errors=(403,), tag="auth"),
    Operation("setup", "POST", "/api/auth/setup", "Create the first admin with the one-time setup link's token "
              "(404 unknown token; 410 once used or expired, or once an admin exists)", schema.UserCreated, 201,
              body=schema.Setup, errors=(404, 410), tag="auth"),
    Operation("me", "GET", "/api/me", "The signed-in user", schema.Me, errors=(403,), tag="auth",
              action=A.SELF_READ),
    Operation("create_user", "POST", "/api/users", "Create a user of the caller's organisation (admin)",
              schema.UserCreated, 201, body=schema.NewUser, errors=(403, 409), tag="users", action=A.USER_MANAGE),
    Operation("list_users", "GET", "/api/users", "The organisation's users (admin, hr: to assign interviewers)",
              schema.UserPage, errors=(403,), tag="users", action=A.USER_READ),
    Operation("disable_user", "DELETE", "/api/users/{user_id}", "Disable a user and end their sessions (admin)",
              schema.UserDisabled, errors=(403, 404), tag="users", action=A.USER_MANAGE),
    Operation("create_api_key", "POST", "/api/api-keys", "Create an API key; the key is shown once (admin)",
              schema.ApiKeyCreated, 201, body=schema.NewApiKey, errors=(403,), tag="users",
              action=A.APIKEY_MANAGE),
    Operation("list_api_keys", "GET", "/api/api-keys", "The organisation's API keys, without the keys (admin)",
              schema.ApiKeyPage, errors=(403,), tag="users", action=A.APIKEY_MANAGE),
    Operation("revoke_api_key", "DELETE", "/api/api-keys/{key_id}", "Revoke an API key (admin)",
              schema.ApiKeyRevoked, errors=(403, 404), tag="users", action=A.APIKEY_MANAGE),
    Operation("read_audit", "GET", "/api/audit", "The audit trail, newest first (admin)", schema.AuditPage,
              query=schema.AuditParams, errors=(403,), tag="users", action=A.AUDIT_READ),
    Operation("create_interview", "POST", "/api/interviews", "Schedule an interview", schema.Interview, 201,
              body=schema.NewInterview, errors=(403, 409), action=A.INTERVIEW_CREATE),
    Operation("list_interviews", "GET", "/api/interviews",
              "List interviews (an interviewer's: those assigned), oldest scheduledAt first, with cursor pagination",
              schema.InterviewPage, query=schema.InterviewListParams, errors=(403,), action=A.INTERVIEW_READ),
    Operation("get_interview", "GET", _IID, "Get an interview with its transcript segments", schema.Interview,
              errors=(403, 404), action=A.INTERVIEW_READ, resource="interview"),
    *(Operation(f"{verb}_interview", "POST", f"{_IID}/{verb}", f"Move the interview to {to}", schema.Interview,
                body=body, body_required=False, errors=(403, 404, 409), if_match=True, action=A.INTERVIEW_UPDATE,
                resource="interview")
      for verb, to, body in (("start", "in_progress", schema.StatusChange),
                             ("complete", "completed", schema.StatusChange),
                             ("cancel", "cancelled", schema.Cancellation))),
    Operation("add_question", "POST", f"{_IID}/questions", "Add a question (scheduled or in_progress)",
              schema.Question, 201, body=schema.NewQuestion, errors=(403, 404, 409), action=A.QUESTION_WRITE,
              resource="interview"),
    Operation("ask_question", "POST", _IID + "/questions/{question_id}/ask", "Mark a question asked (in_progress)",
              schema.Question, errors=(403, 404, 409), action=A.QUESTION_WRITE, resource="interview"),
    Operation("get_transcript", "GET", f"{_IID}/transcript", "Final transcript segments in recording order",
              schema.Transcript, errors=(403, 404), action=A.TRANSCRIPT_READ, resource="interview"),
    Operation("get_analysis", "GET", f"{_IID}/analysis",
              "Get the analysis: status, aggregate scorecard, each provider's run, review (text only)",
              schema.InterviewAnalysis, query=schema.AnalysisParams, errors=(403, 404), action=A.ANALYSIS_READ,
              resource="interview"),
    Operation("run_analysis", "POST", f"{_IID}/analysis/run",
              "Analyse the completed interview again now (in the background)", schema.InterviewAnalysis, 202,
              body=schema.AnalysisRunRequest, body_required=False, errors=(403, 404, 409),
              action=A.ANALYSIS_WRITE, resource="interview"),
    Operation("put_analysis", "PUT", f"{_IID}/analysis", "Record the analysis of a completed interview",
              schema.InterviewAnalysis, body=schema.AnalysisInput, errors=(403, 404, 409), action=A.ANALYSIS_WRITE,
              resource="interview"),
    Operation("review_analysis", "POST", f"{_IID}/analysis/review",
              "Review the scorecard (hr/admin): edit it, confirm it (then it is what GET returns) or reject it; "
              "every change is kept in review.history", schema.InterviewAnalysis, body=schema.ReviewRequest,
              errors=(403, 404, 409), action=A.ANALYSIS_WRITE, resource="interview"),
    Operation("export_analysis", "GET", "/api/analysis/export",
              "Every completed interview's scores (as its default view shows them), JSON or CSV (hr/admin)",
              schema.AnalysisExport, query=schema.ExportParams, also=("text/csv",), errors=(403,),
              action=A.ANALYSIS_EXPORT),
    Operation("get_organisation", "GET", "/api/organisation",
              "The organisation's settings: jurisdiction policy, bias audit date, alternative-process contact, "
              "tone (admin)", schema.Organisation, errors=(403,), tag="users", action=A.ORG_MANAGE),
    Operation("update_organisation", "PATCH", "/api/organisation", "Change the organisation's settings (admin)",
              schema.Organisation, body=schema.OrganisationUpdate, errors=(403,), tag="users",
              action=A.ORG_MANAGE),
    Operation("join_notice", "GET", "/api/notice",
              "What the caller's page shows before joining (by join token): the privacy notice's version and the "
              "organisation's policy, with the Local Law 144 candidate notice under us-nyc", schema.JoinNotice,
              errors=(403, 404), tag="participants", auth="joinToken", action=A.CONSENT,
              resource="own_interview"),
    Operation("get_structure", "GET", f"{_IID}/structure",
              "The transcript's structure from its text: question/answer pairs, talk time, per-speaker tone of "
              "words and keywords", schema.InterviewStructure, query=schema.StructureParams, errors=(403, 404),
              action=A.ANALYSIS_READ, resource="interview"),
    Operation("issue_token", "POST", f"{_IID}/tokens", "Issue a join token for a participant", schema.JoinToken,
              201, body=schema.TokenRequest, errors=(403, 404, 409), action=A.TOKEN_MINT, resource="interview"),
    Operation("join_interview", "POST", f"{_IID}/join", "A join token for the signed-in user (an interviewer)",
              schema.JoinToken, 201, errors=(403, 404, 409), action=A.INTERVIEW_JOIN, resource="interview"),
    Operation("revoke_token", "DELETE", _IID + "/tokens/{token_id}",
              "Revoke a join token (its live session ends within seconds)", schema.TokenRevoked,
              errors=(403, 404), action=A.TOKEN_REVOKE, resource="interview"),
    Operation("create_candidate", "POST", "/api/candidates", "Create a candidate", schema.Candidate, 201,
              body=schema.NewCandidate, errors=(403, 409), tag="candidates", action=A.CANDIDATE_WRITE),
    Operation("list_candidates", "GET", "/api/candidates", "List candidates, oldest first, with cursor pagination",
              schema.CandidatePage, query=schema.CandidateListParams, errors=(403,), tag="candidates",
              action=A.CANDIDATE_READ),
    Operation("get_candidate", "GET", "/api/candidates/{candidate_id}", "Get a candidate", schema.Candidate,
              errors=(403, 404), tag="candidates", action=A.CANDIDATE_READ, resource="candidate"),
    Operation("update_candidate", "PATCH", "/api/candidates/{candidate_id}",
              "Update a candidate (only the fields given; `version` for optimistic concurrency)", schema.Candidate,
              body=schema.CandidateUpdate, errors=(403, 404, 409), tag="candidates", action=A.CANDIDATE_WRITE,
              resource="candidate"),
    Operation("erase_candidate", "DELETE", "/api/candidates/{candidate_id}",
              "Erase everything about a candidate (crypto-shredding their data key); a signed receipt. Unknown or "
              "already erased: 404 (then with the earlier receipt's id)", schema.SignedReceipt,
              query=schema.ErasureParams, errors=(403, 404, 409), tag="privacy", action=A.CANDIDATE_ERASE,
              resource="candidate_or_erased"),
    Operation("export_candidate", "GET", "/api/candidates/{candidate_id}/export",
              "Everything held about a candidate as a zip (export.json + summary.html); the signed receipt is in "
              "the Interview-Worker-Receipt header", None, media_type="application/zip", errors=(403, 404, 410),
              tag="privacy", action=A.CANDIDATE_EXPORT, resource="candidate_or_erased"),
    Operation("give_consent", "POST", "/api/consent",
              "The caller (by join token) consents to the processing of their audio under the notice shown",
              None, 204, body=schema.ConsentRequest, errors=(403, 404, 409), tag="privacy", auth="joinToken",
              action=A.CONSENT, resource="own_interview"),
    Operation("withdraw_consent", "DELETE", "/api/consent",
              "The caller (by join token) withdraws consent: their audio stops being processed at once", None, 204,
              errors=(403, 404), tag="privacy", auth="joinToken", action=A.CONSENT, resource="own_interview"),
)
# (interview, participant, given, notice version, when) -> the participant's last final seq the room knows, if any
ConsentChanged = Callable[[str, str, bool, str, datetime | None], Awaitable[int | None]]
_PUBLIC_OPS = {"login", "refresh", "logout", "setup"}
assert all((op.action is A.PUBLIC) == (op.name in _PUBLIC_OPS) for op in OPERATIONS), "every route has an action"


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


async def _handle(request: Request, exc: Exception) -> Response:
    return error_response(request, exc, log)


# For the app: Starlette(..., exception_handlers=exception_handlers) renders routes outside this module alike.
exception_handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    HTTPException: _handle, HttpError: _handle, DomainError: _handle, Unavailable: _handle}

Handler = Callable[[Request], Awaitable[Response]]


def refusal(decision: Decision, kind: str, ident: str) -> Exception:
    """The error of a refused decision; HIDE is indistinguishable from an unknown id."""
    if decision is Decision.UNAUTHENTICATED:
        return HttpError(401, "unauthorized", "sign in or send a bearer token", {"WWW-Authenticate": "Bearer"})
    if decision is Decision.HIDE:
        return NotFound(kind, ident)
    return HttpError(403, "forbidden", "your role or scopes do not allow this")


@dataclass
class Api:
    """What the routes need, built by the composition root."""

    service: InterviewService
    accounts: Accounts
    signer: TokenSigner
    limits: RateLimits
    metrics: Metrics = field(default_factory=Metrics)
    audit: Audit = field(default_factory=Audit)
    analysis: AnalysisJobs | None = None  # default: the local heuristic analyser, jobs kept in memory
    privacy: Privacy | None = None  # erasure, export and consent (without it those routes are left out)
    on_consent: ConsentChanged | None = None  # the live rooms act on a consent change at once
    public_url: str | None = None
    link_hosts: Sequence[str] | None = None  # hosts a joinUrl may name when PUBLIC_URL is unset (None: any)
    max_body_bytes: int = MAX_BODY_BYTES
    secure_cookies: bool = True
    jurisdiction: str = "eu"  # JURISDICTION: the policy of an organisation that has not chosen one

    async def policy(self, org_id: str) -> OrgPolicy:
        """The organisation's analysis policy (`domain.analysis.OrgPolicy`)."""
        return OrgPolicy.from_dict(await self.accounts.store.organisation(org_id) or {}, self.jurisdiction)

    async def resource(self, op: Operation, request: Request, principal: Principal) -> Resource:
        """What `op` acts on: the interview or candidate in the path (for its organisation and interviewers),
        else the caller's organisation. Nothing is read for a public route or an anonymous caller."""
        if op.action is A.PUBLIC or principal.kind == "anonymous":
            return ORG_LEVEL
        if op.resource == "interview":
            iid = request.path_params["interview_id"]
            org_id, interviewers = await self.service.interview_access(iid)
            return Resource(org_id, iid, interviewers)
        if op.resource == "candidate":
            doc = await self.service.get_candidate(request.path_params["candidate_id"])
            return Resource(doc["orgId"])
        if op.resource == "candidate_or_erased":
            # an erased candidate's record is gone: the handler answers with the erasure's receipt (404/410)
            try:
                doc = await self.service.get_candidate(request.path_params["candidate_id"])
            except NotFound:
                return Resource(principal.org_id)
            return Resource(doc["orgId"])
        if op.resource == "own_interview":  # a participant acting on their own interview
            return Resource(principal.org_id, principal.interview_id)
        return ORG_LEVEL


def _endpoint(api: Api, op: Operation, fn: Handler) -> Handler:
    """`fn` behind authentication, the policy and the audit trail; every failure becomes one logged JSON error."""

    @functools.wraps(fn)
    async def wrapper(request: Request) -> Response:
        request.state.principal = ANONYMOUS
        outcome = "ok"
        try:
            # the policy's read of the interview serves the handler's (once; adapters.read_scope)
            with read_scope.scope():
                principal = request.state.principal = await api.accounts.principal(
                    request.headers.get("authorization"))
                resource = await api.resource(op, request, principal)
                decision = authorize(principal, op.action, resource)
                if decision is not Decision.ALLOW:
                    outcome = "denied"
                    # the same error as for an id that does not exist (the id of the interview or candidate)
                    raise refusal(decision, op.resource, request.path_params.get(f"{op.resource}_id", ""))
                response = await fn(request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one logged JSON error response
            response = error_response(request, exc, log)
            if outcome == "ok":  # a refused credential is a denial; a failed login is a failure
                outcome = "denied" if response.status_code in (401, 403) and op.action is not A.PUBLIC \
                    else "failed"
            if op.name == "issue_token":
                api.metrics.error(error_kind(response.status_code))
        api.audit.request(request, request.state.principal, op.name, op.resource if op.resource != "org" else op.tag,
                          "/".join(request.path_params.values()), outcome,
                          {"status": response.status_code, **getattr(request.state, "audit_detail", {})})
        return response

    return wrapper


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


def _iso_seconds(t: float | None) -> str | None:
    return None if t is None else iso(datetime.fromtimestamp(t, tz=UTC))


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def link_host_trusted(host: str, patterns: Sequence[str]) -> bool:
    """Whether `host` is named by one of `patterns` (a host, or `*.domain`). The bare `*` names nobody: a link
    must never point wherever a request's Host header says."""
    host = host.lower()
    return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in patterns)


def request_id(request: Request) -> str:
    """The caller's `X-Request-Id` when it is a sane one, else a new id (receipts name it)."""
    given = request.headers.get("x-request-id", "").strip()
    return given if 0 < len(given) <= 100 and given.isprintable() else uuid.uuid4().hex


def keys_route(signer: ReceiptSigner) -> Route:
    """`GET /.well-known/interview-worker-keys`: the public keys receipts are signed with (JWK set, by `kid`)."""
    body = {"keys": [signer.jwk()]}

    async def keys(request: Request) -> Response:
        return JSONResponse(body, headers={"Cache-Control": "public, max-age=3600"})

    return Route("/.well-known/interview-worker-keys", keys, methods=["GET"], include_in_schema=False)


def api_routes(api: Api) -> list[BaseRoute]:
    """Every route of `OPERATIONS`, and /openapi.json."""
    handlers: dict[str, Handler] = {}
    service = api.service

    def endpoint(fn: Handler) -> Handler:
        handlers[fn.__name__] = fn
        return fn

    jobs = api.analysis or AnalysisJobs(service, MemoryAnalysisRecords())

    async def body_of(request: Request, required: bool = True, max_bytes: int | None = None) -> Any:
        return await read_json(request, max_bytes or api.max_body_bytes, required=required)

    def params(request: Request) -> dict[str, str]:
        return dict(request.query_params)

    def principal_of(request: Request) -> Principal:
        principal: Principal = request.state.principal  # set by _endpoint
        return principal

    def created_by(p: Principal) -> str:
        return f"{p.kind}:{p.subject}"

    # -- sign-in ------------------------------------------------------------------------------------------------

    def session_response(session: Any) -> Response:
        response = ApiJSONResponse({"accessToken": session.access_token, "tokenType": "Bearer",
                                    "expiresIn": session.expires_in})
        response.set_cookie(REFRESH_COOKIE, session.refresh_token, max_age=api.accounts.refresh_ttl_s,
                            path=REFRESH_PATH, secure=api.secure_cookies, httponly=True, samesite="strict")
        response.headers["Cache-Control"] = "no-store"
        return response

    def require_csrf_header(request: Request) -> None:
        if CSRF_HEADER not in request.headers:
            raise HttpError(403, "csrf", "send the X-Requested-With header with this request")

    @endpoint
    async def login(request: Request) -> Response:
        f = Fields(await body_of(request, max_bytes=MAX_TOKEN_REQUEST_BYTES), allowed=("email", "password"))
        email = f.text("email", max_len=254)
        password = f.data.get("password")
        if not isinstance(password, str) or not password or len(password) > 1024:
            f.error("password", "expected a string of 1 to 1024 characters")
        f.done()
        assert isinstance(password, str)
        request.state.audit_detail = {"email": email}
        session = await api.accounts.login(email, password, _client(request))
        request.state.principal = Principal.user(session.user.user_id, session.user.org_id, session.user.role)
        return session_response(session)

    @endpoint
    async def refresh(request: Request) -> Response:
        require_csrf_header(request)
        session = await api.accounts.refresh(request.cookies.get(REFRESH_COOKIE, ""))
        request.state.principal = Principal.user(session.user.user_id, session.user.org_id, session.user.role)
        return session_response(session)

    @endpoint
    async def logout(request: Request) -> Response:
        require_csrf_header(request)
        await api.accounts.logout(request.cookies.get(REFRESH_COOKIE, ""))
        response = ApiJSONResponse({"loggedOut": True})
        response.delete_cookie(REFRESH_COOKIE, path=REFRESH_PATH, secure=api.secure_cookies, httponly=True,
                               samesite="strict")
        return response

    @endpoint
    async def setup(request: Request) -> Response:
        f = Fields(await body_of(request, max_bytes=MAX_TOKEN_REQUEST_BYTES),
                   allowed=("token", "email", "name", "password"))
        f.done()
        d = f.data
        user = await api.accounts.setup_admin(d.get("token"), d.get("email"), d.get("name"), d.get("password"))
        request.state.principal = Principal.user(user.user_id, user.org_id, user.role)
        return ApiJSONResponse({"userId": user.user_id}, status_code=201, headers={"Cache-Control": "no-store"})

    @endpoint
    async def me(request: Request) -> Response:
        p = principal_of(request)
        user = await api.accounts.store.get_user(p.subject)
        if user is None:
            raise NotFound("user", p.subject)
        return ApiJSONResponse({"userId": user.user_id, "email": user.email, "name": user.name, "role": user.role,
                                "orgId": user.org_id})

    # -- users and API keys -------------------------------------------------------------------------------------

    @endpoint
    async def create_user(request: Request) -> Response:
        f = Fields(await body_of(request), allowed=("email", "role", "name", "password"))
        f.done()
        d = f.data
        user = await api.accounts.create_user(principal_of(request).org_id, d.get("email"), d.get("role"),
                                              d.get("name"), d.get("password"))
        return ApiJSONResponse({"userId": user.user_id}, status_code=201)

    @endpoint
    async def list_users(request: Request) -> Response:
        users = await api.accounts.store.list_users(principal_of(request).org_id)
        return ApiJSONResponse({"items": [{"userId": u.user_id, "email": u.email, "name": u.name, "role": u.role,
                                           "createdAt": _iso_seconds(u.created_at), "disabled": u.disabled}
                                          for u in users]})

    @endpoint
    async def disable_user(request: Request) -> Response:
        user_id = request.path_params["user_id"]
        await api.accounts.disable_user(principal_of(request).org_id, user_id)
        return ApiJSONResponse({"userId": user_id, "disabled": True})

    @endpoint
    async def create_api_key(request: Request) -> Response:
        f = Fields(await body_of(request), allowed=("name", "scopes"))
        f.done()
        p = principal_of(request)
        key, secret = await api.accounts.create_api_key(p.org_id, f.data.get("name"), f.data.get("scopes"),
                                                        created_by(p))
        return ApiJSONResponse({"keyId": key.key_id, "key": secret, "name": key.name, "scopes": key.scopes},
                               status_code=201, headers={"Cache-Control": "no-store"})

    @endpoint
    async def list_api_keys(request: Request) -> Response:
        keys = await api.accounts.store.list_api_keys(principal_of(request).org_id)
        return ApiJSONResponse({"items": [{"keyId": k.key_id, "name": k.name, "scopes": k.scopes,
                                           "createdAt": _iso_seconds(k.created_at),
                                           "lastUsedAt": _iso_seconds(k.last_used_at), "revoked": k.revoked}
                                          for k in keys]})

    @endpoint
    async def revoke_api_key(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        await api.accounts.revoke_api_key(principal_of(request).org_id, key_id)
        return ApiJSONResponse({"keyId": key_id, "revoked": True})

    @endpoint
    async def read_audit(request: Request) -> Response:
        f = Fields(params(request), allowed=("actor", "resource", "from", "to", "cursor", "limit"))
        start = f.time("from", required=False) if f.data.get("from") else None
        end = f.time("to", required=False) if f.data.get("to") else None
        limit = 50
        if f.data.get("limit"):
            try:
                limit = int(f.data["limit"])
                if not 1 <= limit <= 200:
                    raise ValueError
            except ValueError:
                f.error("limit", "expected an integer from 1 to 200")
        f.done()
        if api.audit.sink is None:
            raise Unavailable("the audit trail is not configured")
        try:
            items, cursor = await api.audit.sink.query(
                org_id=principal_of(request).org_id, actor=f.data.get("actor") or None,
                resource=f.data.get("resource") or None, start=start, end=end, cursor=f.data.get("cursor") or None,
                limit=limit)
        except ValueError as exc:  # a cursor this endpoint never returned (found by the schemathesis guard)
            raise ValidationError({"cursor": str(exc)}) from None
        return ApiJSONResponse({"items": items, "nextCursor": cursor})

    # -- interviews ---------------------------------------------------------------------------------------------

    @endpoint
    async def create_interview(request: Request) -> Response:
        p = principal_of(request)
        cmd = CreateInterview.parse(await body_of(request))
        await api.accounts.check_interviewers(p.org_id, cmd.interviewers)
        doc = await service.create_interview(cmd, created_by(p), org_id=p.org_id)
        return ApiJSONResponse(doc, status_code=201, headers={"Location": f"/api/interviews/{doc['interviewId']}"})

    @endpoint
    async def list_interviews(request: Request) -> Response:
        p = principal_of(request)
        query = InterviewQuery.parse(params(request))
        query = dataclasses.replace(query, org_id=p.org_id,
                                    interviewer=p.subject if p.kind == "user" and p.role == INTERVIEWER else None)
        return ApiJSONResponse(await service.list_interviews(query))

    @endpoint
    async def get_interview(request: Request) -> Response:
        return ApiJSONResponse(await service.get_interview(request.path_params["interview_id"]))

    def transition(verb: str) -> None:
        allowed = ("expectedVersion", "reason") if verb == "cancel" else ("expectedVersion",)

        async def move(request: Request) -> Response:
            f = Fields(await body_of(request, required=False), allowed=allowed)
            version = _expected_version(request, f)
            reason = f.text("reason", required=False, max_len=500, default="")
            f.done()
            iid = request.path_params["interview_id"]
            if verb == "start":
                doc = await service.start_interview(iid, version)
            elif verb == "complete":
                doc = await service.complete_interview(iid, version)
                await _request_analysis(jobs, iid)
            else:
                doc = await service.cancel_interview(iid, reason, version)
                # every join token of a cancelled interview ends, and with them the live sessions
                await api.signer.revocations.revoke(iid, None, api.signer.expiry_bound())
            return ApiJSONResponse(doc)

        move.__name__ = f"{verb}_interview"
        endpoint(move)

    for verb in ("start", "complete", "cancel"):
        transition(verb)

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
        iid = request.path_params["interview_id"]
        transcript = await service.get_transcript(iid)
        # consent given or withdrawn by a participant marks the transcript where it happened
        transcript["markers"] = await api.privacy.transcript_markers(iid) if api.privacy is not None else []
        return ApiJSONResponse(transcript)

    async def analysis_view(request: Request, iid: str, version: str = "confirmed") -> dict[str, Any]:
        return await jobs.view(iid, await service.get_analysis(iid), version,
                               await api.policy(principal_of(request).org_id))

    @endpoint
    async def get_analysis(request: Request) -> Response:
        f = Fields(params(request), allowed=("version",))
        version = f.choice("version", ("confirmed", "machine"), default="confirmed")
        f.done()
        return ApiJSONResponse(await analysis_view(request, request.path_params["interview_id"], version))

    @endpoint
    async def review_analysis(request: Request) -> Response:
        # the scorecard is checked by the same pydantic limits the OpenAPI document states (scores 0..5,
        # overall 0..100, the recommendations); its evidence and competencies then by the analysis itself
        body = await body_of(request)
        try:
            change = schema.ReviewRequest.model_validate(body, strict=True)
        except PydanticValidationError as exc:
            raise ValidationError({".".join(str(p) for p in e["loc"]) or "body": e["msg"]
                                   for e in exc.errors()}) from None
        if change.action == "edit" and change.scorecard is None:
            raise ValidationError({"scorecard": "an edit needs the scorecard"})
        if change.action == "reject" and change.scorecard is not None:
            raise ValidationError({"scorecard": "a rejection takes no scorecard"})
        iid = request.path_params["interview_id"]
        p = principal_of(request)
        review = await jobs.review(iid, change.action, change.scorecard.model_dump() if change.scorecard else None,
                                   (change.note or "").strip(), created_by(p))
        request.state.audit_detail = {"review": change.action, "reviewStatus": review["status"]}
        return ApiJSONResponse(await analysis_view(request, iid))

    @endpoint
    async def export_analysis(request: Request) -> Response:
        f = Fields(params(request), allowed=("from", "to", "format"))
        kind = f.choice("format", ("json", "csv"), default="json")
        f.done()
        query = InterviewQuery.parse({k: v for k, v in params(request).items() if k in ("from", "to")})
        p = principal_of(request)
        policy = await api.policy(p.org_id)
        interviews: list[dict[str, Any]] = []
        cursor = None
        while len(interviews) < EXPORT_MAX:
            page = await service.list_interviews(dataclasses.replace(
                query, org_id=p.org_id, status=COMPLETED, limit=200,
                after=InterviewQuery.parse({"cursor": cursor}).after if cursor else None))
            interviews += page["items"]
            cursor = page["nextCursor"]
            if not cursor:
                break
        rows = await jobs.export_rows(interviews[:EXPORT_MAX], policy)
        request.state.audit_detail = {"rows": len(rows), "format": kind}
        if kind == "csv":
            return Response(export_csv(rows), media_type="text/csv; charset=utf-8", headers={
                "Content-Disposition": 'attachment; filename="analysis-export.csv"', "Cache-Control": "no-store"})
        return ApiJSONResponse({"jurisdiction": policy.jurisdiction, "items": rows},
                               headers={"Cache-Control": "no-store"})

    # -- the organisation's settings (admin) and what a participant's page is told of them ---------------------

    async def organisation_body(org_id: str) -> dict[str, Any]:
        doc = await api.accounts.store.organisation(org_id) or {}
        policy = OrgPolicy.from_dict(doc, api.jurisdiction)
        return {"orgId": org_id, "name": str(doc.get("name", org_id)), **policy.to_dict(),
                "candidateNotice": policy.candidate_notice()}

    @endpoint
    async def get_organisation(request: Request) -> Response:
        return ApiJSONResponse(await organisation_body(principal_of(request).org_id))

    @endpoint
    async def update_organisation(request: Request) -> Response:
        changes = OrgPolicy.parse_update(await body_of(request))
        org_id = principal_of(request).org_id
        await api.accounts.store.update_organisation(org_id, changes, time.time())
        request.state.audit_detail = {"changed": sorted(changes)}
        log.info("organisation %s settings changed: %s", org_id, ", ".join(sorted(changes)))
        return ApiJSONResponse(await organisation_body(org_id))

    @endpoint
    async def join_notice(request: Request) -> Response:
        p = principal_of(request)
        await service.get_interview(p.interview_id, with_segments=False)  # 404 for an unknown interview
        policy = await api.policy(p.org_id)
        return ApiJSONResponse({"noticeVersion": NOTICE_VERSION, "jurisdiction": policy.jurisdiction,
                                "advisory": True, "tone": policy.tone,
                                "candidateNotice": policy.candidate_notice()}, headers={"Cache-Control": "no-store"})

    @endpoint
    async def run_analysis(request: Request) -> Response:
        f = Fields(await body_of(request, required=False), allowed=("skills",))
        skills = f.str_list("skills", max_items=100)
        f.done()
        iid = request.path_params["interview_id"]
        await jobs.request(iid, "on_demand", skills)
        return ApiJSONResponse(await analysis_view(request, iid, "machine"), status_code=202)

    @endpoint
    async def put_analysis(request: Request) -> Response:
        cmd = RecordAnalysis.parse(await body_of(request))
        iid = request.path_params["interview_id"]
        await service.record_analysis(iid, cmd)
        legacy = await service.get_analysis(iid)
        await jobs.record_manual(iid, legacy)
        # the answer is about what was recorded: complete, whatever a scorecard job is doing meanwhile
        view = await jobs.view(iid, legacy, policy=await api.policy(principal_of(request).org_id))
        return ApiJSONResponse({**view, "status": legacy["status"]})

    @endpoint
    async def get_structure(request: Request) -> Response:
        f = Fields(params(request), allowed=("tone",))
        policy = await api.policy(principal_of(request).org_id)  # the organisation's tone default (off in eu)
        tone = f.choice("tone", ("true", "false"), default="true" if policy.tone else "false")
        if policy.tone_enabled is False:  # the organisation turned it off: no request turns it back on
            tone = "false"
        f.done()
        iid = request.path_params["interview_id"]
        interview = await service.get_interview(iid, with_segments=False)
        segments = (await service.get_transcript(iid))["segments"]
        return ApiJSONResponse(await asyncio.to_thread(interview_structure, interview, segments, tone=tone == "true"))

    # -- join tokens --------------------------------------------------------------------------------------------

    async def mint(request: Request, role: str, name: str, participant_id: str | None = None) -> Response:
        p = principal_of(request)
        retry = await api.limits.hit("token_mint", f"{p.kind}:{p.subject}")
        if retry is not None:
            raise HttpError(429, "too_many_requests", "too many join tokens minted; retry later",
                            {"Retry-After": str(int(retry))})
        interview_id = request.path_params["interview_id"]
        status = (await service.get_interview(interview_id, with_segments=False))["status"]
        if status in (COMPLETED, CANCELLED):
            raise Conflict(f"interview {interview_id} is {status}", code="interview_closed")
        token, claims = api.signer.issue(interview_id, role, name, participant_id=participant_id, org_id=p.org_id)
        if api.public_url:
            base = api.public_url.rstrip("/")
        elif api.link_hosts is None or link_host_trusted(request.url.hostname or "", api.link_hosts):
            base = str(request.base_url).rstrip("/")
        else:  # never a link to wherever the Host header points
            log.warning("joinUrl left relative: host %r is not in ALLOWED_HOSTS by name (set PUBLIC_URL)",
                        (request.url.hostname or "")[:100])
            base = ""
        page = "candidate" if claims.role == "candidate" else "interviewer"
        expires = datetime.fromtimestamp(claims.expires_at, tz=UTC)
        request.state.audit_detail = {"participantId": claims.participant_id, "role": claims.role,
                                      "tokenId": claims.token_id}
        log.info("join token issued: interview=%s participant=%s role=%s", interview_id, claims.participant_id,
                 claims.role)
        return ApiJSONResponse({"token": token, "joinUrl": f"{base}/{page}?token={token}", "expiresAt": expires,
                                "participantId": claims.participant_id, "role": claims.role, "name": claims.name},
                               status_code=201, headers={"Cache-Control": "no-store"})

    @endpoint
    async def issue_token(request: Request) -> Response:
        data = await body_of(request, max_bytes=MAX_TOKEN_REQUEST_BYTES)
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
        return await mint(request, role, name)

    @endpoint
    async def join_interview(request: Request) -> Response:
        p = principal_of(request)
        user = await api.accounts.store.get_user(p.subject)
        if user is None or user.disabled:
            raise HttpError(401, "invalid_token", "the account is disabled", {"WWW-Authenticate": "Bearer"})
        # One participant id per user and interview: joining again resumes the same stream.
        return await mint(request, "interviewer", user.name, participant_id="u_" + user.user_id[:60])

    @endpoint
    async def revoke_token(request: Request) -> Response:
        iid, token_id = request.path_params["interview_id"], request.path_params["token_id"]
        if not 1 <= len(token_id) <= 64:
            raise NotFound("token", token_id)
        await api.signer.revocations.revoke(iid, token_id, api.signer.expiry_bound())
        log.info("join token %s of interview %s revoked", token_id, iid)
        return ApiJSONResponse({"interviewId": iid, "tokenId": token_id, "revoked": True})

    # -- candidates ---------------------------------------------------------------------------------------------

    @endpoint
    async def create_candidate(request: Request) -> Response:
        p = principal_of(request)
        doc = await service.create_candidate(CreateCandidate.parse(await body_of(request)), created_by(p),
                                             org_id=p.org_id)
        return ApiJSONResponse(doc, status_code=201, headers={"Location": f"/api/candidates/{doc['candidateId']}"})

    @endpoint
    async def list_candidates(request: Request) -> Response:
        query = dataclasses.replace(CandidateQuery.parse(params(request)), org_id=principal_of(request).org_id)
        return ApiJSONResponse(await service.list_candidates(query))

    @endpoint
    async def get_candidate(request: Request) -> Response:
        return ApiJSONResponse(await service.get_candidate(request.path_params["candidate_id"]))

    @endpoint
    async def update_candidate(request: Request) -> Response:
        cmd = UpdateCandidate.parse(await body_of(request))
        return ApiJSONResponse(await service.update_candidate(request.path_params["candidate_id"], cmd))

    # -- privacy (hr/admin erase and export; participants consent by join token) ---------------------------------

    def by(p: Principal) -> str:
        return f"{p.kind}:{p.subject}"

    @endpoint
    async def erase_candidate(request: Request) -> Response:
        assert api.privacy is not None
        f = Fields(params(request), allowed=("reason",))
        reason = f.text("reason", max_len=500)
        f.done()
        try:
            signed = await api.privacy.erase(request.path_params["candidate_id"], reason=reason,
                                             by=by(principal_of(request)), request_id=request_id(request))
        except Erased as exc:
            raise HttpError(404, "already_erased", exc.message, receiptId=exc.receipt_id) from None
        return ApiJSONResponse(signed)

    @endpoint
    async def export_candidate(request: Request) -> Response:
        assert api.privacy is not None
        candidate_id = request.path_params["candidate_id"]
        try:
            export = await api.privacy.export(candidate_id, by=by(principal_of(request)),
                                              request_id=request_id(request))
        except Erased as exc:
            raise HttpError(410, "erased", exc.message, receiptId=exc.receipt_id) from None
        receipt = json.dumps(export.receipt, ensure_ascii=True, separators=(",", ":"), default=_json_default)
        return Response(export.archive, media_type="application/zip", headers={
            "Interview-Worker-Receipt": receipt,
            "Content-Disposition": f'attachment; filename="candidate-{candidate_id}.zip"'})

    @endpoint
    async def give_consent(request: Request) -> Response:
        assert api.privacy is not None
        p = principal_of(request)
        f = Fields(await read_json(request, MAX_TOKEN_REQUEST_BYTES), allowed=("noticeVersion", "accepted"))
        version = f.text("noticeVersion", max_len=40)
        if f.data.get("accepted") is not True and not f.invalid:
            f.error("accepted", "must be true (to refuse, do not join)")
        f.done()
        status = (await service.get_interview(p.interview_id, with_segments=False))["status"]
        if status in (COMPLETED, CANCELLED):
            raise Conflict(f"interview {p.interview_id} is {status}", code="interview_closed")
        at = api.privacy.clock()
        after = await service.last_segment_seq(p.interview_id, p.subject)  # nothing of theirs is processed now
        await api.privacy.record_consent(p.interview_id, p.subject, p.role, participant_name(request),
                                         accepted=True, notice_version=version, address=_client(request), at=at,
                                         after_seq=after)
        if api.on_consent is not None:  # recorded first: only then is their audio processed
            await api.on_consent(p.interview_id, p.subject, True, version, at)
        log.info("consent given: interview=%s participant=%s notice=%s", p.interview_id, p.subject, version)
        return Response(status_code=204)

    @endpoint
    async def withdraw_consent(request: Request) -> Response:
        assert api.privacy is not None
        p = principal_of(request)
        await service.get_interview(p.interview_id, with_segments=False)  # 404 for an unknown interview
        at = api.privacy.clock()
        # processing stops first, at once; the record then marks the transcript after their last final
        after = await api.on_consent(p.interview_id, p.subject, False, "", at) if api.on_consent else None
        if after is None:
            after = await service.last_segment_seq(p.interview_id, p.subject)
        await api.privacy.record_consent(p.interview_id, p.subject, p.role, participant_name(request),
                                         accepted=False, notice_version="", address=_client(request), at=at,
                                         after_seq=after)
        log.info("consent withdrawn: interview=%s participant=%s", p.interview_id, p.subject)
        return Response(status_code=204)

    def participant_name(request: Request) -> str:
        """The name in the caller's join token (the consent record keeps it, encrypted)."""
        try:
            return api.signer.verify(bearer_token(request.headers.get("authorization")), allow_expired=True).name
        except InvalidToken:
            return ""

    spec = openapi_document(OPERATIONS)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    left_out = set() if api.privacy is not None else {op for op in OPERATIONS if op.tag == "privacy"}
    return [*(Route(op.path, _endpoint(api, op, handlers[op.name]), methods=[op.method])
              for op in OPERATIONS if op not in left_out),
            Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)]


EXPORT_MAX = 10_000  # interviews in one export; narrow from/to for more
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def export_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The export as CSV: one row per interview, one column per competency (`competency:<name>`)."""
    names = sorted({name for r in rows for name in r["competencies"]})
    fixed = ["interviewId", "candidateId", "jobId", "scheduledAt", "completedAt", "analysisStatus", "reviewStatus",
             "version", "final", "advisory", "overall", "recommendation"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*fixed, *(f"competency:{n}" for n in names)])
    for r in rows:
        cells = [iso(r[k]) if isinstance(r[k], datetime) else r[k] for k in fixed]
        cells += [r["competencies"].get(n) for n in names]
        # a cell starting like a formula is quoted with ' so a spreadsheet shows it as text (CSV injection; OWASP
        # lists tab and carriage return beside = + - @)
        writer.writerow(["" if c is None else ("'" + c if isinstance(c, str) and c[:1] in _FORMULA_START else c)
                         for c in cells])
    return out.getvalue()


async def _request_analysis(jobs: AnalysisJobs, interview_id: str) -> None:
    """Start the analysis of an interview that just completed. Its failure is logged, never the completion's."""
    try:
        await jobs.request(interview_id, "completed")
    except Exception:  # noqa: BLE001 - the interview is completed either way; POST .../analysis/run retries
        log.exception("analysis of interview %s could not be requested", interview_id)
