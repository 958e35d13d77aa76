"""Jurisdiction policy per organisation and human review of scorecards, in the running service (uvicorn over
nx-27017): one test per policy shows what is computed and what is shown.

Each test makes its own organisation (`create_admin`), with an admin, an hr user and an assigned interviewer
signed in, and a completed interview whose transcript is a shared dialogue (the local heuristic analyser scores
it: no provider is configured).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testing.live_server import LiveServer, live_server, test_settings

PASSWORD = "correct horse battery staple"


@dataclass
class Org:
    server: LiveServer
    org_id: str
    as_admin: dict[str, str]
    as_hr: dict[str, str]
    as_interviewer: dict[str, str]
    hr_id: str
    interviewer_id: str
    iid: str = ""
    segments: list[dict[str, Any]] | None = None

    async def call(self, method: str, path: str, who: dict[str, str], **kwargs: Any) -> Any:
        return await self.server.http.request(method, path, headers=who, **kwargs)

    async def review(self, body: dict[str, Any], who: dict[str, str] | None = None) -> Any:
        return await self.call("POST", f"/api/interviews/{self.iid}/analysis/review", who or self.as_hr, json=body)

    async def analysis(self, **params: str) -> dict[str, Any]:
        r = await self.call("GET", f"/api/interviews/{self.iid}/analysis", self.as_hr, params=params)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


async def sign_in(server: LiveServer, email: str) -> dict[str, str]:
    r = await server.http.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['accessToken']}"}


async def make_org(server: LiveServer, name: str) -> Org:
    """A new organisation with its admin, hr and an interviewer, and a completed, analysed interview."""
    accounts = server.components.accounts
    assert accounts is not None
    slug = name.lower().replace(" ", "")
    admin = await accounts.create_admin(f"admin@{slug}.example", name, PASSWORD)
    as_admin = await sign_in(server, f"admin@{slug}.example")
    ids = {}
    for role in ("hr", "interviewer"):
        r = await server.http.post("/api/users", headers=as_admin, json={
            "email": f"{role}@{slug}.example", "role": role, "name": role.title(), "password": PASSWORD})
        assert r.status_code == 201, r.text
        ids[role] = r.json()["userId"]
    org = Org(server, admin.org_id, as_admin, await sign_in(server, f"hr@{slug}.example"),
              await sign_in(server, f"interviewer@{slug}.example"), ids["hr"], ids["interviewer"])
    return org


async def analysed(org: Org) -> Org:
    org.iid, org.segments = await org.server.dialogue_interview(headers=org.as_hr,
                                                                interviewers=[org.interviewer_id])
    r = await org.call("POST", f"/api/interviews/{org.iid}/complete", org.as_hr)
    assert r.status_code == 200, r.text
    view = await org.server.analysis_done(org.iid, headers=org.as_hr)
    assert view["status"] == "completed" and view["aggregate"]["competencies"]
    return org


@pytest.fixture
async def server(tmp_path: Path, mongo_url: str) -> AsyncIterator[LiveServer]:
    # JURISDICTION left at its default (eu): the policy of every organisation that has not chosen one
    async with live_server(test_settings(tmp_path, mongo_url)) as live:
        yield live


def scores(view: dict[str, Any]) -> dict[str, float | None]:
    return {c["name"]: c["score"] for c in view["aggregate"]["competencies"]}


def edited(view: dict[str, Any], score: float) -> dict[str, Any]:
    """The aggregate as the report page sends it back: every competency scored `score`, overall 55."""
    card = dict(view["aggregate"])
    card["competencies"] = [{**c, "score": score} for c in card["competencies"]]
    return {**card, "overall": 55, "recommendation": "hire", "strengths": ["clear incident account"]}


async def audited(org: Org, count: int) -> list[dict[str, Any]]:
    """The organisation's audit entries of review_analysis on the interview, once `count` are written."""
    for _ in range(200):
        r = await org.call("GET", "/api/audit", org.as_admin, params={"resource": org.iid})
        items = [e for e in r.json()["items"] if e["action"] == "review_analysis" and e["outcome"] == "ok"]
        if len(items) >= count:
            return items
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {len(items)} review entries audited")


async def test_eu_nothing_is_final_until_a_reviewer_confirms(server: LiveServer) -> None:
    org = await analysed(await make_org(server, "Euro Co"))
    # a new organisation has the service's JURISDICTION (eu): tone off, no candidate notice
    settings = (await org.call("GET", "/api/organisation", org.as_admin)).json()
    assert settings["jurisdiction"] == "eu" and settings["tone"] is False and settings["candidateNotice"] is None
    assert (await org.call("GET", "/api/organisation", org.as_hr)).status_code == 403

    machine = await org.analysis()
    assert machine["version"] == "machine" and machine["review"]["status"] == "unreviewed"
    assert machine["policy"]["final"] is False and machine["policy"]["advisory"] is True
    assert machine["policy"]["label"].startswith("advisory") and machine["policy"]["tone"] is False
    assert any(s is not None for s in scores(machine).values())  # computed and shown, as advisory
    token = (await org.call("POST", f"/api/interviews/{org.iid}/tokens", org.as_hr, json={"role": "observer"}))
    assert token.status_code == 409  # completed: no one joins any more; the notice is asked before joining

    # who may review: hr and admin; an interviewer is refused, another organisation is told it does not exist
    assert (await org.review({"action": "confirm"}, org.as_interviewer)).status_code == 403
    other = await make_org(server, "Other Co")
    assert (await org.review({"action": "confirm"}, other.as_admin)).status_code == 404

    # edits are validated by the schema (scores 0..5, overall 0..100) and against the transcript
    assert (await org.review({"action": "edit", "scorecard": edited(machine, 6)})).status_code == 422
    r = await org.review({"action": "edit", "scorecard": {**edited(machine, 3), "overall": 101}})
    assert r.status_code == 422 and "scorecard.overall" in r.json()["error"]["fields"]
    invented = edited(machine, 3)
    invented["competencies"][0]["evidence"] = [{"participantId": "p_candidate", "seq": 0,
                                                "quote": "I single-handedly rewrote the kernel"}]
    r = await org.review({"action": "edit", "scorecard": invented})
    assert r.status_code == 422 and r.json()["error"]["fields"] == {
        "scorecard.competencies.0.evidence.0.quote": "not in the segment it cites"}
    assert (await org.review({"action": "edit"})).status_code == 422  # an edit needs its scorecard
    assert (await org.review({"action": "approve"})).status_code == 422

    # an edit is a draft: still the machine version, still not final
    r = await org.review({"action": "edit", "scorecard": edited(machine, 3), "note": "evidence is thin"})
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["review"]["status"] == "edited" and view["version"] == "machine" and not view["policy"]["final"]
    # confirmed: the reviewer's scorecard is what GET returns by default, final; the machine's one call away
    r = await org.review({"action": "confirm", "note": "discussed with the panel"}, org.as_admin)
    assert r.status_code == 200
    confirmed = await org.analysis()
    assert confirmed["version"] == "confirmed" and confirmed["policy"]["final"] is True
    assert set(scores(confirmed).values()) == {3} and confirmed["aggregate"]["overall"] == 55
    assert confirmed["aggregate"]["basis"] == ["reviewer"]
    assert scores(await org.analysis(version="machine")) == scores(machine)
    history = confirmed["review"]["history"]
    assert [h["action"] for h in history] == ["edit", "confirm"]
    assert history[0]["by"] == f"user:{org.hr_id}" and history[0]["before"]["status"] == "unreviewed"
    assert history[0]["after"]["scorecard"]["overall"] == 55 and history[1]["note"] == "discussed with the panel"
    assert all(h["at"].endswith("Z") for h in history)

    # rejected: the status says so and, in the eu, no score or recommendation is shown
    r = await org.review({"action": "reject", "note": "transcript incomplete"})
    assert r.status_code == 200
    rejected = await org.analysis()
    assert rejected["review"]["status"] == "rejected" and rejected["policy"]["scoresHidden"] is True
    assert set(scores(rejected).values()) == {None} and rejected["aggregate"]["overall"] is None
    assert rejected["aggregate"]["recommendation"] == "undecided" and not rejected["policy"]["final"]
    assert all(p["scorecard"] is None or {c["score"] for c in p["scorecard"]["competencies"]} == {None}
               for p in rejected["providers"])
    assert set(scores(await org.analysis(version="machine")).values()) == {None}

    # every change is audited (who, what; never the note); the review text is encrypted at rest
    entries = await audited(org, 3)
    assert {e["detail"]["review"] for e in entries} == {"edit", "confirm", "reject"}
    assert all("transcript incomplete" not in str(e) for e in entries)
    store = server.components.store
    assert store is not None
    raw = await store.db["analyses"].find_one({"_id": org.iid})
    assert raw is not None
    for sealed in (raw["review"]["history"], raw["review"]["note"], raw["review"]["scorecard"], raw["turns"]):
        assert isinstance(sealed, str) and sealed.startswith("enc1:")
    said = next(x["text"] for x in org.segments or () if x["speaker"]["role"] == "candidate")
    assert "the panel" not in str(raw) and "clear incident account" not in str(raw) and said[:30] not in str(raw)


async def test_us_nyc_candidate_notice_and_score_export(server: LiveServer) -> None:
    org = await make_org(server, "Gotham Co")
    assert (await org.call("PATCH", "/api/organisation", org.as_hr, json={"jurisdiction": "us-nyc"})
            ).status_code == 403
    assert (await org.call("PATCH", "/api/organisation", org.as_admin, json={"jurisdiction": "nyc"})
            ).status_code == 422
    r = await org.call("PATCH", "/api/organisation", org.as_admin, json={
        "jurisdiction": "us-nyc", "biasAuditDate": "2026-03-01",
        "alternativeProcessContact": "accommodations@gotham.example"})
    assert r.status_code == 200, r.text
    assert r.json()["candidateNotice"]["biasAuditDate"] == "2026-03-01" and r.json()["tone"] is True

    # the candidate's page is told, before joining, what Local Law 144 requires it to show
    r = await org.call("POST", "/api/interviews", org.as_hr, json={
        "candidateId": "cand-1", "jobId": "job-1", "scheduledAt": "2030-01-01T09:00:00Z"})
    join = (await org.call("POST", f"/api/interviews/{r.json()['interviewId']}/tokens", org.as_hr,
                           json={"role": "candidate"})).json()
    notice = (await org.call("GET", "/api/notice", {"Authorization": f"Bearer {join['token']}"})).json()
    assert notice["jurisdiction"] == "us-nyc" and notice["advisory"] is True
    assert notice["candidateNotice"]["automatedTool"] is True and "automated" in notice["candidateNotice"]["text"]
    assert notice["candidateNotice"]["alternativeProcessContact"] == "accommodations@gotham.example"
    page = (await server.http.get("/static/candidate.js")).text
    assert "/api/notice" in page and "alternativeProcessContact" in page
    assert 'id="aedt"' in (await server.http.get(join["joinUrl"].removeprefix(server.url))).text

    # scores are computed and shown as final (advisory) without a review; they are exportable for the audit
    await analysed(org)
    view = await org.analysis()
    assert view["policy"]["final"] is True and view["policy"]["label"] == "advisory"
    exported = (await org.call("GET", "/api/analysis/export", org.as_hr)).json()
    assert exported["jurisdiction"] == "us-nyc"
    row = next(i for i in exported["items"] if i["interviewId"] == org.iid)
    assert row["competencies"] == scores(view) and row["overall"] == view["aggregate"]["overall"]
    assert row["reviewStatus"] == "unreviewed" and row["final"] is True and row["advisory"] is True
    r = await org.call("GET", "/api/analysis/export", org.as_hr, params={"format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["interviewId"] for x in rows] == [org.iid]
    assert float(rows[0]["overall"]) == view["aggregate"]["overall"]
    assert (await org.call("GET", "/api/analysis/export", org.as_hr, params={"from": "2031-01-01T00:00:00Z"})
            ).json()["items"] == []
    assert (await org.call("GET", "/api/analysis/export", org.as_interviewer)).status_code == 403
    # another organisation's export does not hold this interview
    other = await make_org(server, "Elsewhere Inc")
    assert (await other.call("GET", "/api/analysis/export", other.as_admin)).json()["items"] == []

    # a rejection outside the eu: the status says so and the analysis is no longer final; scores stay visible
    assert (await org.review({"action": "reject"})).status_code == 200
    rejected = await org.analysis()
    assert rejected["review"]["status"] == "rejected" and rejected["policy"]["final"] is False
    assert scores(rejected) == scores(view)


async def test_none_computed_and_shown_still_advisory(server: LiveServer) -> None:
    org = await make_org(server, "Plain Co")
    r = await org.call("PATCH", "/api/organisation", org.as_admin, json={"jurisdiction": "none",
                                                                         "toneEnabled": False})
    assert r.status_code == 200 and r.json()["tone"] is False  # an organisation may turn the tone off anywhere
    assert (await org.call("PATCH", "/api/organisation", org.as_admin, json={"toneEnabled": None})
            ).json()["tone"] is True  # back to the jurisdiction's default
    await analysed(org)
    view = await org.analysis()
    assert view["policy"] == {"jurisdiction": "none", "advisory": True, "final": True, "label": "advisory",
                              "scoresHidden": False, "tone": True}
    assert any(s is not None for s in scores(view).values())
    r = await org.call("POST", f"/api/interviews/{org.iid}/tokens", org.as_hr, json={"role": "candidate"})
    assert r.status_code == 409  # (completed) the notice of another interview of this organisation:
    fresh = (await org.call("POST", "/api/interviews", org.as_hr, json={
        "candidateId": "cand-1", "jobId": "job-1", "scheduledAt": "2030-01-01T09:00:00Z"})).json()["interviewId"]
    join = (await org.call("POST", f"/api/interviews/{fresh}/tokens", org.as_hr, json={"role": "candidate"})).json()
    notice = (await org.call("GET", "/api/notice", {"Authorization": f"Bearer {join['token']}"})).json()
    assert notice["candidateNotice"] is None and notice["tone"] is True
    # confirming with a scorecard in one step
    card = edited(view, 4)
    r = await org.review({"action": "confirm", "scorecard": card})
    assert r.status_code == 200 and r.json()["version"] == "confirmed"
    assert set(scores(r.json()).values()) == {4}


def test_export_csv_cells_that_start_like_a_formula_are_text() -> None:
    from adapters.http_api import export_csv

    row = {"interviewId": "iv-1", "candidateId": "c-1", "scheduledAt": None, "completedAt": None,
           "analysisStatus": "completed", "reviewStatus": "confirmed", "version": "confirmed", "final": True,
           "advisory": True, "overall": 70, "recommendation": "hire", "competencies": {"sql": 4}}
    jobs = ["=HYPERLINK(\"http://x.test\")", "+1", "-1+2", "@SUM(A1)", "\t=1+1", "\r=1+1", "backend-dev"]
    text = export_csv([{**row, "jobId": job} for job in jobs])
    cells = [r["jobId"] for r in csv.DictReader(io.StringIO(text))]
    assert cells == ["'" + job for job in jobs[:-1]] + ["backend-dev"]
    assert [r["competency:sql"] for r in csv.DictReader(io.StringIO(text))] == ["4"] * len(jobs)
