"""The real service, in-process on a free loopback port, for the WebRTC and server tests.

`live_server(settings)` runs `server.create_app` under uvicorn (lifespan included) on a socket bound to
port 0, yields once uvicorn reports it started, and shuts it down gracefully (the same path as SIGTERM).
`test_settings` is the one place tests build `Settings`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from server import Components, create_app, uvicorn_options
from settings import Settings
from testing.net import Served, serve

ADMIN_KEY = "test-admin-key-0123456789"
TOKEN_SECRET = "test-token-secret-0123456789abcdef"


def test_settings(tmp_path: Path, mongo_url: str, **overrides: Any) -> Settings:
    """Settings for one test: data under `tmp_path`, a fresh database on `mongo_url`, known secrets, short
    resume grace and partial interval; `overrides` replace any of them."""
    fields: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "mongodb_url": mongo_url,
        "mongodb_db": f"test_{uuid.uuid4().hex[:16]}",
        "admin_api_key": ADMIN_KEY,
        "token_secret": TOKEN_SECRET,
        "resume_grace_s": 0.5,
        "partial_interval_s": 1.0,
        # tests join, mint and call far more often than people do; the limits' own tests set them tight
        "whip_join_limit": "100000/minute",
        "token_mint_limit": "100000/minute",
        "api_key_limit": "1000000/minute",
    }
    return Settings(**{**fields, **overrides})


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@dataclass
class LiveServer:
    url: str
    app: Any
    http: httpx.AsyncClient  # base_url is the server, authorized as admin
    served: Served

    async def stop(self) -> None:
        """Graceful shutdown, as on SIGTERM: uvicorn stops serving, then the lifespan drains and closes."""
        await self.served.stop()

    @property
    def components(self) -> Components:
        return self.app.state.components  # type: ignore[no-any-return]

    async def create_interview(self) -> str:
        r = await self.http.post("/api/interviews", json={
            "candidateId": "cand-1", "jobId": "job-1", "scheduledAt": datetime.now(UTC).isoformat()})
        assert r.status_code == 201, r.text
        return str(r.json()["interviewId"])

    async def token(self, interview_id: str, role: str, name: str) -> dict[str, Any]:
        r = await self.http.post(f"/api/interviews/{interview_id}/tokens", json={"role": role, "name": name})
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def dialogue_interview(self, name: str = "security_positive", headers: dict[str, str] | None = None,
                                 **fields: Any) -> tuple[str, list[dict[str, Any]]]:
        """An interview whose stored transcript is the shared dialogue's ground truth (one final per turn), in
        progress; returns its id and stored segments. Completing it starts its analysis. `headers`: the caller
        (default: the admin key of the default organisation); `fields`: more of the interview (interviewers)."""
        import json

        from domain.events import SegmentEvent, Speaker
        from testing.data import SHARED_DATA

        truth = json.loads((SHARED_DATA / f"{name}.json").read_text())
        questions = [{"text": t["text"], "category": "security", "expectedKeywords": truth["keywords"]}
                     for t in truth["turns"] if t["speaker"] == "interviewer"][:1]
        r = await self.http.post("/api/interviews", json={"candidateId": "cand-1", "jobId": "job-1",
                                                          "scheduledAt": "2030-01-01T09:00:00Z",
                                                          "questions": questions, **fields}, headers=headers)
        assert r.status_code == 201, r.text
        iid = r.json()["interviewId"]
        await self.http.post(f"/api/interviews/{iid}/start", headers=headers)
        service = self.components.service
        assert service is not None
        seqs = {"interviewer": 0, "candidate": 0}
        for turn in truth["turns"]:
            role = turn["speaker"]
            speaker = Speaker(role, "Ivy Stone" if role == "interviewer" else "Cam Doe", f"p_{role}")
            await service.record_segment(iid, SegmentEvent(speaker=speaker, seq=seqs[role], start_s=turn["start_s"],
                                                           end_s=turn["end_s"], text=turn["text"], final=True))
            seqs[role] += 1
        return iid, (await self.http.get(f"/api/interviews/{iid}/transcript", headers=headers)).json()["segments"]

    async def analysis_done(self, iid: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """GET .../analysis once the interview's running analysis job (if any) has finished."""
        jobs = self.components.analysis
        assert jobs is not None
        await jobs.wait(iid)
        r = await self.http.get(f"/api/interviews/{iid}/analysis", headers=headers)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0.0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = (await self.http.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0


@contextlib.asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    app = create_app(settings)
    async with serve(app, lifespan="on", **uvicorn_options(settings)) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30,
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            yield LiveServer(served.url, app, http, served)
