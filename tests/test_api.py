"""The /api routes driven in-process (httpx ASGITransport) over a real MongoStore on the wire protocol."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.mongo import EmbeddedMongo, MongoStore
from domain.commands import InterviewService
from domain.events import SegmentEvent, Speaker
from testing.api import api_app

KEY = "test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
NEW = {"candidateId": "cand-1", "jobId": "job-1", "scheduledAt": "2026-12-01T09:00:00Z"}


@pytest.fixture
async def client(store: MongoStore, service: InterviewService, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = (await api_app(store, service, tmp_path, max_body_bytes=64 * 1024)).app
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test",
                                 headers=AUTH) as c:
        yield c


async def create(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    r = await client.post("/api/interviews", json={**NEW, **overrides})
    assert r.status_code == 201, r.text
    return r.json()


def error_fields(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 422, r.text
    body = r.json()["error"]
    assert body["code"] == "validation_error"
    return body["fields"]


async def test_create_get_and_lifecycle(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/interviews", json={**NEW, "type": "technical", "interviewers": [],
                                                   "questions": [{"text": "Walk me through a design."}]})
    assert r.status_code == 201
    doc = r.json()
    iid = doc["interviewId"]
    assert r.headers["location"] == f"/api/interviews/{iid}"
    assert doc["status"] == "scheduled" and doc["scheduledAt"] == "2026-12-01T09:00:00.000Z"
    assert doc["metadata"]["version"] == 1 and doc["metadata"]["createdAt"].endswith("Z")
    assert doc["questions"][0]["text"] == "Walk me through a design." and doc["type"] == "technical"

    got = (await client.get(f"/api/interviews/{iid}")).json()
    assert got == doc

    started = await client.post(f"/api/interviews/{iid}/start")
    assert started.status_code == 200 and started.json()["status"] == "in_progress"
    qid = doc["questions"][0]["questionId"]
    asked = await client.post(f"/api/interviews/{iid}/questions/{qid}/ask")
    assert asked.status_code == 200 and asked.json()["askedAt"].endswith("Z")
    again = await client.post(f"/api/interviews/{iid}/questions/{qid}/ask")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_asked"
    added = await client.post(f"/api/interviews/{iid}/questions", json={"text": "Any questions for us?"})
    assert added.status_code == 201 and added.json()["order"] == 2
    done = await client.post(f"/api/interviews/{iid}/complete", json={"expectedVersion": 4})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed" and done.json()["duration"] >= 0


async def test_auth_required_on_every_api_route(client: httpx.AsyncClient) -> None:
    iid = (await create(client))["interviewId"]
    calls = [("GET", "/api/interviews"), ("POST", "/api/interviews"), ("GET", f"/api/interviews/{iid}"),
             ("POST", f"/api/interviews/{iid}/start"), ("GET", f"/api/interviews/{iid}/transcript"),
             ("GET", f"/api/interviews/{iid}/analysis"), ("GET", "/api/candidates"), ("POST", "/api/candidates")]
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": "Bearer"}):
        for method, path in calls:
            r = await client.request(method, path, headers=headers, json=NEW)
            assert r.status_code == 401, (method, path, headers)
            if headers["Authorization"]:  # a credential that is not valid, rather than none
                assert r.json()["error"]["code"] == "invalid_token"
                assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
            else:
                assert r.json()["error"]["code"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
    # Nothing changed through the refused calls.
    assert (await client.get(f"/api/interviews/{iid}")).json()["status"] == "scheduled"
    assert len((await client.get("/api/interviews")).json()["items"]) == 1


async def test_bad_bodies(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    post = "/api/interviews"
    headers = {**AUTH, "Content-Type": "application/json"}
    # Invalid JSON, not an object, empty.
    with caplog.at_level(logging.INFO, logger="adapters.http_api"):
        r = await client.post(post, content=b'{"candidateId": "c1",', headers=headers)
    assert "invalid JSON" in error_fields(r)["body"]
    assert len([rec for rec in caplog.records if "422" in rec.getMessage()]) == 1  # logged once
    assert error_fields(await client.post(post, json=[NEW]))["body"] == "expected a JSON object"
    assert error_fields(await client.post(post, content=b"", headers=headers))["body"] == "a JSON body is required"
    assert "UTF-8" in error_fields(await client.post(post, content=b'{"a": "\xff"}', headers=headers))["body"]
    # Missing fields, each named.
    assert error_fields(await client.post(post, json={})) == {
        "candidateId": "field required", "jobId": "field required", "scheduledAt": "field required"}
    # Wrong types and values, each named.
    fields = error_fields(await client.post(post, json={
        "candidateId": 5, "jobId": "has.dot", "scheduledAt": "tomorrow", "type": "chat", "format": None,
        "interviewers": "int-1", "questions": [{"text": ""}, {"text": "ok", "expectedKeywords": [3]}],
        "colour": "blue"}))
    assert set(fields) == {"candidateId", "jobId", "scheduledAt", "type", "interviewers", "questions[0].text",
                           "questions[1].expectedKeywords[0]", "colour"}
    assert fields["colour"] == "unknown field"
    naive = error_fields(await client.post(post, json={**NEW, "scheduledAt": "2026-12-01T09:00:00"}))
    assert "timezone" in naive["scheduledAt"]
    assert set(error_fields(await client.post(post, json={**NEW, "candidateId": True}))) == {"candidateId"}
    # Not JSON at all.
    r = await client.post(post, content=b"candidateId=c1", headers={**AUTH, "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    # Nothing was created by any of them.
    assert (await client.get("/api/interviews")).json()["items"] == []


async def test_guide_questions_carry_time_budgets(client: httpx.AsyncClient) -> None:
    """A question's `budgetS` (seconds, live guidance's time budget) is stored and returned; a question without one
    has no such field; a budget that is not a positive number of seconds is a 422 naming the question."""
    doc = await create(client, questions=[{"text": "Walk me through a design.", "category": "design", "budgetS": 300},
                                          {"text": "How do you test it?", "category": "design", "budgetS": 90.5},
                                          {"text": "Why us?"}])  # fmt: skip
    assert [q.get("budgetS", "absent") for q in doc["questions"]] == [300.0, 90.5, "absent"]
    got = (await client.get(f"/api/interviews/{doc['interviewId']}")).json()
    assert [q.get("budgetS", "absent") for q in got["questions"]] == [300.0, 90.5, "absent"]
    added = await client.post(f"/api/interviews/{doc['interviewId']}/questions", json={"text": "Questions?",
                                                                                       "budgetS": 120})
    assert added.status_code == 201 and added.json()["budgetS"] == 120.0

    fields = error_fields(await client.post("/api/interviews", json={**NEW, "questions": [
        {"text": "a", "budgetS": -60}, {"text": "b", "budgetS": "60"}, {"text": "c", "budgetS": 0},
        {"text": "d", "budgetS": True}, {"text": "e", "budgetS": 10**9}, {"text": "f", "budgetS": None},
        {"text": "g", "budgetS": 10**400}]}))
    assert fields == {"questions[0].budgetS": "must be between 1 and 28800",
                      "questions[1].budgetS": "expected a number", "questions[2].budgetS": "must be between 1 and 28800",
                      "questions[3].budgetS": "expected a number",
                      "questions[4].budgetS": "must be between 1 and 28800",
                      "questions[6].budgetS": "must be between 1 and 28800"}  # fmt: skip
    for budget in (-1, 10**400):  # an integer too large for a float is out of range too, not a server error
        bad = await client.post(f"/api/interviews/{doc['interviewId']}/questions",
                                json={"text": "x", "budgetS": budget})
        assert error_fields(bad) == {"budgetS": "must be between 1 and 28800"}
    assert len((await client.get(f"/api/interviews/{doc['interviewId']}")).json()["questions"]) == 4


async def test_body_size_limit(client: httpx.AsyncClient) -> None:
    big = {**NEW, "questions": [{"text": "x" * 1000}] * 100}  # ~100 kB > the 64 KiB limit of this app
    r = await client.post("/api/interviews", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while streaming
        for _ in range(100):
            yield b" " * 1024

    r = await client.post("/api/interviews", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413
    r = await client.post("/api/candidates", content=b"{}", headers={**AUTH, "Content-Length": "99999999"})
    assert r.status_code == 413


async def test_unknown_ids_are_404(client: httpx.AsyncClient) -> None:
    for method, path in [("GET", "/api/interviews/nope"), ("POST", "/api/interviews/nope/start"),
                         ("POST", "/api/interviews/nope/cancel"), ("GET", "/api/interviews/nope/transcript"),
                         ("GET", "/api/interviews/nope/analysis"), ("GET", "/api/interviews/bad.id*"),
                         ("GET", "/api/candidates/nope"), ("POST", "/api/interviews/nope/questions/q1/ask")]:
        r = await client.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    iid = (await create(client))["interviewId"]
    await client.post(f"/api/interviews/{iid}/start")
    r = await client.post(f"/api/interviews/{iid}/questions/q-missing/ask")
    assert r.status_code == 404 and "q-missing" in r.json()["error"]["message"]
    r = await client.patch("/api/candidates/nope", json={"name": "X"})
    assert r.status_code == 404


async def test_illegal_moves_and_stale_versions_are_409(client: httpx.AsyncClient) -> None:
    iid = (await create(client))["interviewId"]
    r = await client.post(f"/api/interviews/{iid}/complete")
    assert r.status_code == 409 and r.json()["error"]["code"] == "illegal_transition"
    assert (await client.post(f"/api/interviews/{iid}/start")).status_code == 200
    r = await client.post(f"/api/interviews/{iid}/start")
    assert r.status_code == 409 and "in_progress" in r.json()["error"]["message"]
    r = await client.post(f"/api/interviews/{iid}/cancel", headers={**AUTH, "If-Match": '"1"'})
    assert r.status_code == 409 and r.json()["error"]["code"] == "version_conflict"
    assert set(error_fields(await client.post(f"/api/interviews/{iid}/cancel",
                                              headers={**AUTH, "If-Match": "abc"}))) == {"If-Match"}
    assert set(error_fields(await client.post(f"/api/interviews/{iid}/cancel",
                                              json={"expectedVersion": "2", "why": 1}))) == {"expectedVersion", "why"}
    r = await client.post(f"/api/interviews/{iid}/cancel", json={"reason": "no show", "expectedVersion": 2})
    assert r.status_code == 200 and r.json()["cancelReason"] == "no show"
    for action in ("start", "complete", "cancel"):
        assert (await client.post(f"/api/interviews/{iid}/{action}")).status_code == 409
    assert (await client.post(f"/api/interviews/{iid}/questions", json={"text": "late"})).status_code == 409


async def test_concurrent_starts_one_wins_one_409(client: httpx.AsyncClient) -> None:
    iid = (await create(client))["interviewId"]
    rs = await asyncio.gather(*(client.post(f"/api/interviews/{iid}/start") for _ in range(2)))
    assert sorted(r.status_code for r in rs) == [200, 409]
    doc = (await client.get(f"/api/interviews/{iid}")).json()
    assert doc["metadata"]["version"] == 2


async def test_list_query_validation_and_pagination(client: httpx.AsyncClient) -> None:
    ids = [(await create(client, scheduledAt=f"2026-12-0{d}T09:00:00+01:00", candidateId=f"c{d % 2}"))["interviewId"]
           for d in range(1, 6)]
    bad = {"status": "done", "limit": "0", "cursor": "%%%", "from": "yesterday", "candidate": "x"}
    assert set(error_fields(await client.get("/api/interviews", params=bad))) == set(bad)
    assert "limit" in error_fields(await client.get("/api/interviews", params={"limit": "201"}))
    assert "to" in error_fields(await client.get("/api/interviews", params={"from": "2026-12-03T00:00:00Z",
                                                                          "to": "2026-12-02T00:00:00Z"}))
    seen: list[str] = []
    params: dict[str, str] = {"limit": "2"}
    while True:
        page = (await client.get("/api/interviews", params=params)).json()
        seen += [i["interviewId"] for i in page["items"]]
        if not page["nextCursor"]:
            break
        params["cursor"] = page["nextCursor"]
    assert seen == ids
    page = (await client.get("/api/interviews", params={"candidateId": "c1", "from": "2026-12-02T00:00:00Z",
                                                        "to": "2026-12-05T08:00:00Z"})).json()
    assert [i["interviewId"] for i in page["items"]] == [ids[2]]  # Dec 3 only (Dec 5 09:00+01 = 08:00Z excluded)
    await client.post(f"/api/interviews/{ids[3]}/start")
    page = (await client.get("/api/interviews", params={"status": "in_progress"})).json()
    assert [i["interviewId"] for i in page["items"]] == [ids[3]] and page["nextCursor"] is None


async def test_transcript_and_analysis(client: httpx.AsyncClient, service: InterviewService) -> None:
    iid = (await create(client))["interviewId"]
    await client.post(f"/api/interviews/{iid}/start")
    speaker = Speaker(role="candidate", name="Ada", participant_id="p1")
    for seq, text in enumerate(["Hello there.", "I build data pipelines."]):
        await service.record_segment(iid, SegmentEvent(speaker=speaker, seq=seq, start_s=seq * 2.0,
                                                       end_s=seq * 2.0 + 1.5, text=text, final=True))
    transcript = (await client.get(f"/api/interviews/{iid}/transcript")).json()
    assert [s["text"] for s in transcript["segments"]] == ["Hello there.", "I build data pipelines."]
    assert transcript["status"] == "in_progress" and transcript["segments"][0]["recordedAt"].endswith("Z")
    analysis = {"sentiment": {"overall": 0.3}, "competency": {"communication": 4},
                "overall": {"score": 80, "recommendation": "hire"}}
    r = await client.put(f"/api/interviews/{iid}/analysis", json=analysis)
    assert r.status_code == 409  # not completed yet
    await client.post(f"/api/interviews/{iid}/complete")
    fields = error_fields(await client.put(f"/api/interviews/{iid}/analysis", json={
        "sentiment": {"overall": 2, "timeline": [{"at_s": -1, "score": 0}]}, "competency": {"communication": 9},
        "overall": {"recommendation": "maybe"}, "keywords": [{"count": 1}]}))
    assert set(fields) == {"sentiment.overall", "sentiment.timeline[0].at_s", "competency.communication",
                           "overall.recommendation", "keywords[0].term"}
    r = await client.put(f"/api/interviews/{iid}/analysis", json=analysis)
    assert r.status_code == 200 and r.json()["status"] == "completed"
    got = (await client.get(f"/api/interviews/{iid}/analysis")).json()
    # the default jurisdiction (eu) shows no tone of words until the organisation turns it on
    assert got["sentiment"] == {"overall": None, "timeline": []} and got["competency"] == {"communication": 4.0}
    assert (await client.patch("/api/organisation", json={"toneEnabled": True})).status_code == 200
    got = (await client.get(f"/api/interviews/{iid}/analysis")).json()
    assert got["sentiment"]["overall"] == 0.3 and got["competency"] == {"communication": 4.0}


async def test_candidates(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/candidates", json={"name": "Grace Hopper", "email": "grace@example.com",
                                                   "resume": {"skills": ["cobol"], "experience": 30}})
    assert r.status_code == 201
    cid = r.json()["candidateId"]
    assert r.headers["location"] == f"/api/candidates/{cid}"
    dup = await client.post("/api/candidates", json={"name": "Other", "email": "GRACE@example.com"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "duplicate"
    fields = error_fields(await client.post("/api/candidates", json={
        "name": "", "email": "not-an-email", "phone": "call me", "resume": {"url": "ftp://x", "experience": -1}}))
    assert set(fields) == {"name", "email", "phone", "resume.url", "resume.experience"}
    assert set(error_fields(await client.patch(f"/api/candidates/{cid}", json={}))) == {"body"}
    r = await client.patch(f"/api/candidates/{cid}", json={"phone": "+1 555 0100", "version": 1})
    assert r.status_code == 200 and r.json()["phone"] == "+1 555 0100" and r.json()["resume"]["skills"] == ["cobol"]
    assert (await client.patch(f"/api/candidates/{cid}", json={"name": "G", "version": 1})).status_code == 409
    await create(client, candidateId=cid)
    got = (await client.get(f"/api/candidates/{cid}")).json()
    assert len(got["interviews"]) == 1 and got["metadata"]["version"] == 2
    listed = (await client.get("/api/candidates", params={"limit": "10"})).json()
    assert [c["candidateId"] for c in listed["items"]] == [cid] and listed["nextCursor"] is None


async def test_openapi_document(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json", headers={"Authorization": ""})
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.")
    for path in ("/api/interviews", "/api/interviews/{interview_id}", "/api/interviews/{interview_id}/start",
                 "/api/interviews/{interview_id}/transcript", "/api/candidates", "/api/interviews/{interview_id}/tokens"):
        assert path in spec["paths"], path
    # Every $ref resolves.
    refs = {m for m in json.dumps(spec).split('"') if m.startswith("#/components/schemas/")}
    assert refs and all(ref.rsplit("/", 1)[1] in spec["components"]["schemas"] for ref in refs)


async def test_database_outage_is_503_and_recovers_nothing_silently(tmp_path: Path) -> None:
    embedded = EmbeddedMongo(tmp_path)
    store = await MongoStore.connect(await embedded.start(), timeout_s=0.5)
    app = (await api_app(store, InterviewService(store), tmp_path)).app
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test",
                                     headers=AUTH) as client:
            iid = (await create(client))["interviewId"]
            await embedded.stop()
            for method, path in [("GET", f"/api/interviews/{iid}"), ("POST", "/api/interviews"),
                                 ("POST", f"/api/interviews/{iid}/start"), ("GET", "/api/candidates")]:
                r = await client.request(method, path, json=NEW if path == "/api/interviews" else None)
                assert r.status_code == 503, (method, path, r.text)
                assert r.json()["error"]["code"] == "unavailable" and r.headers["retry-after"] == "1"
    finally:
        await store.close()
        await embedded.stop()
