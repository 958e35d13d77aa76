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

from server import UVICORN_LIMITS, Components, create_app
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
    async with serve(app, lifespan="on", **UVICORN_LIMITS) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30,
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            yield LiveServer(served.url, app, http, served)
