"""The web app (/app) in headless Chromium against a loopback test double of the accounts backend.

The double speaks the HTTP contract the app is written against (login with an HttpOnly refresh cookie scoped to
/api/auth and rotated on every refresh, bearer access tokens, /api/me, interviews filtered by role, candidates,
users, API keys shown once, the audit log with cursors) in memory, and serves the real page routes
(`adapters.pages.page_routes`) and static files, so the pages, the router and the session code under test are the
shipped ones, over real HTTP in a real browser. Elements are found by role and label, the way a user finds them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.pages import page_routes
from adapters.tokens import TokenSigner
from testing.net import serve

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# `SCREENSHOTS=1` rewrites the README's picture of the dashboard from this walk (off by default: the tree stays clean)
SCREENSHOT = REPO / "docs" / "app-dashboard.png"
PASSWORD = "correct horse battery staple"
REFRESH_COOKIE = "iw_refresh"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


@dataclass
class User:
    userId: str
    email: str
    name: str
    role: str
    password: str
    createdAt: str = field(default_factory=lambda: _iso(_now()))
    disabled: bool = False

    def public(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("userId", "email", "name", "role", "createdAt", "disabled")}


@dataclass
class Backend:
    """The accounts backend's contract, in memory. Tests read and steer its state directly."""

    signer: TokenSigner = field(default_factory=lambda: TokenSigner(secrets.token_bytes(32)))
    access_ttl_s: int = 900
    users: dict[str, User] = field(default_factory=dict)
    access: dict[str, tuple[str, datetime]] = field(default_factory=dict)  # token -> user, expiry
    refresh: dict[str, str] = field(default_factory=dict)  # live refresh token -> user
    interviews: dict[str, dict[str, Any]] = field(default_factory=dict)
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    key_hashes: dict[str, str] = field(default_factory=dict)  # sha256(key) -> keyId; the key itself is never kept
    audit: list[dict[str, Any]] = field(default_factory=list)
    minted: list[dict[str, Any]] = field(default_factory=list)  # candidate and interviewer join tokens
    locked: dict[str, int] = field(default_factory=dict)  # email -> Retry-After seconds
    refresh_attempts: int = 0
    refreshes: int = 0  # successful
    refreshed: asyncio.Event = field(default_factory=asyncio.Event)  # set on each successful refresh

    def add_user(self, email: str, name: str, role: str, password: str = PASSWORD) -> User:
        user = User(f"u_{secrets.token_hex(4)}", email, name, role, password)
        self.users[user.userId] = user
        return user

    def add_candidate(self, name: str, email: str) -> dict[str, Any]:
        cid = f"c_{secrets.token_hex(4)}"
        self.candidates[cid] = {"candidateId": cid, "name": name, "email": email, "phone": "",
                                "resume": {"url": "", "parsed": False, "skills": [], "experience": None}}
        return self.candidates[cid]

    def add_interview(self, candidate_id: str, job_id: str, at: datetime, interviewers: list[str],
                      questions: list[dict[str, Any]] | None = None, status: str = "scheduled",
                      type_: str = "screening") -> dict[str, Any]:
        iid = f"iv_{secrets.token_hex(4)}"
        self.interviews[iid] = {
            "interviewId": iid, "candidateId": candidate_id, "jobId": job_id, "scheduledAt": _iso(at),
            "status": status, "type": type_, "format": "video", "interviewers": interviewers,
            "questions": [{"questionId": f"q{i}", "text": q["text"], "category": "", "order": i,
                           "expectedKeywords": [], "askedAt": None} for i, q in enumerate(questions or [])],
            "cancelReason": "", "startedAt": None, "completedAt": None, "cancelledAt": None,
        }
        return self.interviews[iid]

    def expire_access_tokens(self) -> None:
        """As if every access token had expired: the next call is refused, the refresh cookie still works."""
        self.access.clear()

    def end_sessions(self) -> None:
        """As if every session were revoked: access and refresh tokens both refused."""
        self.access.clear()
        self.refresh.clear()

    def record(self, request: Request, actor: User | None, action: str, resource: tuple[str, str] = ("", ""),
               outcome: str = "allowed") -> None:
        self.audit.append({
            "seq": len(self.audit) + 1, "at": _iso(_now()), "actorType": "user" if actor else "anonymous",
            "actorId": actor.userId if actor else "", "role": actor.role if actor else "", "action": action,
            "resourceType": resource[0], "resourceId": resource[1], "outcome": outcome,
            "address": request.client.host if request.client else "", "userAgent": request.headers.get("user-agent", ""),
        })

    # ---- the HTTP side --------------------------------------------------------------------------------------

    def _session(self, user: User) -> tuple[dict[str, Any], str]:
        token = secrets.token_urlsafe(24)
        self.access[token] = (user.userId, _now() + timedelta(seconds=self.access_ttl_s))
        refresh = secrets.token_urlsafe(24)
        self.refresh[refresh] = user.userId
        return {"accessToken": token, "tokenType": "Bearer", "expiresIn": self.access_ttl_s}, refresh

    @staticmethod
    def _with_cookie(body: dict[str, Any], refresh: str) -> Response:
        response = JSONResponse(body)
        response.set_cookie(REFRESH_COOKIE, refresh, path="/api/auth", httponly=True, samesite="strict")
        return response

    def _caller(self, request: Request, roles: tuple[str, ...] = ("admin", "hr", "interviewer")) -> User:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        held = self.access.get(token)
        if held is None or held[1] < _now():
            raise Refused(_error(401, "invalid_token", "the access token is invalid or has expired",
                                 {"WWW-Authenticate": 'Bearer error="invalid_token"'}))
        user = self.users[held[0]]
        if user.role not in roles:
            self.record(request, user, "denied", ("route", request.url.path), "denied")
            raise Refused(_error(403, "forbidden", f"the {user.role} role may not do this"))
        return user

    def _interview_for(self, user: User, iid: str) -> dict[str, Any]:
        interview = self.interviews.get(iid)
        if interview is None or (user.role == "interviewer" and user.userId not in interview["interviewers"]):
            raise Refused(_error(404, "not_found", "no such interview"))
        return interview

    async def login(self, request: Request) -> Response:
        body = await request.json()
        if body.get("email") in self.locked:
            return _error(429, "locked", "too many attempts", {"Retry-After": str(self.locked[body["email"]])})
        user = next((u for u in self.users.values() if u.email == body.get("email")), None)
        if user is None or user.disabled or user.password != body.get("password"):
            self.record(request, None, "login", ("user", body.get("email", "")), "denied")
            return _error(401, "invalid_credentials", "wrong email or password")
        self.record(request, user, "login", ("user", user.userId))
        return self._with_cookie(*self._session(user))

    async def refresh_route(self, request: Request) -> Response:
        self.refresh_attempts += 1
        if request.headers.get("x-requested-with") != "fetch":
            return _error(403, "csrf", "send X-Requested-With: fetch")
        user_id = self.refresh.pop(request.cookies.get(REFRESH_COOKIE, ""), None)  # rotated: one use each
        if user_id is None:
            return _error(401, "session_ended", "sign in again")
        self.refreshes += 1
        self.refreshed.set()
        return self._with_cookie(*self._session(self.users[user_id]))

    async def logout(self, request: Request) -> Response:
        self.refresh.pop(request.cookies.get(REFRESH_COOKIE, ""), None)
        response = Response(status_code=204)
        response.delete_cookie(REFRESH_COOKIE, path="/api/auth")
        return response

    async def me(self, request: Request) -> Response:
        user = self._caller(request)
        return JSONResponse({**{k: v for k, v in user.public().items() if k in ("userId", "email", "name", "role")},
                             "orgId": "org-default"})

    async def list_interviews(self, request: Request) -> Response:
        user = self._caller(request)
        q = request.query_params
        items = [i for i in self.interviews.values()
                 if (user.role != "interviewer" or user.userId in i["interviewers"])
                 and (not q.get("status") or i["status"] == q["status"])
                 and (not q.get("from") or i["scheduledAt"] >= _iso(datetime.fromisoformat(q["from"])))
                 and (not q.get("to") or i["scheduledAt"] < _iso(datetime.fromisoformat(q["to"])))]
        return JSONResponse({"items": sorted(items, key=lambda i: i["scheduledAt"]), "nextCursor": None})

    async def create_interview(self, request: Request) -> Response:
        user = self._caller(request, ("admin", "hr"))
        body = await request.json()
        at = datetime.fromisoformat(body["scheduledAt"])
        if at.tzinfo is None:
            return _error(422, "invalid", "scheduledAt needs a time zone")
        if body["candidateId"] not in self.candidates:
            return _error(422, "invalid", "unknown candidate")
        interview = self.add_interview(body["candidateId"], body["jobId"], at, body.get("interviewers") or [],
                                       body.get("questions"), type_=body.get("type", "screening"))
        interview["requestedScheduledAt"] = body["scheduledAt"]  # what the browser sent, for the test to read
        self.record(request, user, "interview.create", ("interview", interview["interviewId"]))
        return JSONResponse(interview, status_code=201)

    async def get_interview(self, request: Request) -> Response:
        user = self._caller(request)
        interview = self._interview_for(user, request.path_params["iid"])
        self.record(request, user, "interview.read", ("interview", interview["interviewId"]))
        return JSONResponse(interview)

    async def cancel(self, request: Request) -> Response:
        user = self._caller(request, ("admin", "hr"))
        interview = self._interview_for(user, request.path_params["iid"])
        interview.update(status="cancelled", cancelReason=(await request.json()).get("reason", ""),
                         cancelledAt=_iso(_now()))
        self.record(request, user, "interview.cancel", ("interview", interview["interviewId"]))
        return JSONResponse(interview)

    def _join_link(self, request: Request, interview: dict[str, Any], role: str, name: str) -> dict[str, Any]:
        token, claims = self.signer.issue(interview["interviewId"], role, name)
        page = "candidate" if role == "candidate" else "interviewer"
        link = {"token": token, "joinUrl": f"{str(request.base_url).rstrip('/')}/{page}?token={token}",
                "expiresAt": _iso(datetime.fromtimestamp(claims.expires_at, UTC)),
                "participantId": claims.participant_id, "role": role, "name": name}
        self.minted.append(link)
        return link

    async def tokens(self, request: Request) -> Response:
        user = self._caller(request, ("admin", "hr"))
        interview = self._interview_for(user, request.path_params["iid"])
        body = await request.json()
        link = self._join_link(request, interview, body["role"], body.get("name") or body["role"])
        self.record(request, user, "token.create", ("interview", interview["interviewId"]))
        return JSONResponse(link, status_code=201)

    async def join(self, request: Request) -> Response:
        user = self._caller(request)
        interview = self._interview_for(user, request.path_params["iid"])
        if user.userId not in interview["interviewers"]:
            return _error(403, "not_assigned", "only an assigned interviewer joins")
        link = self._join_link(request, interview, "interviewer", user.name)
        self.record(request, user, "interview.join", ("interview", interview["interviewId"]))
        return JSONResponse({k: link[k] for k in ("token", "joinUrl", "expiresAt")})

    async def candidates_route(self, request: Request) -> Response:
        user = self._caller(request, ("admin", "hr"))
        if request.method == "GET":
            return JSONResponse({"items": list(self.candidates.values()), "nextCursor": None})
        body = await request.json()
        candidate = self.add_candidate(body["name"], body["email"])
        self.record(request, user, "candidate.create", ("candidate", candidate["candidateId"]))
        return JSONResponse(candidate, status_code=201)

    async def users_route(self, request: Request) -> Response:
        if request.method == "GET":
            self._caller(request, ("admin", "hr"))  # hr reads the list to pick interviewers
            return JSONResponse({"items": [u.public() for u in self.users.values()]})
        admin = self._caller(request, ("admin",))
        body = await request.json()
        if any(u.email == body["email"] for u in self.users.values()):
            return _error(409, "duplicate", "a user with this email exists")
        user = self.add_user(body["email"], body["name"], body["role"], body["password"])
        self.record(request, admin, "user.create", ("user", user.userId))
        return JSONResponse({"userId": user.userId}, status_code=201)

    async def delete_user(self, request: Request) -> Response:
        admin = self._caller(request, ("admin",))
        self.users.pop(request.path_params["uid"], None)
        self.record(request, admin, "user.delete", ("user", request.path_params["uid"]))
        return Response(status_code=204)

    async def keys_route(self, request: Request) -> Response:
        admin = self._caller(request, ("admin",))
        if request.method == "GET":
            return JSONResponse({"items": list(self.keys.values())})
        body = await request.json()
        key_id, key = f"k_{secrets.token_hex(4)}", f"iwk_{secrets.token_urlsafe(24)}"
        self.keys[key_id] = {"keyId": key_id, "name": body["name"], "scopes": body["scopes"],
                             "createdAt": _iso(_now()), "lastUsedAt": None, "revoked": False}
        self.key_hashes[hashlib.sha256(key.encode()).hexdigest()] = key_id
        self.record(request, admin, "api_key.create", ("api_key", key_id))
        return JSONResponse({"keyId": key_id, "key": key}, status_code=201)

    async def delete_key(self, request: Request) -> Response:
        admin = self._caller(request, ("admin",))
        self.keys[request.path_params["kid"]]["revoked"] = True
        self.record(request, admin, "api_key.revoke", ("api_key", request.path_params["kid"]))
        return Response(status_code=204)

    async def audit_route(self, request: Request) -> Response:
        self._caller(request, ("admin",))
        q = request.query_params
        entries = [e for e in reversed(self.audit)
                   if (not q.get("actor") or e["actorId"] == q["actor"])
                   and (not q.get("resource") or q["resource"] in (e["resourceId"], e["resourceType"]))]
        start, limit = int(q.get("cursor") or 0), int(q.get("limit") or 50)
        page = entries[start:start + limit]
        return JSONResponse({"items": page, "nextCursor": str(start + limit) if start + limit < len(entries) else None})

    def app(self) -> Starlette:
        def guarded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
            async def run(request: Request) -> Response:
                try:
                    return await handler(request)  # type: ignore[no-any-return]
                except Refused as refused:
                    return refused.response
            return run

        api = [
            ("/api/auth/login", self.login, ["POST"]),
            ("/api/auth/refresh", self.refresh_route, ["POST"]),
            ("/api/auth/logout", self.logout, ["POST"]),
            ("/api/me", self.me, ["GET"]),
            ("/api/interviews", self.list_interviews, ["GET"]),
            ("/api/interviews", self.create_interview, ["POST"]),
            ("/api/interviews/{iid}", self.get_interview, ["GET"]),
            ("/api/interviews/{iid}/cancel", self.cancel, ["POST"]),
            ("/api/interviews/{iid}/tokens", self.tokens, ["POST"]),
            ("/api/interviews/{iid}/join", self.join, ["POST"]),
            ("/api/candidates", self.candidates_route, ["GET", "POST"]),
            ("/api/users", self.users_route, ["GET", "POST"]),
            ("/api/users/{uid}", self.delete_user, ["DELETE"]),
            ("/api/api-keys", self.keys_route, ["GET", "POST"]),
            ("/api/api-keys/{kid}", self.delete_key, ["DELETE"]),
            ("/api/audit", self.audit_route, ["GET"]),
        ]
        return Starlette(routes=[*(Route(path, guarded(handler), methods=methods) for path, handler, methods in api),
                                 *page_routes(self.signer.verify)])


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (see .ci/run)")
    return CHROMIUM


@dataclass
class Site:
    url: str
    backend: Backend
    browser: Browser
    errors: list[str]

    async def user(self, **options: Any) -> tuple[BrowserContext, Page]:
        """A fresh browser context (its own cookies), as a user on their own machine."""
        context = await self.browser.new_context(**{
            "viewport": {"width": 1280, "height": 800}, "color_scheme": "light", "locale": "en-GB",
            "timezone_id": "Europe/Berlin", **options})
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=self.url)
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        return context, page


@asynccontextmanager
async def _site(chromium: str, backend: Backend) -> AsyncIterator[Site]:
    async with serve(backend.app()) as served, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield Site(served.url, backend, browser, [])
        finally:
            await browser.close()


async def _sign_in(page: Page, email: str, password: str = PASSWORD) -> None:
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def _refreshed(backend: Backend, count: int, timeout_s: float = 15) -> None:
    """Wait until the backend has answered `count` successful refreshes."""
    async with asyncio.timeout(timeout_s):
        while backend.refreshes < count:
            backend.refreshed.clear()
            await backend.refreshed.wait()


async def test_admin_hr_and_interviewer_walk(chromium: str) -> None:
    backend = Backend()
    admin = backend.add_user("ada@example.com", "Ada Admin", "admin")
    # Someone else's interviews, so the dashboards have days and statuses to show and the interviewer has
    # something not to see.
    other = backend.add_user("olga@example.com", "Olga Other", "interviewer")
    base = _now().replace(hour=9, minute=0, second=0, microsecond=0) + timedelta(days=1)
    for n, (name, status, hours) in enumerate([("Robin Reyes", "scheduled", 0), ("Sam Singh", "scheduled", 26),
                                               ("Kim Park", "in_progress", -22), ("Lee Chan", "completed", -47),
                                               ("Ana Silva", "cancelled", 50)]):
        c = backend.add_candidate(name, f"cand{n}@example.com")
        backend.add_interview(c["candidateId"], ["backend-dev", "ios-dev", "data-eng"][n % 3],
                              base + timedelta(hours=hours), [other.userId], status=status,
                              type_=["screening", "technical", "behavioral"][n % 3])
    for n in range(60):  # enough history for more than one page of the audit log
        backend.audit.append({"seq": len(backend.audit) + 1, "at": _iso(_now() - timedelta(days=2, minutes=n)),
                              "actorType": "api_key", "actorId": "k_legacy", "role": "admin",
                              "action": "interview.read", "resourceType": "interview", "resourceId": f"iv_old{n}",
                              "outcome": "allowed", "address": "10.0.0.7", "userAgent": "curl/8"})

    async with _site(chromium, backend) as site:
        # ---- the admin adds an HR user and an interviewer, creates an API key and reads the audit log
        ctx, page = await site.user()
        await page.goto(f"{site.url}/app")
        await expect(page).to_have_url(re.compile(r"/app/login\?next="))
        await _sign_in(page, admin.email)
        await expect(page.get_by_role("heading", name="Interviews", level=1)).to_be_visible()
        await page.get_by_role("navigation", name="Main").get_by_role("link", name="Users").click()
        await expect(page.get_by_role("heading", name="Users", level=1)).to_be_focused()
        for name, email, role in [("Hana HR", "hana@example.com", "HR"), ("Ivo Interviewer", "ivo@example.com", "Interviewer")]:
            await page.get_by_label("Name", exact=True).fill(name)
            await page.get_by_label("Email", exact=True).fill(email)
            await page.get_by_label("Role").select_option(label=role)
            await page.get_by_label("Initial password").fill(PASSWORD)
            await page.get_by_role("button", name="Add user").click()
            await expect(page.get_by_role("table", name=re.compile("Users")).get_by_role("row", name=re.compile(name))).to_contain_text(email)
        by_email = {u.email: u for u in backend.users.values()}
        hana, ivo = by_email["hana@example.com"], by_email["ivo@example.com"]
        assert (hana.role, ivo.role) == ("hr", "interviewer")

        await page.get_by_role("link", name="API keys").click()
        await page.get_by_label("Key name").fill("ATS integration")
        await page.get_by_label("Scopes").fill("interviews:read, candidates:write")
        await page.get_by_role("button", name="Create key").click()
        await expect(page.get_by_role("alert").filter(has_text="shown only once")).to_be_visible()
        key = await page.get_by_role("textbox", name="New API key").input_value()
        assert hashlib.sha256(key.encode()).hexdigest() in backend.key_hashes
        assert list(backend.keys.values())[0]["scopes"] == ["interviews:read", "candidates:write"]
        await page.get_by_role("button", name="Copy key").click()
        await expect(page.get_by_role("status").filter(has_text="Key copied")).to_be_visible()
        assert await page.evaluate("navigator.clipboard.readText()") == key
        await expect(page.get_by_role("table", name=re.compile("API keys"))).to_contain_text("ATS integration")
        await page.get_by_role("button", name="I have stored it").click()
        await expect(page.get_by_role("textbox", name="New API key")).to_have_count(0)
        await page.reload()  # shown once: nothing on the page has the key any more
        await expect(page.get_by_role("table", name=re.compile("API keys"))).to_contain_text("ATS integration")
        assert key not in await page.content()

        await page.get_by_role("link", name="Audit log").click()
        log = page.get_by_role("table", name="Audit log, page 1")
        await expect(log.get_by_role("row", name=re.compile(admin.userId)).filter(has_text="user.create")).to_have_count(2)
        await expect(log.get_by_role("row").filter(has_text="api_key.create")).to_have_count(1)
        await page.get_by_role("button", name="Next page").click()
        await expect(page.get_by_role("table", name="Audit log, page 2")).to_contain_text("iv_old")
        await page.get_by_role("button", name="Previous page").click()
        await expect(page.get_by_role("table", name="Audit log, page 1")).to_contain_text("api_key.create")
        await page.get_by_label("Actor id").fill(admin.userId)
        await page.get_by_role("button", name="Apply filters").click()
        await expect(page).to_have_url(re.compile(rf"/app/audit\?actor={admin.userId}"))
        filtered = page.get_by_role("table", name="Audit log, page 1")
        await expect(filtered.get_by_role("row", name=re.compile("k_legacy"))).to_have_count(0)
        await expect(filtered).to_contain_text("login")
        await expect(page.get_by_role("button", name="Next page")).to_be_disabled()
        await ctx.close()

        # ---- HR schedules an interview with Ivo for a new candidate, in New York time, and copies the link
        ctx, page = await site.user()
        await page.goto(f"{site.url}/app/")
        await _sign_in(page, hana.email)
        await expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Users")).to_be_hidden()
        await page.get_by_role("link", name="Schedule an interview").click()
        await page.get_by_label("New candidate").check()
        await page.get_by_label("Candidate name").fill("Casey Candidate")
        await page.get_by_label("Candidate email").fill("casey@example.com")
        await page.get_by_label("Job id").fill("backend-dev")
        await page.get_by_label("Type").select_option("technical")
        await page.get_by_label("Date and time").fill("2030-03-05T14:30")
        await page.get_by_label("Time zone").select_option("America/New_York")
        await page.get_by_label("Ivo Interviewer (ivo@example.com)").check()
        await page.get_by_label("Question 1", exact=True).fill("Tell me about a system you designed.")
        await page.get_by_role("button", name="Add a question").click()
        await expect(page.get_by_label("Question 2", exact=True)).to_be_focused()
        await page.get_by_label("Question 2", exact=True).fill("How did you test it?")
        await page.get_by_role("button", name="Schedule interview").click()
        await expect(page.get_by_role("heading", name="Interview with Casey Candidate")).to_be_visible()
        interview = next(i for i in backend.interviews.values() if i["jobId"] == "backend-dev" and i["interviewers"] == [ivo.userId])
        assert interview["requestedScheduledAt"] == "2030-03-05T14:30:00-05:00"  # EST: New York's offset that day
        assert interview["scheduledAt"] == "2030-03-05T19:30:00.000Z"
        assert interview["type"] == "technical"
        assert [q["text"] for q in interview["questions"]] == ["Tell me about a system you designed.", "How did you test it?"]
        assert backend.candidates[interview["candidateId"]]["email"] == "casey@example.com"
        await expect(page.get_by_role("region", name="Details")).to_contain_text("Ivo Interviewer")

        await page.get_by_role("button", name="Copy candidate link").click()
        link = page.get_by_role("textbox", name="Candidate link")
        await expect(link).to_have_value(re.compile(r"/candidate\?token="))
        minted = backend.minted[-1]
        assert await link.input_value() == minted["joinUrl"]
        assert (minted["role"], minted["name"]) == ("candidate", "Casey Candidate")
        await expect(page.get_by_role("status").filter(has_text="Link copied")).to_be_visible()
        assert await page.evaluate("navigator.clipboard.readText()") == minted["joinUrl"]

        await page.get_by_role("navigation", name="Main").get_by_role("link", name="Interviews").click()
        await expect(page.get_by_role("row", name=re.compile("Casey Candidate"))).to_contain_text("Ivo Interviewer")
        await expect(page.get_by_role("status").filter(has_text="6 interviews")).to_be_visible()
        await page.get_by_label("Status").select_option("scheduled")
        await page.get_by_role("button", name="Apply filters").click()
        await expect(page.get_by_role("status").filter(has_text="3 interviews: 3 scheduled")).to_be_visible()
        await page.get_by_role("link", name="Clear").click()
        await expect(page.get_by_role("status").filter(has_text="6 interviews")).to_be_visible()
        await page.evaluate("document.getElementById('toasts').replaceChildren()")  # a clean picture
        await page.mouse.move(0, 0)
        if os.environ.get("SCREENSHOTS"):
            await page.screenshot(path=str(SCREENSHOT), full_page=True)

        # HR cancels another interview, with a reason; the dashboard shows it.
        robin = page.get_by_role("row", name=re.compile("Robin Reyes"))
        await robin.get_by_role("link", name=re.compile("Details")).click()
        await expect(page.get_by_role("button", name="Confirm cancellation")).to_be_hidden()  # until asked for
        await page.get_by_role("button", name="Cancel interview…").click()
        await expect(page.get_by_label("Reason for cancelling")).to_be_focused()
        await page.keyboard.type("The role was filled.")
        await page.get_by_role("button", name="Confirm cancellation").click()
        await expect(page.get_by_role("region", name="Details")).to_contain_text("The role was filled.")
        await expect(page.get_by_role("button", name="Cancel interview…")).to_have_count(0)
        assert [(i["status"], i["cancelReason"]) for i in backend.interviews.values()
                if backend.candidates[i["candidateId"]]["name"] == "Robin Reyes"] == [("cancelled", "The role was filled.")]
        await ctx.close()

        # ---- the interviewer sees only their interview and joins it with one click
        ctx, page = await site.user()
        await page.goto(f"{site.url}/app/")
        await _sign_in(page, ivo.email)
        await expect(page.get_by_role("status").filter(has_text="1 interview")).to_be_visible()
        rows = page.get_by_role("row").filter(has=page.get_by_role("button", name=re.compile("^Join")))
        await expect(rows).to_have_count(1)
        await expect(rows).to_contain_text("backend-dev")
        await expect(page.get_by_role("link", name="Schedule an interview")).to_have_count(0)
        await rows.get_by_role("button", name=re.compile("^Join")).click()
        await page.wait_for_url(re.compile(r"/interviewer\?token="))
        joined = backend.minted[-1]
        assert page.url == joined["joinUrl"]
        assert backend.signer.verify(joined["token"]).name == "Ivo Interviewer"
        await expect(page.locator("#who")).to_contain_text("Ivo Interviewer")  # the overlay read its own link
        # Another interviewer's interview is not theirs to open, even by address.
        theirs = next(i for i in backend.interviews.values() if other.userId in i["interviewers"])
        await page.goto(f"{site.url}/app/interviews/{theirs['interviewId']}")
        await expect(page.get_by_role("heading", name="Something went wrong")).to_be_visible()
        await expect(page.locator("#view")).to_contain_text("no such interview")
        await ctx.close()
        # The interviewer's pages never asked for what the role may not read (each refusal is audited).
        assert not [e for e in backend.audit if e["actorId"] == ivo.userId and e["outcome"] == "denied"]
        assert not site.errors, site.errors


async def test_wrong_password_says_so_and_stays_on_sign_in(chromium: str) -> None:
    backend = Backend()
    admin = backend.add_user("ada@example.com", "Ada Admin", "admin")
    async with _site(chromium, backend) as site:
        _, page = await site.user()
        await page.goto(f"{site.url}/app/login")
        email = page.get_by_label("Email")
        await expect(email).to_be_focused()
        await page.keyboard.press("Shift+Tab")  # the skip link comes first, and moves focus to the content
        await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("main")).to_be_focused()
        await _sign_in(page, admin.email, "not the password")
        await expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
        await expect(page.get_by_label("Password")).to_be_focused()
        await expect(page.get_by_label("Password")).to_have_value("")
        await expect(page).to_have_url(re.compile(r"/app/login(#view)?$"))
        backend.locked[admin.email] = 120
        await _sign_in(page, admin.email)
        await expect(page.get_by_role("alert")).to_have_text("Too many sign-in attempts. Try again in 2 minutes.")
        del backend.locked[admin.email]
        assert not backend.access
        # By keyboard alone: the form in order, Enter submits.
        await page.get_by_label("Email").focus()
        await page.keyboard.press("Control+A")
        await page.keyboard.type(admin.email)
        await page.keyboard.press("Tab")
        await expect(page.get_by_label("Password")).to_be_focused()
        await page.keyboard.type(PASSWORD)
        await page.keyboard.press("Enter")
        heading = page.get_by_role("heading", name="Interviews", level=1)
        await expect(heading).to_be_visible()
        await expect(heading).to_be_focused()  # screen readers hear the new page
        assert not site.errors, site.errors


async def test_refused_token_is_refreshed_once_then_back_to_sign_in(chromium: str) -> None:
    backend = Backend()
    admin = backend.add_user("ada@example.com", "Ada Admin", "admin")
    async with _site(chromium, backend) as site:
        _, page = await site.user()
        await page.goto(f"{site.url}/app/")
        await _sign_in(page, admin.email)
        await expect(page.get_by_role("heading", name="Interviews", level=1)).to_be_visible()

        # The access token lives in memory only; a reload signs in again through the HttpOnly cookie.
        assert await page.evaluate("localStorage.length + sessionStorage.length") == 0
        assert REFRESH_COOKIE not in await page.evaluate("document.cookie")
        attempts = backend.refresh_attempts
        await page.reload()
        await expect(page.get_by_role("heading", name="Interviews", level=1)).to_be_visible()
        assert backend.refresh_attempts == attempts + 1
        assert await page.evaluate("localStorage.length + sessionStorage.length") == 0

        # An expired access token: the call is refused, refreshed once and repeated, and the user sees nothing.
        backend.expire_access_tokens()
        attempts = backend.refresh_attempts
        await page.get_by_role("link", name="Users").click()
        await expect(page.get_by_role("table", name=re.compile("Users"))).to_contain_text(admin.email)
        assert backend.refresh_attempts == attempts + 1

        # A revoked session: one refresh attempt, then the sign-in page, which returns to where the user was.
        backend.end_sessions()
        attempts = backend.refresh_attempts
        await page.get_by_role("link", name="API keys").click()
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await expect(page).to_have_url(re.compile(r"/app/login\?next=%2Fapp%2Fapi-keys$"))
        await expect(page.get_by_role("alert").filter(has_text="Your session has ended")).to_be_visible()
        assert backend.refresh_attempts == attempts + 1
        await _sign_in(page, admin.email)
        await expect(page.get_by_role("heading", name="API keys", level=1)).to_be_visible()

        # Renewed before expiry: with a short-lived access token, the app refreshes on its own.
        backend.access_ttl_s = 2
        await page.get_by_role("button", name="Sign out").click()
        await _sign_in(page, admin.email)
        await expect(page.get_by_role("heading", name="Interviews", level=1)).to_be_visible()
        refreshed = backend.refreshes
        await _refreshed(backend, refreshed + 2)
        backend.access_ttl_s = 900
        await page.get_by_role("link", name="Audit log").click()
        await expect(page.get_by_role("table", name="Audit log, page 1")).to_contain_text("login")

        # Signing out revokes the cookie: a reload lands on the sign-in page.
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert not backend.refresh
        await page.goto(f"{site.url}/app/users")
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert not site.errors, site.errors
