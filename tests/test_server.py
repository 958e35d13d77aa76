"""The composition root: settings, secrets, `python server.py` on embedded defaults, health, and shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from adapters.mongo import MongoStore
from domain.commands import CreateInterview, InterviewService
from domain.events import SegmentEvent, Speaker
from server import Settings, resolve_secrets, stored_finals
from testing.live_server import live_server, test_settings
from testing.whip_client import WavChannelTrack, whip_publish

ROOT = Path(__file__).resolve().parents[1]


def test_settings_from_env_are_typed_and_validated() -> None:
    s = Settings.from_env({"PORT": "9000", "STT_WORKERS": "2", "PARTIAL_INTERVAL_S": "0.5", "LOG_FORMAT": "JSON",
                           "NATS_URL": "nats://u:p@host:4222", "DATA_DIR": "/tmp/x", "HOST": ""})
    assert (s.port, s.stt_workers, s.partial_interval_s, s.log_format) == (9000, 2, 0.5, "json")
    assert s.data_dir == Path("/tmp/x") and s.host == "127.0.0.1"  # empty means default
    assert Settings.from_env({}) == Settings()
    assert Settings().stt_subprocess and not Settings.from_env({"STT_SUBPROCESS": "off"}).stt_subprocess
    assert Settings.from_env({"ANALYSIS_PROVIDERS": "huggingface", "HF_BASE_URL": "http://tgi:8080"}
                             ).analysis_providers == ("huggingface",)  # a self-hosted server needs no token
    for env, needle in [({"PORT": "http"}, "PORT"), ({"PORT": "70000"}, "PORT"), ({"STT_ENGINE": "cloud"}, "STT_ENGINE"),
                        ({"STT_WORKERS": "0"}, "STT_WORKERS"), ({"STT_SUBPROCESS": "maybe"}, "STT_SUBPROCESS"),
                        ({"VAD_MODE": "magic"}, "VAD_MODE"), ({"PARTIAL_SHARE": "1.5"}, "PARTIAL_SHARE"),
                        ({"STT_ENGINE": "openai"}, "OPENAI_API_KEY"), ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
                        ({"ANALYSIS_PROVIDERS": "anthropic"}, "ANTHROPIC_API_KEY"),
                        ({"ANALYSIS_PROVIDERS": "openai,huggingface", "OPENAI_API_KEY": "sk-x"}, "HF_TOKEN")]:
        with pytest.raises(ValueError, match=needle):
            Settings.from_env(env)


def test_secrets_never_show_in_repr_or_errors() -> None:
    s = Settings.from_env({"ADMIN_API_KEY": "admin-secret-value-123", "TOKEN_SECRET": "token-secret-value-456",
                           "MONGODB_URL": "mongodb://user:pw-secret@db", "OPENAI_API_KEY": "sk-secret-789",
                           "NATS_URL": "nats://u:nats-secret@h"})
    shown = repr(s)
    for secret in ("admin-secret-value-123", "token-secret-value-456", "pw-secret", "sk-secret-789", "nats-secret"):
        assert secret not in shown
    with pytest.raises(ValueError) as err:
        Settings.from_env({"ADMIN_API_KEY": "short"})  # too short, and the message must not echo it
    assert "short" not in str(err.value).replace("too short", "") and "ADMIN_API_KEY" in str(err.value)


def test_generated_secrets_are_private_and_stable(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    first = resolve_secrets(settings)
    assert first.admin_key_generated and len(first.admin_api_key) >= 32
    for name in ("admin_api_key", "token_secret"):
        assert stat.S_IMODE((tmp_path / "d" / name).stat().st_mode) == 0o600
    again = resolve_secrets(settings)
    assert (again.admin_api_key, again.token_secret) == (first.admin_api_key, first.token_secret)
    assert first.admin_api_key not in repr(first)
    given = resolve_secrets(Settings(data_dir=tmp_path / "e", admin_api_key="k" * 20))
    assert given.admin_api_key == "k" * 20 and not given.admin_key_generated


def test_help_lists_every_setting() -> None:
    out = subprocess.run([sys.executable, "server.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for name in ("HOST", "PORT", "DATA_DIR", "ADMIN_API_KEY", "MONGODB_URL", "NATS_URL", "TOKEN_SECRET",
                 "TOKEN_TTL_S", "STT_ENGINE", "STT_MODEL", "STT_WORKERS", "STT_CPU_THREADS", "STT_SUBPROCESS",
                 "OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_STT_MODEL", "VAD_MODE", "PARTIAL_INTERVAL_S",
                 "PARTIAL_SHARE", "MAX_BODY_BYTES", "AUDIT",
                 "LOG_LEVEL", "LOG_FORMAT"):
        assert f"\n  {name} " in out, name


def _start(data_dir: Path, log_file: Path | None = None, **env: str) -> tuple[subprocess.Popen[str], str, str]:
    """`python server.py` on embedded defaults, in a session of its own (as in a terminal); returns the process,
    its URL and the printed admin key. Logs (JSON lines) go to `log_file` if given."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URL", "NATS_URL", "ADMIN_API_KEY")}
    err = open(log_file, "w") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "server.py"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=err, text=True, start_new_session=True,
                            env={**clean, "DATA_DIR": str(data_dir), "PORT": "0", "LOG_FORMAT": "json", **env})
    if log_file is not None:
        err.close()  # type: ignore[union-attr]
    assert proc.stdout is not None
    url = key = ""
    for line in proc.stdout:  # the server prints these two lines once it is ready
        if line.startswith("interview-worker ready: "):
            url = line.split(": ", 1)[1].strip()
        elif line.startswith("admin API key: "):
            key = line.split(": ", 1)[1].split()[0]
            break
    if not (url and key):
        proc.kill()
        proc.wait()
        proc.stdout.close()
        pytest.fail(f"server exited with {proc.returncode} before printing its URL and key")
    return proc, url, key


def _embedded_nats(data_dir: Path) -> tuple[str, int]:
    """The URL and pid of the nats-server a running `server.py` started under `data_dir` (from its log, config
    and pid file: the embedded bus is not exposed over HTTP)."""
    log_text = (data_dir / "nats" / "nats-server.log").read_text()
    port = re.findall(r"Listening for client connections on 127\.0\.0\.1:(\d+)", log_text)[-1]
    token = re.findall(r'token: "(\w+)"', (data_dir / "nats" / "nats-server.conf").read_text())[-1]
    return f"nats://{token}@127.0.0.1:{port}", int((data_dir / "nats" / "nats-server.pid").read_text())


async def _first_event(nats_url: str, subject: str) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(subject, stream="INTERVIEWS")
        (msg,) = await sub.fetch(1, timeout=30)  # waits for the outbox relay to publish it
        return {"subject": msg.subject, **json.loads(msg.data)}
    finally:
        await nc.close()


def _gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie counts as gone: its parent has exited or will reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.slow
def test_python_server_py_runs_on_embedded_defaults_and_keeps_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, url, key = _start(data)
    try:
        assert key == (data / "admin_api_key").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            ready = http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["store"] is True
            assert ready.json()["checks"]["audit"] is True  # booleans only (unauthenticated)
            created = http.post("/api/interviews", json={"candidateId": "c1", "jobId": "j1",
                                                         "scheduledAt": "2030-01-01T09:00:00Z"})
            assert created.status_code == 201
            iid = created.json()["interviewId"]
            # the embedded default runs a real nats-server: the event is on the JetStream stream
            nats_url, _ = _embedded_nats(data)
            scheduled = asyncio.run(_first_event(nats_url, f"interviews.{iid}.>"))
            assert scheduled["subject"] == f"interviews.{iid}.scheduled" and scheduled["interviewId"] == iid
            token = http.post(f"/api/interviews/{iid}/tokens", json={"role": "candidate", "name": "Cat"})
            assert token.status_code == 201 and token.json()["joinUrl"].startswith(f"{url}/candidate?token=")
            metrics = http.get("/metrics").text
            for name in ("interview_rooms_active", "interview_participants_active", "audio_frames_in_total",
                         "audio_frames_dropped_total", "audio_speech_ratio", "stt_lag_seconds",
                         "stt_final_wait_seconds", 'stt_busy_seconds_total{kind="final"}',
                         'stt_decodes_total{kind="partial"}', "stt_redecodes_total",
                         "final_latency_seconds_bucket", "errors_total", "audit_entries_pending",
                         "audit_entries_written_total", "audit_write_failures_total"):
                assert name in metrics, name
            page = http.get("/candidate")
            assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    finally:
        assert _stop(proc) == 0
    # A second start on the same data dir: same key, the interview is still there.
    proc, url, key2 = _start(data)
    try:
        assert key2 == key
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            assert http.get(f"/api/interviews/{iid}").status_code == 200
    finally:
        assert _stop(proc) == 0


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_shuts_down_cleanly(tmp_path: Path) -> None:
    # Ctrl-C in a terminal signals every process of the foreground group: the embedded MongoDB, the embedded
    # NATS and the speech-to-text workers must outlive it so that shutdown can still drain streams, persist
    # finals and flush the outbox; then teardown stops them, leaving no stray process behind.
    log_file = tmp_path / "server.log"
    proc, url, key = _start(tmp_path / "data", log_file)
    _, nats_pid = _embedded_nats(tmp_path / "data")
    assert not _gone(nats_pid)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        assert http.post("/api/interviews", json={"candidateId": "c1", "jobId": "j1",
                                                  "scheduledAt": "2030-01-01T09:00:00Z"}).status_code == 201
    os.killpg(proc.pid, signal.SIGINT)
    try:
        assert proc.wait(timeout=60) == 0
    finally:
        assert proc.stdout is not None
        proc.stdout.close()
    records = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    messages = [r["msg"] for r in records]
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], records
    assert not any("failed" in m or "died" in m for m in messages), messages
    # stopped by our teardown (SIGTERM: a clean exit), not killed by the terminal's SIGINT
    assert any(m.startswith("embedded MongoDB stopped (exit 0)") for m in messages), messages[-8:]
    assert any(m.startswith("embedded NATS stopped (exit 0)") for m in messages), messages[-8:]
    assert _gone(nats_pid)
    assert "shutdown complete" in messages


@pytest.mark.slow
async def test_shutdown_drains_speech_in_progress_to_a_persisted_final(tmp_path: Path, mongo_url: str,
                                                                      shared_data: Path) -> None:
    settings = test_settings(tmp_path, mongo_url)
    async with live_server(settings) as live:
        iid = await live.create_interview()
        tok_o = await live.token(iid, "observer", "Obi")
        tok_c = await live.token(iid, "candidate", "Cat")
        whip = f"{live.url}/whip/{iid}"
        observer = await whip_publish(whip, tok_o["token"], track=None, analysis=True)
        # jfk.flac is one 11 s utterance for our segmenter; stop the service in its middle.
        candidate = await whip_publish(whip, tok_c["token"], track=WavChannelTrack(shared_data / "jfk.flac"))
        received: list[dict[str, Any]] = []
        async with asyncio.timeout(60):  # until a partial shows more than 4 s of speech in progress
            while not any(e["type"] == "segment.partial" and e["end_s"] >= 4.0 for e in received):
                received.append(await observer.events.get())
        await live.stop()
        while not observer.events.empty():
            received.append(observer.events.get_nowait())
        await candidate.close()
        await observer.close()

    store = await MongoStore.connect(mongo_url, db_name=settings.mongodb_db, key_file=settings.master_key_path)
    try:
        segments = [s.to_document() for s in await store.list_segments(iid)]
    finally:
        await store.close()
    texts = [s["text"] for s in segments if s["participantId"] == tok_c["participantId"]]
    assert "americans" in " ".join(texts).lower(), texts  # the utterance cut by the shutdown was transcribed
    finals = [e["text"] for e in received if e["type"] == "segment.final" and e["text"]]
    assert finals == texts  # and sent to the observer before the connections closed

    # After a restart, someone joining the interview gets what was said before as its backlog.
    async with live_server(settings) as live:
        tok_i = await live.token(iid, "interviewer", "Ivy")
        session = await whip_publish(f"{live.url}/whip/{iid}", tok_i["token"],
                                     track=WavChannelTrack(shared_data / "jfk.flac", limit_s=0.5), analysis=True)
        backlog: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while len([e for e in backlog if e["type"] == "segment.final"]) < len(texts):
                backlog.append(await session.events.get())
        assert [e["text"] for e in backlog if e["type"] == "segment.final"] == texts
        assert {e["speaker"]["participantId"] for e in backlog if e["type"] == "segment.final"} == {
            tok_c["participantId"]}
        await session.close()


async def test_backlog_after_a_restart_carries_the_revised_text(service: InterviewService,
                                                                  store: MongoStore) -> None:
    iid = (await service.create_interview(CreateInterview.parse(
        {"candidateId": "cand-1", "jobId": "job-1", "scheduledAt": "2026-12-01T10:00:00Z"})))["interviewId"]
    speaker = Speaker("candidate", "Cat", "cand1")
    for seq, text in enumerate(["I work on payments.", "We moved to Kubernetes."]):
        await service.record_segment(iid, SegmentEvent(speaker, seq, 2.0 * seq, 2.0 * seq + 1.5, text, final=True))
    await service.record_revision(iid, SegmentEvent(speaker, 1, 2.0, 3.5, "We moved to Kubernetes at Acme.",
                                                    final=True, confidence=0.9, revision=1))
    final, revised = [json.loads(m) for m in await stored_finals(store, iid)]
    assert (final["type"], final["seq"], final["text"]) == ("segment.final", 0, "I work on payments.")
    assert "revision" not in final and "originalText" not in final
    # one message per stored segment: its latest revision, in the final's place, with the text it replaced
    assert (revised["type"], revised["seq"], revised["revision"]) == ("segment.revised", 1, 1)
    assert revised["text"] == "We moved to Kubernetes at Acme." and revised["confidence"] == 0.9
    assert revised["originalText"] == "We moved to Kubernetes."
    assert revised["speaker"] == speaker.to_dict() and (revised["start_s"], revised["end_s"]) == (2.0, 3.5)


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URL", "NATS_URL")}
    out = subprocess.run([sys.executable, "server.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**env, "LOG_FORMAT": "json", "PORT": "not-a-port"})
    assert out.returncode == 2 and "PORT" in out.stderr  # bad settings fail before anything starts
    import logging

    from adapters.logs import JsonFormatter

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    line = JsonFormatter().format(record)
    assert json.loads(line)["msg"] == "hello world" and "\n" not in line
