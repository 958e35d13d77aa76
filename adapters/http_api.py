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
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapters import api_schema as schema
from adapters.api_schema import Operation, openapi_document
from adapters.crypto import ReceiptSigner
from adapters.http_edge import MAX_BODY_BYTES, HttpError, error_kind, error_response, read_json
from adapters.metrics import Metrics
from adapters.privacy import Erased, Privacy
from adapters.tokens import InvalidToken, JoinClaims, TokenSigner, bearer_token, validate_name, validate_role
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
    Operation("erase_candidate", "DELETE", "/api/candidates/{candidate_id}",
              "Erase everything about a candidate (crypto-shredding their data key); a signed receipt. Unknown or "
              "already erased: 404 (then with the earlier receipt's id)", schema.SignedReceipt,
              query=schema.ErasureParams, errors=(404, 409), tag="privacy"),
    Operation("export_candidate", "GET", "/api/candidates/{candidate_id}/export",
              "Everything held about a candidate as a zip (export.json + summary.html); the signed receipt is in "
              "the Interview-Worker-Receipt header", None, media_type="application/zip", errors=(404, 410),
              tag="privacy"),
    Operation("give_consent", "POST", "/api/consent",
              "The caller (by join token) consents to the processing of their audio under the notice shown",
              None, 204, body=schema.ConsentRequest, errors=(404, 409), tag="privacy", auth="joinToken"),
    Operation("withdraw_consent", "DELETE", "/api/consent",
              "The caller (by join token) withdraws consent: their audio stops being processed at once", None, 204,
              errors=(404,), tag="privacy", auth="joinToken"),
)
CONSENT_OPERATIONS = tuple(op for op in OPERATIONS if op.auth == "joinToken")


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


def request_id(request: Request) -> str:
    """The caller's `X-Request-Id` when it is a sane one, else a new id (receipts name it)."""
    given = request.headers.get("x-request-id", "").strip()
    return given if 0 < len(given) <= 100 and given.isprintable() else uuid.uuid4().hex


def api_routes(service: InterviewService, admin_key: str, *, max_body_bytes: int = MAX_BODY_BYTES,
               privacy: Privacy | None = None) -> list[BaseRoute]:
    """Every route of `OPERATIONS` but the token route (`token_route`) and the consent routes (`consent_routes`),
    and /openapi.json. Without `privacy` the erasure and export routes are left out."""
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

    # -- privacy ------------------------------------------------------------------------------------------------
    # Who may: hr/admin (today the admin key; `by` is the caller the receipt names).
    actor = "admin"

    @endpoint
    async def erase_candidate(request: Request) -> Response:
        assert privacy is not None
        f = Fields(params(request), allowed=("reason",))
        reason = f.text("reason", max_len=500)
        f.done()
        try:
            signed = await privacy.erase(request.path_params["candidate_id"], reason=reason, by=actor,
                                         request_id=request_id(request))
        except Erased as exc:
            raise HttpError(404, "already_erased", exc.message, receiptId=exc.receipt_id) from None
        return ApiJSONResponse(signed)

    @endpoint
    async def export_candidate(request: Request) -> Response:
        assert privacy is not None
        candidate_id = request.path_params["candidate_id"]
        try:
            export = await privacy.export(candidate_id, by=actor, request_id=request_id(request))
        except Erased as exc:
            raise HttpError(410, "erased", exc.message, receiptId=exc.receipt_id) from None
        receipt = json.dumps(export.receipt, ensure_ascii=True, separators=(",", ":"), default=_json_default)
        return Response(export.archive, media_type="application/zip", headers={
            "Interview-Worker-Receipt": receipt,
            "Content-Disposition": f'attachment; filename="candidate-{candidate_id}.zip"'})

    spec = openapi_document(OPERATIONS)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    left_out = {ISSUE_TOKEN, *CONSENT_OPERATIONS}
    if privacy is None:
        left_out.update(op for op in OPERATIONS if op.tag == "privacy")
    return [*(_route(op, handlers[op.name]) for op in OPERATIONS if op not in left_out),
            Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)]


def keys_route(signer: ReceiptSigner) -> Route:
    """`GET /.well-known/interview-worker-keys`: the public keys receipts are signed with (JWK set, by `kid`)."""
    body = {"keys": [signer.jwk()]}

    async def keys(request: Request) -> Response:
        return JSONResponse(body, headers={"Cache-Control": "public, max-age=3600"})

    return Route("/.well-known/interview-worker-keys", keys, methods=["GET"], include_in_schema=False)


ConsentChanged = Callable[[str, str, bool, str], Awaitable[None]]  # (interview, participant, given, notice version)


def consent_routes(signer: TokenSigner, service: InterviewService, privacy: Privacy, metrics: Metrics, *,
                   on_change: ConsentChanged | None = None,
                   max_body_bytes: int = MAX_TOKEN_REQUEST_BYTES) -> list[Route]:
    """`POST /api/consent` and `DELETE /api/consent`, by join token: the participant's consent to the processing of
    their audio is recorded (notice version, time, address) or withdrawn, then `on_change` (the live rooms) acts
    on it at once. The admin key is no participant: 401."""

    def claims_of(request: Request, *, allow_expired: bool = False) -> JoinClaims:
        try:
            return signer.verify(bearer_token(request.headers.get("authorization")), allow_expired=allow_expired)
        except InvalidToken as exc:
            raise HttpError(401, "invalid_token", exc.reason, {"WWW-Authenticate": "Bearer"}) from None

    def address(request: Request) -> str:
        return request.client.host if request.client else ""

    async def give_consent(request: Request) -> Response:
        claims = claims_of(request)
        f = Fields(await read_json(request, max_body_bytes), allowed=("noticeVersion", "accepted"))
        version = f.text("noticeVersion", max_len=40)
        if f.data.get("accepted") is not True and not f.invalid:
            f.error("accepted", "must be true (to refuse, do not join)")
        f.done()
        status = (await service.get_interview(claims.interview_id, with_segments=False))["status"]
        if status in (COMPLETED, CANCELLED):
            raise Conflict(f"interview {claims.interview_id} is {status}", code="interview_closed")
        await privacy.record_consent(claims.interview_id, claims.participant_id, claims.role, claims.name,
                                     accepted=True, notice_version=version, address=address(request))
        if on_change is not None:
            await on_change(claims.interview_id, claims.participant_id, True, version)
        log.info("consent given: interview=%s participant=%s notice=%s", claims.interview_id,
                 claims.participant_id, version)
        return Response(status_code=204)

    async def withdraw_consent(request: Request) -> Response:
        claims = claims_of(request, allow_expired=True)
        await service.get_interview(claims.interview_id, with_segments=False)  # 404 for an unknown interview
        await privacy.record_consent(claims.interview_id, claims.participant_id, claims.role, claims.name,
                                     accepted=False, notice_version="", address=address(request))
        if on_change is not None:
            await on_change(claims.interview_id, claims.participant_id, False, "")
        log.info("consent withdrawn: interview=%s participant=%s", claims.interview_id, claims.participant_id)
        return Response(status_code=204)

    handlers: dict[str, Handler] = {"give_consent": give_consent, "withdraw_consent": withdraw_consent}

    def counted(response: Response) -> None:
        metrics.error(error_kind(response.status_code))

    return [_route(op, _endpoint(handlers[op.name], lambda request: None, counted)) for op in CONSENT_OPERATIONS]


def token_route(signer: TokenSigner, service: InterviewService, admin_key: str, metrics: Metrics, *,
                public_url: str | None = None, max_body_bytes: int = MAX_TOKEN_REQUEST_BYTES) -> Route:
    """`POST /api/interviews/{id}/tokens` (admin key): issues a join token for one participant.

    Body `{"role": "candidate"|"interviewer"|"observer", "name": "..."}` (name defaults to the role).
    A join token in place of the admin key is a 403; refusals are counted in `errors_total`.
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
        base = (public_url or str(request.base_url)).rstrip("/")
        page = "candidate" if claims.role == "candidate" else "interviewer"
        expires = datetime.fromtimestamp(claims.expires_at, tz=UTC).isoformat().replace("+00:00", "Z")
        log.info("join token issued: interview=%s participant=%s role=%s", interview_id, claims.participant_id,
                 claims.role)
        return ApiJSONResponse({"token": token, "joinUrl": f"{base}/{page}?token={token}", "expiresAt": expires,
                                "participantId": claims.participant_id, "role": claims.role, "name": claims.name},
                               status_code=201)

    return _route(ISSUE_TOKEN, _endpoint(issue_token, authorize,
                                         lambda response: metrics.error(error_kind(response.status_code))))
