"""Privacy through the running service: a whole interview over WebRTC leaves no personal data in plain text on disk
(embedded store, JetStream), before or after erasure; export, erasure and their signed receipts; no audio is
processed before consent; the server refuses to start without its master key."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.crypto import is_sealed, key_id_of
from adapters.tokens import JoinClaims, Revocations
from domain.events import SegmentEvent, Speaker
from server import verify_receipt_command
from testing.live_server import LiveServer, live_server, test_settings
from testing.nats import NatsServer
from testing.whip_client import WavChannelTrack, WhipSession, give_consent, whip_publish, withdraw_consent

ROOT = Path(__file__).resolve().parents[1]
NAME, EMAIL, PHONE = "Philippa Quarrington", "philippa.quarrington@example.net", "+44 7700 900461"


async def metric_sum(live: LiveServer, name: str, **labels: str) -> float:
    text = (await live.http.get("/metrics")).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def hits(roots: list[Path], needles: list[str]) -> dict[str, list[str]]:
    """Which files under `roots` contain each needle (case-insensitive, UTF-8)."""
    found: dict[str, list[str]] = {}
    files = [p for root in roots for p in root.rglob("*") if p.is_file()]
    assert files, f"nothing under {roots}"
    for path in files:
        data = path.read_bytes().lower()
        for needle in needles:
            if needle.lower().encode() in data:
                found.setdefault(needle, []).append(str(path))
    return found


async def create_candidate(live: LiveServer) -> tuple[str, str]:
    r = await live.http.post("/api/candidates", json={"personalInfo": {"name": NAME, "email": EMAIL, "phone": PHONE},
                                                      "notes": "prefers mornings"})
    assert r.status_code == 201, r.text
    cid = r.json()["candidateId"]
    r = await live.http.post("/api/interviews", json={"candidateId": cid, "jobId": "job-7",
                                                      "scheduledAt": "2030-01-01T09:00:00Z"})
    assert r.status_code == 201, r.text
    return cid, r.json()["interviewId"]


async def jetstream_payloads(server: NatsServer) -> list[dict[str, Any]]:
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("INTERVIEWS")
        return [json.loads((await js.get_msg("INTERVIEWS", seq)).data)
                for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    finally:
        await nc.close()


def sealed_values(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in sealed_values(v)]
    if isinstance(value, list):
        return [s for v in value for s in sealed_values(v)]
    return [value] if is_sealed(value) else []


@pytest.mark.slow
async def test_plain_text_hunt_over_a_whole_interview(tmp_path: Path, mongo_url: str, nats_server: NatsServer,
                                                      shared_data: Path) -> None:
    wav = shared_data / "security_positive.stereo.wav"
    settings = test_settings(tmp_path, mongo_url, mongodb_url=None, nats_url=nats_server.url)
    roots = [settings.data_dir, nats_server.store_dir]
    received: list[dict[str, Any]] = []
    async with live_server(settings) as live:
        cid, iid = await create_candidate(live)
        tok_i = await live.token(iid, "interviewer", "Ivy Interviewer")
        tok_c = await live.token(iid, "candidate", NAME)  # the display name is personal data too
        whip = f"{live.url}/whip/{iid}"
        interviewer = await whip_publish(whip, tok_i["token"], track=WavChannelTrack(wav, 0), analysis=True)
        candidate = await whip_publish(whip, tok_c["token"], track=WavChannelTrack(wav, 1))
        await asyncio.gather(*(s.pc.getSenders()[0].track.wait_finished() for s in (interviewer, candidate)))
        await candidate.close()
        async with asyncio.timeout(60):
            while not any(e["type"] == "participant.left" for e in received):
                received.append(await interviewer.events.get())
        await interviewer.close()
        transcript = (await live.http.get(f"/api/interviews/{iid}/transcript")).json()["segments"]
    # the live overlay got plain text over DTLS, and so does the API
    def phrases_of(texts: list[str]) -> list[str]:
        return [" ".join(text.split()[:4]) for text in texts if len(text.split()) >= 4][:3]

    live_finals = [e["text"] for e in received if e["type"] == "segment.final" and e["speaker"]["role"] == "candidate"]
    phrases = phrases_of([s["text"] for s in transcript if s["speaker"]["role"] == "candidate"])  # revised, if so
    assert len(phrases) == 3 and len(phrases_of(live_finals)) == 3, transcript
    assert NAME in {s["speaker"]["name"] for s in transcript}
    needles = [NAME, EMAIL, PHONE, *phrases, *phrases_of(live_finals)]
    assert hits(roots, needles) == {}  # the server is stopped: everything it wrote is on disk
    assert set(hits(roots, ["job-7", "InterviewScheduled"])) == {"job-7", "InterviewScheduled"}  # the hunt can see
    payloads = await jetstream_payloads(nats_server)
    assert {p["type"] for p in payloads} >= {"InterviewScheduled", "SegmentTranscribed"}

    async with live_server(settings) as live:  # the same data directory and master key
        r = await live.http.delete(f"/api/candidates/{cid}", params={"reason": "candidate asked"})
        assert r.status_code == 200, r.text
        assert r.json()["receipt"]["counts"]["segments"] == len(transcript)
        got = (await live.http.get(f"/api/interviews/{iid}")).json()
        assert got["status"] == "cancelled" and got["transcription"]["segments"] == [] and got["dataErasedAt"]
        assert NAME not in json.dumps(got) and EMAIL not in json.dumps(got)
        assert (await live.http.get(f"/api/candidates/{cid}")).status_code == 404
        keyring = live.components.store.keyring if live.components.store else None
        assert keyring is not None
        payloads = await jetstream_payloads(nats_server)
        sealed = [s for p in payloads for s in sealed_values(p)]
        assert sealed
        assert {await keyring.data_key_by_id(key_id_of(s)) for s in sealed} == {None}
        assert any(p["type"] == "InterviewDataErased" for p in payloads)
    assert hits(roots, needles) == {}


async def test_export_then_erase_then_export(tmp_path: Path, mongo_url: str) -> None:
    async with live_server(test_settings(tmp_path, mongo_url)) as live:
        cid, iid = await create_candidate(live)
        join = await live.token(iid, "candidate", NAME)
        assert await give_consent(live.http, f"{live.url}/whip/{iid}", join["token"]) == 204
        service = live.components.service
        assert service is not None
        speaker = Speaker("candidate", NAME, join["participantId"])
        await service.start_interview(iid)
        for seq, text in enumerate(("I kept the lighthouse logs", "Nights were quiet mostly")):
            await service.record_segment(iid, SegmentEvent(speaker, seq, seq * 3.0, seq * 3.0 + 2, text, True))
        await service.record_revision(iid, SegmentEvent(speaker, 1, 3.0, 5.0, "Nights were quiet, mostly", True,
                                                        revision=1))
        await service.complete_interview(iid)
        assert (await live.http.put(f"/api/interviews/{iid}/analysis", json={
            "overall": {"summary": "Calm and precise", "score": 80}})).status_code == 200

        r = await live.http.get(f"/api/candidates/{cid}/export", headers={"X-Request-Id": "req-export-1"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        export_receipt = json.loads(r.headers["Interview-Worker-Receipt"])
        assert export_receipt["receipt"]["archiveSha256"] == hashlib.sha256(r.content).hexdigest()
        assert export_receipt["receipt"]["requestId"] == "req-export-1"
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            content = json.loads(zf.read("export.json"))
            summary = zf.read("summary.html").decode()
        # complete: what the API shows, plus revisions and consent records
        assert content["profile"] == (await live.http.get(f"/api/candidates/{cid}")).json()
        interview = (await live.http.get(f"/api/interviews/{iid}")).json()
        exported = content["interviews"][0]
        assert {k: v for k, v in exported.items() if k not in ("revisions", "consents", "guidance")} == interview
        assert [rev["text"] for rev in exported["revisions"]] == ["Nights were quiet, mostly"]
        assert [(c["action"], c["noticeVersion"], c["name"]) for c in exported["consents"]] == [
            ("accepted", "2026-01", NAME)]
        assert exported["consents"][0]["address"] == "127.0.0.1"
        assert NAME in summary and "Calm and precise" in summary and "lighthouse logs" in summary

        erased = await live.http.delete(f"/api/candidates/{cid}", params={"reason": "asked by email"})
        assert erased.status_code == 200
        # every token of the interview is revoked through the store: a node holding its room ends it too
        other_node = Revocations(live.components.accounts_store)
        await other_node.load()
        assert other_node.is_revoked(JoinClaims(iid, join["participantId"], "candidate", NAME, 0, "any-jti"))
        assert erased.json()["receipt"]["counts"] | {"segments": 2, "revisions": 1, "consents": 1,
                                                      "candidate": 1, "dataKey": 1} == erased.json()["receipt"]["counts"]
        again = await live.http.get(f"/api/candidates/{cid}/export")
        assert again.status_code == 410 and again.json()["error"]["receiptId"] == erased.json()["receipt"]["id"]
        twice = await live.http.delete(f"/api/candidates/{cid}", params={"reason": "again"})
        assert twice.status_code == 404 and twice.json()["error"]["receiptId"] == erased.json()["receipt"]["id"]
        assert (await live.http.delete("/api/candidates/nobody", params={"reason": "x"})).status_code == 404
        jwks = (await live.http.get("/.well-known/interview-worker-keys")).json()

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(jwks))
    for name, signed in (("export.json", export_receipt), ("erasure.json", erased.json())):
        path = tmp_path / name
        path.write_text(json.dumps(signed))
        assert verify_receipt_command([str(path), "--keys", str(keys)]) == 0
        text = path.read_text()
        changed = text.replace('"candidate', '"Candidate', 1)  # one changed byte
        assert changed != text
        path.write_text(changed)
        assert verify_receipt_command([str(path), "--keys", str(keys)]) == 1


@pytest.mark.slow
async def test_no_audio_is_processed_before_consent(tmp_path: Path, mongo_url: str, shared_data: Path) -> None:
    async with live_server(test_settings(tmp_path, mongo_url)) as live:
        iid = await live.create_interview()
        tok_o = await live.token(iid, "observer", "Olga Observer")
        tok_c = await live.token(iid, "candidate", "Cat")
        whip = f"{live.url}/whip/{iid}"
        observer = await whip_publish(whip, tok_o["token"], track=None, analysis=True)
        candidate: WhipSession = await whip_publish(whip, tok_c["token"], consent=False,
                                                    track=WavChannelTrack(shared_data / "jfk.flac", tail_s=0.5))
        await candidate.pc.getSenders()[0].track.wait_finished()  # 11 s of speech
        for _ in range(100):  # the last packets may still be on their way (no event says they arrived)
            if await metric_sum(live, "audio_frames_dropped_total", reason="no_consent") >= 400:
                break
            await asyncio.sleep(0.1)
        assert await metric_sum(live, "audio_frames_dropped_total", reason="no_consent") >= 400
        assert await metric_sum(live, "stt_decodes_total") == 0
        assert await metric_sum(live, "audio_seconds_total") == 0
        assert (await live.http.get(f"/api/interviews/{iid}/transcript")).json()["segments"] == []

        # Consent given while connected: the viewers are told; after it, the words arrive.
        assert await give_consent(live.http, whip, tok_c["token"]) == 204
        received: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while not any(e["type"] == "consent.given" for e in received):
                received.append(await observer.events.get())
        await candidate.close()
        candidate = await whip_publish(whip, tok_c["token"], track=WavChannelTrack(shared_data / "jfk.flac"))
        async with asyncio.timeout(90):
            while not any(e["type"] == "segment.final" and "country" in e["text"] for e in received):
                received.append(await observer.events.get())
        # Withdrawing stops processing at once, and the viewers are told.
        assert await withdraw_consent(live.http, whip, tok_c["token"]) == 204
        async with asyncio.timeout(10):
            while not any(e["type"] == "consent.withdrawn" for e in received):
                received.append(await observer.events.get())
        await candidate.close()
        await observer.close()


def test_a_missing_master_key_stops_the_server_with_a_clear_message(tmp_path: Path, mongo_url: str) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "MONGODB_URL": mongo_url, "PORT": "0",
           "MONGODB_DB": f"test_{os.urandom(6).hex()}", "ADMIN_API_KEY": "test-admin-key-0123456789",
           "MASTER_KEY_FILE": str(tmp_path / "master_key")}

    async def seed() -> None:  # a database with encrypted data under a key that is then lost
        from adapters.mongo import MongoStore
        from domain.commands import CreateCandidate, InterviewService

        store = await MongoStore.connect(mongo_url, db_name=env["MONGODB_DB"], key_file=tmp_path / "master_key")
        await InterviewService(store).create_candidate(CreateCandidate.parse({"name": NAME, "email": EMAIL}))
        await store.close()

    asyncio.run(seed())
    (tmp_path / "master_key").unlink()
    proc = subprocess.run([sys.executable, str(ROOT / "server.py")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "refusing to start" in proc.stderr and "MASTER_KEY_FILE" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "master_key").exists()


async def test_consent_needs_a_join_token_and_an_open_interview(tmp_path: Path, mongo_url: str) -> None:
    async with live_server(test_settings(tmp_path, mongo_url)) as live:
        iid = await live.create_interview()
        tok = (await live.token(iid, "candidate", "Cat"))["token"]
        async with httpx.AsyncClient(base_url=live.url) as anon:
            body = {"noticeVersion": "2026-01", "accepted": True}
            assert (await anon.post("/api/consent", json=body)).status_code == 401
            assert (await anon.post("/api/consent", json=body, headers={"Authorization": "Bearer nope"})
                    ).status_code == 401
            bad = await anon.post("/api/consent", json={"accepted": "yes"}, headers={"Authorization": f"Bearer {tok}"})
            assert bad.status_code == 422 and set(bad.json()["error"]["fields"]) == {"noticeVersion", "accepted"}
            await live.http.post(f"/api/interviews/{iid}/cancel")  # cancelling revokes the interview's tokens
            closed = await anon.post("/api/consent", json=body, headers={"Authorization": f"Bearer {tok}"})
            assert closed.status_code == 401 and closed.json()["error"]["message"] == "token revoked"


@pytest.mark.slow
async def test_consent_withdrawn_mid_call_marks_the_transcript_and_no_log_line_holds_personal_data(
        tmp_path: Path, mongo_url: str, shared_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A candidate withdraws consent after their first answer and gives it again before their last: their second
    answer is never transcribed, the interviewer's overlay and the stored transcript are marked where it happened.
    All the while, at DEBUG, no log line holds their name, email, phone or any words said."""
    for logger in ("adapters", "pipeline", "domain", "server", "uvicorn"):
        caplog.set_level("DEBUG", logger=logger)
    wav = shared_data / "security_positive.stereo.wav"  # candidate answers at 5-12.5 s, 16.5-23.7 s, 28.5-36.6 s
    received: list[dict[str, Any]] = []
    # STT in threads of this process, so its log lines are captured too
    async with live_server(test_settings(tmp_path, mongo_url, stt_subprocess=False)) as live:
        cid, iid = await create_candidate(live)
        # API paths whose errors are logged: a duplicate candidate email, a bad one, a duplicate user email
        assert (await live.http.post("/api/candidates", json={"name": NAME, "email": EMAIL})).status_code == 409
        bad = await live.http.post("/api/candidates", json={"name": NAME, "email": f"{PHONE} at home"})
        assert bad.status_code == 422
        user = {"email": EMAIL, "role": "hr", "name": NAME, "password": "a long passphrase"}
        assert (await live.http.post("/api/users", json=user)).status_code == 201
        assert (await live.http.post("/api/users", json=user)).status_code == 409
        assert (await live.http.get(f"/api/candidates/{cid}/export")).status_code == 200

        tok_i = await live.token(iid, "interviewer", "Ivy Interviewer")
        tok_c = await live.token(iid, "candidate", NAME)
        whip = f"{live.url}/whip/{iid}"
        interviewer = await whip_publish(whip, tok_i["token"], track=WavChannelTrack(wav, 0), analysis=True)
        candidate = await whip_publish(whip, tok_c["token"], track=WavChannelTrack(wav, 1))

        async def until(found: Any, timeout_s: float) -> dict[str, Any]:
            async with asyncio.timeout(timeout_s):
                while True:
                    event = await interviewer.events.get()
                    received.append(event)
                    if found(event):
                        return event

        def candidate_final(e: dict[str, Any]) -> bool:
            return e["type"] == "segment.final" and e["speaker"]["role"] == "candidate"

        await until(lambda e: candidate_final(e) and "rotation" in e["text"].lower(), 60)
        assert await withdraw_consent(live.http, whip, tok_c["token"]) == 204
        withdrawn = await until(lambda e: e["type"] == "consent.withdrawn", 10)
        before = [e["seq"] for e in received if candidate_final(e)]
        assert withdrawn["afterSeq"] == max(before) and withdrawn["speaker"]["role"] == "candidate"
        assert withdrawn["at"].endswith("Z")
        # the interviewer asks about incidents (27.4 s): the candidate consents again before answering (28.5 s)
        await until(lambda e: e["type"] == "segment.final" and "incident" in e["text"].lower(), 60)
        dropped = await metric_sum(live, "audio_frames_dropped_total", reason="no_consent")
        assert await give_consent(live.http, whip, tok_c["token"]) == 204
        given = await until(lambda e: e["type"] == "consent.given", 10)
        assert given["afterSeq"] == withdrawn["afterSeq"]
        after = await until(lambda e: candidate_final(e) and e["text"], 60)
        await asyncio.gather(*(s.pc.getSenders()[0].track.wait_finished() for s in (interviewer, candidate)))
        await candidate.close()
        await until(lambda e: e["type"] == "participant.left", 60)
        await interviewer.close()

        # nothing of the second answer (16.5-23.7 s, while withdrawn) was transcribed: ~13 s of frames dropped
        assert dropped >= 300
        gap = received[received.index(withdrawn):received.index(given)]
        assert not [e for e in gap if e["type"].startswith("segment.") and e["speaker"]["role"] == "candidate"]
        assert after["seq"] > withdrawn["afterSeq"]
        transcript = (await live.http.get(f"/api/interviews/{iid}/transcript")).json()
        said = " ".join(s["text"] for s in transcript["segments"] if s["speaker"]["role"] == "candidate").lower()
        assert "rotation" in said and not {"envelope", "vault", "sensitive"} & set(said.replace(".", " ").split())
        marks = [(m["type"], m["afterSeq"]) for m in transcript["markers"]
                 if m["participantId"] == tok_c["participantId"]]
        assert marks == [("consent.given", None), ("consent.withdrawn", withdrawn["afterSeq"]),
                         ("consent.given", withdrawn["afterSeq"])]
        assert transcript["markers"][-1]["at"] == given["at"]

    phrases = [" ".join(s["text"].split()[:3]) for s in transcript["segments"] if len(s["text"].split()) >= 3]
    assert len(phrases) >= 4
    logged = caplog.text.lower()
    assert any(r.name == "pipeline.stream" and r.levelname == "DEBUG" for r in caplog.records)  # DEBUG was on
    for needle in [NAME, EMAIL, PHONE, "Ivy Interviewer", *phrases]:
        assert needle.lower() not in logged, f"{needle!r} is in a log line"
