"""What every HTTP route of the service shares: one error type, its one JSON response, the body readers, and the
bounds on slow clients (`HeaderTimeoutH11` for request heads, `BodyTimeout` for bodies).

Every refusal, from /api, the token route, WHIP or a page, is the JSON `{"error": {"code", "message", ...}}` with
a stable `code` (422 adds `fields`, naming each bad field). Routes raise `HttpError` for refusals of their own;
domain errors and Starlette's own `HTTPException` (unknown path, wrong method) are translated here, once
(`as_http_error`), and `error_response` logs each failure once, on the logger of the routes that refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

import h11
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from domain.access import DEFAULT_ORG, Principal
from domain.model import Conflict, DomainError, NotFound, Unavailable, ValidationError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB

# The code of a Starlette HTTPException (raised by the router, which knows only the status).
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "body_timeout", 409: "conflict", 413: "body_too_large", 415: "unsupported_media_type",
               422: "validation_error", 429: "too_many_requests", 503: "unavailable"}

# The `errors_total{kind}` label of a refusal, by status (adapters.metrics).
_ERROR_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "bad_request",
                413: "too_large", 415: "bad_request", 422: "bad_request", 429: "rate_limited", 500: "internal", 503: "unavailable"}


class HttpError(Exception):
    """A refused request: its status, a stable machine-readable `code`, a message the caller may see, headers to
    send, and `extra` members of the error object (`fields` of a 422)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def to_response(self) -> JSONResponse:
        return JSONResponse({"error": {"code": self.code, "message": self.message, **self.extra}},
                            status_code=self.status, headers=self.headers)


def error_kind(status: int) -> str:
    """The `errors_total` kind a refusal with this status is counted under."""
    return _ERROR_KINDS.get(status, "bad_request")


def as_http_error(exc: Exception) -> HttpError:
    """The HTTP form of any failure; an exception this edge does not know is a 500 that tells nothing."""
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, ValidationError):
        return HttpError(422, exc.code, "invalid request", fields=exc.fields)
    if isinstance(exc, NotFound):
        return HttpError(404, exc.code, exc.message)
    if isinstance(exc, Conflict):
        return HttpError(409, exc.code, exc.message)
    if isinstance(exc, DomainError):
        return HttpError(400, exc.code, exc.message)
    if isinstance(exc, Unavailable):
        return HttpError(503, exc.code, "storage unavailable, retry later", {"Retry-After": "1"})
    if isinstance(exc, HTTPException):
        return HttpError(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail),
                         dict(exc.headers or {}))
    return HttpError(500, "internal_error", "internal error")


def error_response(request: Request, exc: Exception, log: logging.Logger) -> JSONResponse:
    """`exc` as its JSON error response, logged once on `log`: what was refused, and why in our own words
    (a 422's log line names the bad fields, its response says "invalid request" and lists them)."""
    err = as_http_error(exc)
    where = f"{request.method} {request.url.path}"
    detail = exc.message if isinstance(exc, DomainError | Unavailable) else err.message
    if err.code == "internal_error":
        log.exception("%s -> 500", where, exc_info=exc)
    elif isinstance(exc, Unavailable):
        log.warning("%s -> %d %s: %s", where, err.status, err.code, detail)
    else:
        log.info("%s -> %d %s: %s", where, err.status, err.code, detail)
    return err.to_response()


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11) with a bound on each request's line and headers: they must be complete
    `header_timeout_s` after the connection opened, or, on a kept-alive connection, after the next request's
    first byte (uvicorn's `timeout_keep_alive` bounds the idle wait before it). Otherwise the connection closes:
    with a 408 `header_timeout` if part of a request came, silently if nothing did (a browser's preconnected
    socket). uvicorn has no such timeout (only keep-alive, between requests, cancelled by any byte), so a client
    trickling or stalling its headers held a connection for ever. Bodies the app reads are bounded by
    `BodyTimeout`; the rest of a body the app answered without reading (e.g. after a 413) gets the same
    `header_timeout_s`, as nothing else would end it.

    Chosen with `uvicorn.Config(http=header_timeout_protocol(s))`: uvicorn builds one per connection."""

    header_timeout_s: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting_for_client(self) -> bool:
        """A request head is due (h11's client state IDLE), or the rest of a body nobody will read."""
        their, ours = self.conn.their_state, self.conn.our_state
        return their is h11.IDLE or (their is h11.SEND_BODY and ours is h11.DONE)

    def _watch(self) -> None:
        """Armed while waiting for the client and uvicorn's keep-alive timer is not running; disarmed once the
        head is parsed. More bytes do not reset it: the bound is on the whole head."""
        if not self._waiting_for_client() or self.transport.is_closing():
            self._disarm()
        elif self.header_timer is None and self.timeout_keep_alive_task is None:
            self.header_timer = self.loop.call_later(self.header_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _timed_out(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or not self._waiting_for_client():
            return
        received = len(self.conn.trailing_data[0])
        if self.conn.their_state is not h11.IDLE or not received:
            self.transport.close()  # nothing came, or the answer was already sent
            return
        who = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.info("%s -> 408 header_timeout: %d bytes of request line and headers in %g s", who, received,
                 self.header_timeout_s)
        body = json.dumps({"error": {"code": "header_timeout", "message": "the request line and headers did not "
                                     f"arrive within {self.header_timeout_s:g} s"}}).encode()
        try:
            head = self.conn.send(h11.Response(status_code=408, reason=b"Request Timeout", headers=[
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")]))
            self.transport.write((head or b"") + body)
        except h11.LocalProtocolError:  # h11 would not answer in this state: closing alone is enough
            pass
        self.transport.close()


def header_timeout_protocol(timeout_s: float) -> type[HeaderTimeoutH11]:
    """`HeaderTimeoutH11` with its timeout set, for `uvicorn.Config(http=...)`."""
    if timeout_s <= 0:
        raise ValueError(f"header timeout must be > 0 s, not {timeout_s}")
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout_s": float(timeout_s)})


class BodyTimeoutError(Exception):
    """The client did not send the whole request body within the body timeout (see `BodyTimeout`)."""


class BodyTimeout:
    """ASGI middleware: a request's body must have arrived `timeout_s` after its headers did, or `receive` raises
    `BodyTimeoutError` (which `read_body` turns into 408 and a closed connection). uvicorn does not bound bodies, so a
    client that sends half a body would otherwise hold a connection and a task for ever; headers are bounded by
    `HeaderTimeoutH11`."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # after the body, `receive` only waits for a disconnect: no bound
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(f"the request body did not arrive within {self.timeout_s:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)


async def read_body(request: Request, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refusing (413) more than `max_bytes` without reading past the limit; a client that
    disconnects mid-body is a 400 `client_disconnected`, one too slow to send it (`BodyTimeout`) a 408."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > max_bytes
        except ValueError:
            raise HttpError(400, "bad_content_length", "Content-Length is not a number") from None
        if too_big:
            raise HttpError(413, "body_too_large", f"body larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise HttpError(413, "body_too_large", f"body larger than {max_bytes} bytes")
            chunks.append(chunk)
    except BodyTimeoutError as exc:
        raise HttpError(408, "body_timeout", f"{exc} ({size} bytes came)", {"Connection": "close"}) from None
    except ClientDisconnect:
        # Nobody is left to read the answer; the refusal is only for the log (once, at info).
        raise HttpError(400, "client_disconnected", f"the client left after {size} bytes of the body") from None
    return b"".join(chunks)


async def read_json(request: Request, max_bytes: int = MAX_BODY_BYTES, *, required: bool = True) -> Any:
    """Parse a JSON body: 413 too big, 415 not JSON, 422 invalid JSON (or missing when `required`).
    An empty optional body is `{}`."""
    body = await read_body(request, max_bytes)
    if not body.strip():
        if required:
            raise ValidationError({"body": "a JSON body is required"})
        return {}
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise HttpError(415, "unsupported_media_type", "expected Content-Type: application/json")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ValidationError({"body": "invalid JSON: not UTF-8"}) from None
    except json.JSONDecodeError as exc:
        raise ValidationError({"body": f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"}) from None


# ---- the audit trail's call site -------------------------------------------------------------------------------


class AuditSink(Protocol):
    """The audit trail (adapters.audit.AuditLog): `record` is synchronous and never blocks; `query` pages."""

    def record(self, entry: Any) -> None: ...

    async def query(self, *, org_id: str, actor: str | None = None, resource: str | None = None,
                    start: datetime | None = None, end: datetime | None = None, cursor: str | None = None,
                    limit: int = 50) -> tuple[list[dict[str, Any]], str | None]: ...


class Audit:
    """Where every route records what it did: `request(...)` builds one entry (`entry_type`, the trail's
    `AuditEntry`) from the request and the principal and hands it to `sink`. Without a sink nothing is recorded."""

    def __init__(self, sink: AuditSink | None = None, entry_type: Callable[..., Any] | None = None) -> None:
        self.sink = sink
        self.entry_type = entry_type

    @property
    def enabled(self) -> bool:
        return self.sink is not None and self.entry_type is not None

    def request(self, request: Request, principal: Principal, action: str, resource_type: str, resource_id: str,
                outcome: str, detail: dict[str, Any] | None = None) -> None:
        """Records `principal` taking `action` on a resource with `outcome` (allowed | denied | failed | ok)."""
        if self.sink is None or self.entry_type is None:
            return
        client = request.client.host if request.client else ""
        # An anonymous caller belongs to no organisation: its refusals go to the default organisation's chain.
        self.sink.record(self.entry_type(
            actor_type=principal.kind, actor_id=principal.subject, role=principal.role,
            org_id=principal.org_id or DEFAULT_ORG,
            action=action, resource_type=resource_type, resource_id=resource_id, outcome=outcome, address=client,
            user_agent=request.headers.get("user-agent", "")[:300], at=datetime.now(UTC), detail=detail))
