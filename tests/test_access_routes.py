"""Every route of the real application (enumerated from its router) against a matrix of principals: who gets in,
who is refused (401 nobody / 403 not allowed) and who is told it does not exist (404). A route the matrix does not
list fails, and so does a matrix row for a route that no longer exists.

Served by uvicorn on loopback (testing.live_server) over nx-27017. Requests carry no body: a caller the policy lets
through gets the route's own answer (200, 201, 409, 415, 422, 503...), which counts as "in" (`.`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount, Route

from adapters.http_api import OPERATIONS
from testing.live_server import LiveServer, live_server, test_settings

PASSWORD = "correct horse battery staple"
PRINCIPALS = ("anonymous", "candidate", "assigned", "unassigned", "hr", "admin", "other_admin", "key_with",
              "key_without")
PUBLIC = "........."

# (method, path template) -> expected outcome per principal, in PRINCIPALS order:
# "." in (not refused by the policy), "1" 401, "3" 403, "4" 404.
MATRIX: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("GET", "/candidate"): PUBLIC,
    ("GET", "/interviewer"): PUBLIC,
    ("GET", "/app"): PUBLIC,  # the web app's page; it signs in itself
    ("GET", "/app/{path:path}"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("POST", "/api/auth/login"): PUBLIC,
    ("POST", "/api/auth/refresh"): "111111111",  # its credential is the refresh cookie, which nobody here has
    ("POST", "/api/auth/logout"): PUBLIC,
    ("POST", "/api/auth/setup"): PUBLIC,  # its credential is the setup link's token, in the body
    ("GET", "/api/me"): "13.....33",
    ("POST", "/api/users"): "13333...3",
    ("GET", "/api/users"): "1333....3",  # hr lists them to assign interviewers
    ("DELETE", "/api/users/{user_id}"): "13333.4.3",
    ("POST", "/api/api-keys"): "13333...3",
    ("GET", "/api/api-keys"): "13333...3",
    ("DELETE", "/api/api-keys/{key_id}"): "13333.4.3",
    ("GET", "/api/audit"): "13333...3",
    ("POST", "/api/interviews"): "1333....3",
    ("GET", "/api/interviews"): "13......3",
    ("GET", "/api/interviews/{interview_id}"): "13.4..4.3",
    ("POST", "/api/interviews/{interview_id}/start"): "1333..4.3",
    ("POST", "/api/interviews/{interview_id}/complete"): "1333..4.3",
    ("POST", "/api/interviews/{interview_id}/cancel"): "1333..4.3",
    ("POST", "/api/interviews/{interview_id}/questions"): "13.4..4.3",
    ("POST", "/api/interviews/{interview_id}/questions/{question_id}/ask"): "13.4..4.3",
    ("GET", "/api/interviews/{interview_id}/transcript"): "13.4..4.3",
    ("GET", "/api/interviews/{interview_id}/analysis"): "13.4..4.3",
    ("GET", "/api/interviews/{interview_id}/structure"): "13.4..4.3",
    ("PUT", "/api/interviews/{interview_id}/analysis"): "1333..4.3",
    ("POST", "/api/interviews/{interview_id}/analysis/run"): "1333..4.3",
    ("POST", "/api/interviews/{interview_id}/analysis/review"): "1333..4.3",  # hr and admin review
    ("GET", "/api/analysis/export"): "1333....3",
    ("GET", "/api/organisation"): "13333...3",  # the organisation's settings: admin
    ("PATCH", "/api/organisation"): "13333...3",
    ("POST", "/api/interviews/{interview_id}/tokens"): "1333..4.3",
    ("POST", "/api/interviews/{interview_id}/join"): "13.4..433",
    ("DELETE", "/api/interviews/{interview_id}/tokens/{token_id}"): "1333..4.3",
    ("POST", "/api/candidates"): "1333....3",
    ("GET", "/api/candidates"): "1333....3",
    ("GET", "/api/candidates/{candidate_id}"): "1333..4.3",
    ("PATCH", "/api/candidates/{candidate_id}"): "1333..4.3",
    # erasure and export: hr and admin (a key with candidate scopes only lacks the erase/export scope)
    ("DELETE", "/api/candidates/{candidate_id}"): "1333..4.3",
    ("GET", "/api/candidates/{candidate_id}/export"): "1333..4.3",
    # consent: only a participant, for their own interview
    ("POST", "/api/consent"): "1.3333333",
    ("DELETE", "/api/consent"): "1.3333333",
    ("GET", "/api/notice"): "1.3333333",  # what a participant's page shows before joining
    ("GET", "/.well-known/interview-worker-keys"): PUBLIC,
    # WHIP takes join tokens only: an access token or API key there is an invalid token.
    ("POST", "/whip/{interview_id}"): "1.1111111",
    ("OPTIONS", "/whip/{interview_id}"): PUBLIC,
    ("DELETE", "/whip/{interview_id}/{session_id}"): "141111111",  # the candidate's token has no such session
    ("PATCH", "/whip/{interview_id}/{session_id}"): PUBLIC,
    ("OPTIONS", "/whip/{interview_id}/{session_id}"): PUBLIC,
}


@dataclass
class World:
    live: LiveServer
    headers: dict[str, dict[str, str]]
    params: dict[str, str]


@pytest.fixture
async def world(tmp_path: Path, mongo_url: str) -> AsyncIterator[World]:
    async with live_server(test_settings(tmp_path, mongo_url)) as live:
        http = live.http  # the ADMIN_API_KEY: an admin-scoped key of the default organisation
        users = {}
        for name, role in (("admin", "admin"), ("hr", "hr"), ("assigned", "interviewer"),
                           ("unassigned", "interviewer"), ("victim", "interviewer")):
            r = await http.post("/api/users", json={"email": f"{name}@a.example", "role": role, "name": name,
                                                    "password": PASSWORD})
            assert r.status_code == 201, r.text
            users[name] = r.json()["userId"]
        accounts = live.components.accounts
        assert accounts is not None
        await accounts.create_admin("other_admin@b.example", "Org B", PASSWORD)
        headers: dict[str, dict[str, str]] = {"anonymous": {}}
        for name in ("admin", "hr", "assigned", "unassigned", "other_admin"):
            email = f"{name}@b.example" if name == "other_admin" else f"{name}@a.example"
            r = await http.post("/api/auth/login", json={"email": email, "password": PASSWORD})
            assert r.status_code == 200, r.text
            headers[name] = {"Authorization": f"Bearer {r.json()['accessToken']}"}
        iid, cancel_iid = [
            (await http.post("/api/interviews", json={
                "candidateId": "cand-1", "jobId": "job-1", "scheduledAt": "2030-01-01T09:00:00Z",
                "interviewers": [users["assigned"]], "questions": [{"questionId": "q1", "text": "Why?"}]})
             ).json()["interviewId"] for _ in range(2)]
        cid = (await http.post("/api/candidates", json={"name": "Cam", "email": "cam@a.example"})).json()["candidateId"]
        candidate = (await http.post(f"/api/interviews/{iid}/tokens", json={"role": "candidate"})).json()["token"]
        headers["candidate"] = {"Authorization": f"Bearer {candidate}"}
        keys = {}
        for name, scopes in (("key_with", ["admin"]), ("victim", ["interview.read"]), ("audit_only", ["audit.read"]),
                             ("candidates_only", ["candidate.read"])):
            r = await http.post("/api/api-keys", json={"name": name, "scopes": scopes})
            assert r.status_code == 201, r.text
            keys[name] = r.json()
        headers["key_with"] = {"Authorization": f"Bearer {keys['key_with']['key']}"}
        headers["audit_only"] = {"Authorization": f"Bearer {keys['audit_only']['key']}"}
        headers["candidates_only"] = {"Authorization": f"Bearer {keys['candidates_only']['key']}"}
        params = {"interview_id": iid, "cancel_interview_id": cancel_iid, "candidate_id": cid,
                  "user_id": users["victim"], "key_id": keys["victim"]["keyId"], "question_id": "q1",
                  "token_id": "some-other-jti", "session_id": "no-such-session"}
        yield World(live, headers, params)


def outcome(r: httpx.Response) -> str:
    if r.status_code == 401:
        return "1"
    if r.status_code == 403:
        return "3"
    if r.status_code == 404:
        return "4"
    return "."


def app_routes(live: LiveServer) -> list[tuple[str, str]]:
    found = []
    for route in live.app.routes:
        if isinstance(route, Mount):
            found.append(("GET", route.path))
        elif isinstance(route, Route):
            found += [(m, route.path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return found


async def test_every_route_answers_every_principal_as_the_matrix_says(world: World) -> None:
    routes = app_routes(world.live)
    assert set(routes) == set(MATRIX), {"not in the matrix": set(routes) - set(MATRIX),
                                        "no such route": set(MATRIX) - set(routes)}
    actions = {(op.method, op.path): op.action.value for op in OPERATIONS}
    wrong = []
    async with httpx.AsyncClient(base_url=world.live.url, timeout=30) as client:
        for method, template in routes:
            params = dict(world.params)
            if template.endswith("/cancel"):  # cancelling revokes the candidate's token: another interview
                params["interview_id"] = params["cancel_interview_id"]
            path = {"/static": "/static/app.css", "/app/{path:path}": "/app/interviews"}.get(template) \
                or template.format(**params)
            for principal, expected in zip(PRINCIPALS, MATRIX[(method, template)], strict=True):
                if principal == "key_without":  # a key holding one scope, not this route's
                    principal = "candidates_only" if actions.get((method, template)) == "audit.read" \
                        else "audit_only"
                headers = {**world.headers[principal], "X-Requested-With": "matrix"}
                r = await client.request(method, path, headers=headers)
                if outcome(r) != expected:
                    wrong.append((method, template, principal, expected, r.status_code, r.text[:120]))
    assert not wrong, "\n".join(map(str, wrong))
