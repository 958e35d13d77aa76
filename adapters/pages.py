"""The browser pages and the health endpoints of the service.

Pages: `/` (the index), `/candidate` and `/interviewer` (the join link opens one of them with `?token=`), `/app`
and `/app/*` (the web app for HR, interviewers and admins: one page whose router reads the path), and their assets
under `/static` (never the pages themselves: `StaticAssets`). Nothing on a page comes from anywhere else, and since the join token is in the page's URL
it is never sent on as a referrer (`PAGE_HEADERS`). A link whose token is valid but for the other page's role is
refused (403 `wrong_page`); an invalid or expired token is not: the page itself tells the user so.

Health: `/healthz` (the process answers), `/readyz` (200 or 503 with the checks of the readiness callable, as
booleans: these bodies are public), `/metrics` (Prometheus text; behind a bearer token when `metrics_token` is set).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.http_edge import HttpError
from adapters.metrics import Metrics
from adapters.tokens import InvalidToken, JoinClaims

STATIC_DIR = Path(__file__).resolve().parent / "static"

PAGE_HEADERS = {
    # Nothing is loaded from anywhere else; the join token is in the URL, so never send it as a referrer.
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "media-src 'self' blob:; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "microphone=(self), camera=(self)",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

# Assets under /static carry the same policy; they may be cached, but revalidated (ETag) so a new version shows.
STATIC_HEADERS = {**PAGE_HEADERS, "Cache-Control": "no-cache"}


class StaticAssets(StaticFiles):
    """The pages' assets. HTML is served only by the page routes, which add the role check and the page headers:
    a copy under /static would bypass both (and `frame-ancestors`), so it is not found here."""

    def file_response(self, full_path: Any, stat_result: os.stat_result, scope: Any,
                      status_code: int = 200) -> Response:
        if str(full_path).lower().endswith((".html", ".htm")):
            raise HTTPException(404, "pages are served at /, /candidate and /interviewer")
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(STATIC_HEADERS)
        return response


# The claims of a join token this service issued; raises InvalidToken otherwise.
VerifyToken = Callable[[str], JoinClaims]
# Whether the service can take traffic now, and the checks that say so (booleans: the body is public).
Readiness = Callable[[], Awaitable[tuple[bool, dict[str, bool]]]]


HSTS = "max-age=31536000"


class HstsMiddleware:
    """Adds Strict-Transport-Security to every response (installed when the server itself serves HTTPS)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("Strict-Transport-Security", HSTS)
            await send(message)

        await self.app(scope, receive, send_with_hsts)


def page_routes(verify: VerifyToken, static_dir: Path = STATIC_DIR) -> list[BaseRoute]:
    def page(name: str, roles: tuple[str, ...]) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            path = static_dir / name
            if not path.is_file():
                return HttpError(404, "not_found", f"{name} is not installed").to_response()
            token = request.query_params.get("token")
            if token and roles:
                try:
                    claims: JoinClaims | None = verify(token)
                except InvalidToken:
                    claims = None  # the page itself explains an invalid or expired link
                if claims is not None and claims.role not in roles:
                    other = "candidate" if claims.role == "candidate" else "interviewer"
                    return HttpError(403, "wrong_page", f"this link is for the {other} page").to_response()
            return FileResponse(path, headers=PAGE_HEADERS)

        return serve

    return [
        Route("/", page("index.html", ())),
        Route("/candidate", page("candidate.html", ("candidate",))),
        Route("/interviewer", page("interviewer.html", ("interviewer", "observer"))),
        Route("/app", page("app.html", ())),
        Route("/app/{path:path}", page("app.html", ())),
        Mount("/static", app=StaticAssets(directory=static_dir, check_dir=False), name="static"),
    ]


def health_routes(readiness: Readiness, metrics: Metrics, *, metrics_token: str | None = None) -> list[BaseRoute]:
    """Liveness, readiness and `/metrics`; with `metrics_token`, `/metrics` needs `Authorization: Bearer <it>`."""
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ok, checks = await readiness()
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks},
                            status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        if metrics_token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), metrics_token.encode()):
                return HttpError(401, "unauthorized", "/metrics needs the METRICS_TOKEN bearer token",
                                 {"WWW-Authenticate": 'Bearer realm="metrics"'}).to_response()
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
    ]
