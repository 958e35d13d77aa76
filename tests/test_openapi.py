"""The API answers as its OpenAPI document says: every /api route driven in-process (httpx ASGITransport) over a
real MongoStore, and every response body validated against the schema /openapi.json declares for that route and
status (JSON Schema 2020-12; the document is the registry its `$ref`s resolve in). A status the document does not
declare fails, a body it does not describe fails, and so does a request body the API accepted that the document's
request schema refuses; bodies the domain refuses for their shape the document refuses too.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.routing import Route

from adapters.auth import Accounts
from adapters.crypto import ReceiptSigner
from adapters.mongo import MongoStore
from adapters.privacy import Privacy
from domain.commands import InterviewService
from domain.events import SegmentEvent, Speaker, Word
from testing.api import api_app
from testing.fakes import AuditEntry, MemoryAuditLog

KEY = "test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
DOC = "urn:interview-worker:openapi"
NEW = {"candidateId": "cand-1", "jobId": "job-1", "scheduledAt": "2026-12-01T09:00:00Z"}
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")

formats = FormatChecker()


@formats.checks("date-time")
def _date_time(value: object) -> bool:
    # jsonschema checks date-time only with an optional package installed; the API's dates are RFC 3339
    return not isinstance(value, str) or _RFC3339.fullmatch(value) is not None


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class DocumentedClient:
    """Sends requests and fails on any response (or accepted request body) the document does not describe."""

    def __init__(self, client: httpx.AsyncClient, spec: dict[str, Any], accounts: Accounts) -> None:
        self.client = client
        self.spec = spec
        self.accounts = accounts  # the app's, to open the setup link
        self.registry: Registry[Any] = Registry().with_resource(
            DOC, Resource.from_contents(spec, default_specification=DRAFT202012))
        self.answered: set[tuple[str, str, int]] = set()  # (path template, method, status)

    def operation(self, method: str, path: str) -> str:
        for template, item in self.spec["paths"].items():
            if method.lower() in item and re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", template), path):
                return str(template)
        raise AssertionError(f"{method} {path} is not in the document")

    def problems(self, pointer: str, instance: Any) -> list[str]:
        validator = Draft202012Validator({"$ref": f"{DOC}#{quote(pointer)}"}, registry=self.registry,
                                         format_checker=formats)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]

    def request_schema(self, method: str, template: str) -> str:
        return _pointer("paths", template, method.lower(), "requestBody", "content", "application/json", "schema")

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        r = await self.client.request(method, path, **kwargs)
        template = self.operation(method, path)
        responses = self.spec["paths"][template][method.lower()]["responses"]
        assert str(r.status_code) in responses, \
            f"{method} {template} answered {r.status_code}, not in the document: {r.text}"
        content = responses[str(r.status_code)].get("content", {})
        media_type = r.headers.get("content-type", "").split(";")[0]
        if not content:
            assert not r.content, f"{method} {path} -> {r.status_code} has a body the document does not declare"
        elif "application/json" not in content or media_type != "application/json":
            assert media_type in content, f"{method} {path} -> {r.status_code} is {media_type}, not {list(content)}"
        else:
            body = _pointer("paths", template, method.lower(), "responses", str(r.status_code), "content",
                            "application/json", "schema")
            problems = self.problems(body, r.json())
            assert not problems, f"{method} {path} -> {r.status_code} disagrees with the document: {problems}"
        if r.is_success and "json" in kwargs:
            problems = self.problems(self.request_schema(method, template), kwargs["json"])
            assert not problems, f"{method} {path} accepted a body the document refuses: {problems}"
        self.answered.add((template, method.lower(), r.status_code))
        return r

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", path, **kwargs)


@pytest.fixture
async def api(store: MongoStore, service: InterviewService, tmp_path: Path) -> AsyncIterator[DocumentedClient]:
    privacy = Privacy(store, service, ReceiptSigner.load_or_create(tmp_path / "receipt_key.pem"))
    built = await api_app(store, service, tmp_path, max_body_bytes=64 * 1024, audit=MemoryAuditLog(),
                          entry_type=AuditEntry, privacy=privacy)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=built.app), base_url="https://api.test",
                                 headers=AUTH) as client:
        r = await client.get("/openapi.json")
        assert r.status_code == 200
        yield DocumentedClient(client, r.json(), built.accounts)


async def test_the_document_is_openapi_3_1_with_valid_schemas(store: MongoStore, service: InterviewService,
                                                              tmp_path: Path) -> None:
    from adapters.api_schema import openapi_document
    from adapters.http_api import OPERATIONS

    spec = openapi_document(OPERATIONS)
    assert spec["openapi"] == "3.1.0"
    for schema in spec["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    # The routes the API mounts are the routes the document declares.
    privacy = Privacy(store, service, ReceiptSigner.load_or_create(tmp_path / "receipt_key.pem"))
    routes = (await api_app(store, service, tmp_path, privacy=privacy)).app.routes
    mounted = {(r.path, m.lower()) for r in routes if isinstance(r, Route) and r.path != "/openapi.json"
               for m in r.methods or () if m != "HEAD"}
    assert mounted == {(path, method) for path, item in spec["paths"].items() for method in item}


async def test_every_route_answers_as_documented(api: DocumentedClient, service: InterviewService) -> None:
    # -- interviews: create, list, get ------------------------------------------------------------------------
    r = await api.post("/api/interviews", json={
        **NEW, "interviewId": "iv-1", "type": "technical", "format": None, "interviewers": [],
        "questions": [{"text": "Walk me through a design.", "category": "design", "expectedKeywords": ["scale"],
                       "budgetS": 300},
                      {"questionId": "q-2", "text": "Why us?", "category": None}]})
    assert r.status_code == 201
    iid = r.json()["interviewId"]
    assert (await api.post("/api/interviews", json={**NEW, "interviewId": "iv-1"})).status_code == 409
    assert (await api.post("/api/interviews", json={**NEW, "colour": "blue"})).status_code == 422
    assert (await api.post("/api/interviews", json={**NEW, "interviewers": ["int-1"]})).status_code == 422
    assert (await api.post("/api/interviews", content=b"x", headers={"Content-Type": "text/plain"})).status_code == 415
    assert (await api.post("/api/interviews", json={**NEW, "questions": [{"text": "x" * 1000}] * 100})
            ).status_code == 413
    assert (await api.post("/api/interviews", json=NEW, headers={"Authorization": ""})).status_code == 401
    other = (await api.post("/api/interviews", json={**NEW, "scheduledAt": "2026-12-02T09:00:00+01:00",
                                                     "interviewId": None, "questions": None})).json()["interviewId"]

    assert (await api.get("/api/interviews", params={"limit": "1"})).json()["nextCursor"]
    assert (await api.get("/api/interviews", params={"status": "scheduled", "candidateId": "cand-1"})
            ).status_code == 200
    assert (await api.get("/api/interviews", params={"limit": "0"})).status_code == 422
    assert (await api.get(f"/api/interviews/{iid}")).status_code == 200
    assert (await api.get("/api/interviews/nope")).status_code == 404

    # -- status moves, questions ------------------------------------------------------------------------------
    assert (await api.post(f"/api/interviews/{iid}/complete")).status_code == 409
    assert (await api.post(f"/api/interviews/{iid}/start", json={"expectedVersion": 1})).status_code == 200
    assert (await api.post(f"/api/interviews/{iid}/start")).status_code == 409
    assert (await api.post(f"/api/interviews/{other}/cancel", json={"expectedVersion": "1"})).status_code == 422
    assert (await api.post(f"/api/interviews/{other}/cancel", json={"reason": "no show", "expectedVersion": None})
            ).status_code == 200
    added = await api.post(f"/api/interviews/{iid}/questions", json={"text": "Any questions for us?",
                                                                     "expectedKeywords": None})
    assert added.status_code == 201
    assert (await api.post(f"/api/interviews/{other}/questions", json={"text": "late"})).status_code == 409
    assert (await api.post(f"/api/interviews/{iid}/questions/q-2/ask")).status_code == 200
    assert (await api.post(f"/api/interviews/{iid}/questions/q-2/ask")).status_code == 409
    assert (await api.post(f"/api/interviews/{iid}/questions/q-missing/ask")).status_code == 404

    # -- transcript: a plain final, and one with a revision ---------------------------------------------------
    speaker = Speaker(role="candidate", name="Ada", participant_id="p_ada")
    words = [Word("Hello", 0.0, 0.4, 0.9), Word("there.", 0.4, 0.9, 0.8)]
    await service.record_segment(iid, SegmentEvent(speaker=speaker, seq=0, start_s=0.0, end_s=0.9,
                                                   text="Hello there.", final=True, words=words, confidence=0.8,
                                                   engine="faster-whisper", model="tiny.en", emitted_at_s=1.2))
    await service.record_segment(iid, SegmentEvent(speaker=speaker, seq=1, start_s=2.0, end_s=3.5,
                                                   text="I build data pipe lines.", final=True))
    await service.record_revision(iid, SegmentEvent(speaker=speaker, seq=1, start_s=2.0, end_s=3.5,
                                                    text="I build data pipelines.", final=True, revision=1))
    segments = (await api.get(f"/api/interviews/{iid}/transcript")).json()["segments"]
    assert [s.get("revision") for s in segments] == [None, 1]
    assert (await api.get("/api/interviews/nope/transcript")).status_code == 404
    shape = (await api.get(f"/api/interviews/{iid}/structure", params={"tone": "true"})).json()
    assert [p["seq"] for p in shape["speakers"][0]["tone"]] == [0, 1]
    assert "pipelines" in {k["term"] for k in shape["speakers"][0]["keywords"]}  # the revised text
    assert (await api.get(f"/api/interviews/{iid}/structure", params={"tone": "yes"})).status_code == 422
    assert (await api.get("/api/interviews/nope/structure")).status_code == 404

    # -- analysis ---------------------------------------------------------------------------------------------
    assert (await api.get(f"/api/interviews/{iid}/analysis")).json()["status"] == "pending"
    assert (await api.get("/api/interviews/nope/analysis")).status_code == 404
    analysis = {"sentiment": {"overall": 0.3, "timeline": [{"at_s": 1.0, "score": 0.5, "participantId": "p_ada"},
                                                           {"at_s": 2.5, "score": -0.1}]},
                "keywords": [{"term": "pipelines", "count": 2, "relevance": 0.9}, {"term": "design"}],
                "competency": {"communication": 4}, "overall": {"score": 80, "recommendation": "hire"}}
    assert (await api.request("PUT", f"/api/interviews/{iid}/analysis", json=analysis)).status_code == 409
    version = (await api.get(f"/api/interviews/{iid}")).json()["metadata"]["version"]
    assert (await api.post(f"/api/interviews/{iid}/complete", headers={**AUTH, "If-Match": f'"{version}"'})
            ).status_code == 200
    assert (await api.request("PUT", f"/api/interviews/{iid}/analysis", json={"competency": {"x": 9}})
            ).status_code == 422
    assert (await api.request("PUT", f"/api/interviews/{iid}/analysis", json=analysis)).status_code == 200
    assert (await api.request("PUT", f"/api/interviews/{iid}/analysis", json={"overall": None})).status_code == 200
    assert (await api.get(f"/api/interviews/{iid}")).json()["analysis"]["status"] == "completed"
    # completing started the scorecard job (local heuristic here); on demand it runs again
    assert (await settled(api, iid))["aggregate"]["competencies"]
    r = await api.post(f"/api/interviews/{iid}/analysis/run", json={"skills": ["pipelines"]})
    assert r.status_code == 202 and r.json()["status"] in ("pending", "running")
    assert (await settled(api, iid))["providers"][0]["provider"] == "heuristic"
    assert (await api.get(f"/api/interviews/{iid}/analysis", params={"version": "machine"})).status_code == 200
    assert (await api.get(f"/api/interviews/{iid}/analysis", params={"version": "draft"})).status_code == 422
    assert (await api.post(f"/api/interviews/{other}/analysis/run")).status_code == 409
    assert (await api.post("/api/interviews/nope/analysis/run")).status_code == 404
    # review: the aggregate sent back as it came, edited; scores outside 0..5 refused; then confirmed
    card = (await settled(api, iid))["aggregate"]
    card["competencies"][0]["score"] = 2
    assert (await api.post(f"/api/interviews/{iid}/analysis/review", json={"action": "edit", "scorecard": card,
                                                                           "note": "one score lowered"})
            ).status_code == 200
    bad = {**card, "competencies": [{**card["competencies"][0], "score": 7}]}
    assert (await api.post(f"/api/interviews/{iid}/analysis/review", json={"action": "edit", "scorecard": bad})
            ).status_code == 422
    reviewed = await api.post(f"/api/interviews/{iid}/analysis/review", json={"action": "confirm"})
    assert reviewed.status_code == 200 and reviewed.json()["version"] == "confirmed"
    assert (await api.post(f"/api/interviews/{other}/analysis/review", json={"action": "confirm"})
            ).status_code == 409
    assert (await api.post("/api/interviews/nope/analysis/review", json={"action": "reject"})).status_code == 404
    assert (await api.get("/api/analysis/export")).json()["items"][0]["version"] == "confirmed"
    assert (await api.get("/api/analysis/export", params={"format": "csv"})).text.startswith("interviewId,")
    assert (await api.get("/api/analysis/export", params={"format": "xml"})).status_code == 422
    # the organisation's settings
    assert (await api.get("/api/organisation")).json()["jurisdiction"] == "eu"
    assert (await api.request("PATCH", "/api/organisation", json={"biasAuditDate": "2026-02-30"})
            ).status_code == 422
    assert (await api.request("PATCH", "/api/organisation", json={"toneEnabled": None})).status_code == 200

    # -- join tokens ------------------------------------------------------------------------------------------
    fresh = (await api.post("/api/interviews", json=NEW)).json()["interviewId"]
    token = await api.post(f"/api/interviews/{fresh}/tokens", json={"role": "candidate", "name": "Cat"})
    assert token.status_code == 201
    assert (await api.post(f"/api/interviews/{fresh}/tokens", json={"role": "observer"})).status_code == 201
    assert (await api.post(f"/api/interviews/{fresh}/tokens", json={"role": "admin", "extra": 1})).status_code == 422
    assert (await api.post(f"/api/interviews/{fresh}/tokens", json={"role": "candidate"},
                           headers={"Authorization": f"Bearer {token.json()['token']}"})).status_code == 403
    assert (await api.post(f"/api/interviews/{fresh}/tokens", json={"role": "candidate"},
                           headers={"Authorization": "Bearer wrong"})).status_code == 401
    assert (await api.post("/api/interviews/nope/tokens", json={"role": "candidate"})).status_code == 404
    assert (await api.post(f"/api/interviews/{other}/tokens", json={"role": "candidate"})).status_code == 409

    # -- candidates -------------------------------------------------------------------------------------------
    r = await api.post("/api/candidates", json={"name": "Grace Hopper", "email": "Grace@example.com", "phone": "",
                                                "resume": {"url": "https://example.com/cv.pdf", "parsed": True,
                                                           "skills": ["cobol"], "experience": 30}})
    assert r.status_code == 201
    cid = r.json()["candidateId"]
    assert (await api.post("/api/candidates", json={"name": "Other", "email": "grace@example.com"})
            ).status_code == 409
    assert (await api.post("/api/candidates", json={"name": "", "email": "nope"})).status_code == 422
    await api.post("/api/candidates", json={"candidateId": "cand-1", "name": "Ada", "email": "ada@example.com",
                                            "resume": None})
    assert (await api.get("/api/candidates", params={"limit": "1"})).json()["nextCursor"]
    assert (await api.get("/api/candidates", params={"cursor": "%%%"})).status_code == 422
    got = await api.get("/api/candidates/cand-1")
    assert got.status_code == 200 and len(got.json()["interviews"]) == 3
    assert (await api.get("/api/candidates/nope")).status_code == 404
    assert (await api.request("PATCH", f"/api/candidates/{cid}", json={"phone": "+1 555 0100", "resume": None,
                                                                        "version": 1})).status_code == 200
    assert (await api.request("PATCH", f"/api/candidates/{cid}", json={"resume": {"skills": ["fortran"]}})
            ).status_code == 200
    assert (await api.request("PATCH", f"/api/candidates/{cid}", json={"name": "G", "version": 1})).status_code == 409
    assert (await api.request("PATCH", f"/api/candidates/{cid}", json={})).status_code == 422
    assert (await api.request("PATCH", "/api/candidates/nope", json={"name": "X"})).status_code == 404

    # -- people and access ------------------------------------------------------------------------------------
    setup_token = await api.accounts.open_setup()  # no users yet
    first = {"token": setup_token, "email": "ada@example.com", "password": "correct horse battery"}
    assert (await api.post("/api/auth/setup", json={**first, "token": "unknown"})).status_code == 404
    assert (await api.post("/api/auth/setup", json=first)).status_code == 201
    assert (await api.post("/api/auth/setup", json=first)).status_code == 410
    person = {"email": "ivy@example.com", "role": "interviewer", "name": "Ivy", "password": "correct horse battery"}
    r = await api.post("/api/users", json=person)
    assert r.status_code == 201
    ivy = r.json()["userId"]
    assert (await api.post("/api/users", json=person)).status_code == 409
    assert (await api.post("/api/users", json={**person, "role": "boss", "password": "short"})).status_code == 422
    assert (await api.get("/api/users")).status_code == 200
    assert (await api.get("/api/users", headers={"Authorization": ""})).status_code == 401
    assert (await api.post("/api/auth/login", json={"email": "ivy@example.com", "password": "wrong password"})
            ).status_code == 401
    login = await api.post("/api/auth/login", json={"email": "ivy@example.com", "password": person["password"]})
    assert login.status_code == 200
    as_ivy = {"Authorization": f"Bearer {login.json()['accessToken']}"}
    assert (await api.get("/api/me", headers=as_ivy)).status_code == 200
    assert (await api.get("/api/me")).status_code == 403  # an API key is not a person
    csrf = {"X-Requested-With": "fetch"}
    assert (await api.post("/api/auth/refresh")).status_code == 403
    assert (await api.post("/api/auth/refresh", headers=csrf)).status_code == 200
    assert (await api.post("/api/auth/logout")).status_code == 403
    assert (await api.post("/api/auth/logout", headers=csrf)).status_code == 200
    key = await api.post("/api/api-keys", json={"name": "ats", "scopes": ["interview.read", "token.mint"]})
    assert key.status_code == 201
    assert (await api.post("/api/api-keys", json={"name": "", "scopes": ["everything"]})).status_code == 422
    assert (await api.get("/api/api-keys")).status_code == 200
    assert (await api.get("/api/api-keys", headers=as_ivy)).status_code == 403
    assert (await api.request("DELETE", f"/api/api-keys/{key.json()['keyId']}")).status_code == 200
    assert (await api.request("DELETE", "/api/api-keys/nope")).status_code == 404
    assigned = (await api.post("/api/interviews", json={**NEW, "interviewers": [ivy]})).json()["interviewId"]
    joined = await api.post(f"/api/interviews/{assigned}/join", headers=as_ivy)
    assert joined.status_code == 201
    assert (await api.post(f"/api/interviews/{fresh}/join", headers=as_ivy)).status_code == 404  # not assigned
    jti = jwt.decode(joined.json()["token"], options={"verify_signature": False})["jti"]
    assert (await api.request("DELETE", f"/api/interviews/{assigned}/tokens/{jti}")).status_code == 200
    assert (await api.request("DELETE", f"/api/interviews/{assigned}/tokens/{jti}", headers=as_ivy)
            ).status_code == 403
    assert (await api.get("/api/organisation", headers=as_ivy)).status_code == 403  # admin only
    assert (await api.get("/api/audit", params={"limit": "2"})).status_code == 200
    assert (await api.get("/api/audit", params={"limit": "0"})).status_code == 422
    assert (await api.request("DELETE", f"/api/users/{ivy}")).status_code == 200
    assert (await api.request("DELETE", "/api/users/nope")).status_code == 404

    # Consent by join token; export and erasure (with their receipts) by the admin key.
    open_iid = (await api.post("/api/interviews", json=NEW)).json()["interviewId"]
    join = (await api.post(f"/api/interviews/{open_iid}/tokens", json={"role": "candidate"})).json()["token"]
    as_participant = {"Authorization": f"Bearer {join}"}
    consent = {"noticeVersion": "2026-01", "accepted": True}
    assert (await api.get("/api/notice", headers=as_participant)).json()["noticeVersion"] == "2026-01"
    assert (await api.get("/api/notice")).status_code == 403  # the admin key is no participant
    assert (await api.post("/api/consent", json=consent, headers=as_participant)).status_code == 204
    assert (await api.post("/api/consent", json=consent)).status_code == 403  # the admin key is no participant
    assert (await api.post("/api/consent", json={**consent, "accepted": False},
                           headers=as_participant)).status_code == 422
    assert (await api.request("DELETE", "/api/consent", headers=as_participant)).status_code == 204
    assert (await api.request("DELETE", "/api/consent")).status_code == 403
    exported = await api.get("/api/candidates/cand-1/export")
    assert exported.status_code == 200 and exported.content.startswith(b"PK")
    assert (await api.get("/api/candidates/nobody/export")).status_code == 404
    erased = await api.request("DELETE", "/api/candidates/cand-1", params={"reason": "asked to"})
    assert erased.status_code == 200
    again = await api.request("DELETE", "/api/candidates/cand-1", params={"reason": "asked to"})
    assert again.status_code == 404 and again.json()["error"]["receiptId"] == erased.json()["receipt"]["id"]
    assert (await api.get("/api/candidates/cand-1/export")).status_code == 410
    assert (await api.request("DELETE", f"/api/candidates/{cid}")).status_code == 422  # no reason

    # Every documented route answered at least once with success and once with an error, each as documented.
    for path, item in api.spec["paths"].items():
        for method in item:
            statuses = {s for p, m, s in api.answered if (p, m) == (path, method)}
            assert any(s < 400 for s in statuses) and any(s >= 400 for s in statuses), (method, path, statuses)


async def settled(api: DocumentedClient, iid: str) -> dict[str, Any]:
    """The analysis once its background job has finished (polled: the job runs inside the app)."""
    for _ in range(200):
        view = (await api.get(f"/api/interviews/{iid}/analysis")).json()
        if view["status"] not in ("pending", "running"):
            return view  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"analysis of {iid} never finished: {view}")


REFUSED: list[tuple[str, str, Any]] = [
    ("POST", "/api/interviews", {}),
    ("POST", "/api/interviews", [NEW]),
    ("POST", "/api/interviews", {**NEW, "colour": "blue"}),
    ("POST", "/api/interviews", {**NEW, "candidateId": 5}),
    ("POST", "/api/interviews", {**NEW, "candidateId": None}),
    ("POST", "/api/interviews", {**NEW, "jobId": "has.dot"}),
    ("POST", "/api/interviews", {**NEW, "scheduledAt": "tomorrow"}),
    ("POST", "/api/interviews", {**NEW, "scheduledAt": "2026-12-01T09:00:00"}),
    ("POST", "/api/interviews", {**NEW, "type": "chat"}),
    ("POST", "/api/interviews", {**NEW, "interviewers": "int-1"}),
    ("POST", "/api/interviews", {**NEW, "questions": [{"text": ""}]}),
    ("POST", "/api/interviews", {**NEW, "questions": [{"text": "ok", "expectedKeywords": [3]}]}),
    ("POST", "/api/interviews", {**NEW, "questions": [{"text": "ok", "budgetS": -60}]}),
    ("POST", "/api/interviews", {**NEW, "questions": [{"text": "ok", "budgetS": "60"}]}),
    ("POST", "/api/interviews/{iid}/questions", {"text": "ok", "budgetS": 0}),
    ("POST", "/api/interviews/{iid}/start", {"expectedVersion": 0}),
    ("POST", "/api/interviews/{iid}/start", {"reason": "only cancel has one"}),
    ("POST", "/api/interviews/{iid}/cancel", {"expectedVersion": "2", "why": 1}),
    ("POST", "/api/interviews/{iid}/questions", {"category": "no text"}),
    ("PUT", "/api/interviews/{iid}/analysis", {"sentiment": {"overall": 2}}),
    ("PUT", "/api/interviews/{iid}/analysis", {"sentiment": {"timeline": [{"at_s": -1, "score": 0}]}}),
    ("PUT", "/api/interviews/{iid}/analysis", {"competency": {"communication": 9}}),
    ("PUT", "/api/interviews/{iid}/analysis", {"competency": {"communication": None}}),
    ("PUT", "/api/interviews/{iid}/analysis", {"overall": {"recommendation": "maybe"}}),
    ("PUT", "/api/interviews/{iid}/analysis", {"keywords": [{"count": 1}]}),
    ("POST", "/api/interviews/{iid}/analysis/run", {"skills": "python"}),
    ("POST", "/api/interviews/{iid}/analysis/run", {"rubric": []}),
    ("POST", "/api/interviews/{iid}/tokens", {"role": "admin"}),
    ("POST", "/api/interviews/{iid}/tokens", {"role": "candidate", "name": None}),
    ("POST", "/api/interviews/{iid}/tokens", {"role": "candidate", "extra": 1}),
    ("POST", "/api/candidates", {"name": "Ada"}),
    ("POST", "/api/candidates", {"name": "Ada", "email": "not-an-email"}),
    ("POST", "/api/candidates", {"name": "Ada", "email": "a@example.com", "phone": "call me"}),
    ("POST", "/api/candidates", {"name": "Ada", "email": "a@example.com", "resume": {"url": "ftp://x"}}),
    ("POST", "/api/candidates", {"name": "Ada", "email": "a@example.com", "resume": {"parsed": None}}),
    ("POST", "/api/candidates", {"name": "Ada", "email": "a@example.com", "resume": {"experience": -1}}),
    ("PATCH", "/api/candidates/{cid}", {}),
    ("PATCH", "/api/candidates/{cid}", {"version": 1}),
    ("PATCH", "/api/candidates/{cid}", {"name": None}),
    ("PATCH", "/api/candidates/{cid}", {"name": "X", "version": None}),
]


async def test_bodies_the_domain_refuses_the_document_refuses(api: DocumentedClient) -> None:
    iid = (await api.post("/api/interviews", json=NEW)).json()["interviewId"]
    await api.post(f"/api/interviews/{iid}/start")
    await api.post(f"/api/interviews/{iid}/complete")
    cid = (await api.post("/api/candidates", json={"name": "Ada", "email": "ada@example.com"})).json()["candidateId"]
    for method, template, body in REFUSED:
        r = await api.request(method, template.format(iid=iid, cid=cid), json=body)
        assert r.status_code == 422, (method, template, body, r.text)
        assert api.problems(api.request_schema(method, api.operation(method, template.format(iid=iid, cid=cid))),
                            body), f"the document accepts {body} for {method} {template}; the API refuses it"
