"""End to end in headless Chromium: the real `python server.py`, the real pages, a fake microphone from a WAV.

The candidate page joins with its microphone playing the candidate's channel of a shared dialogue; the
interviewer page, in a second browser with a silent microphone, must show the candidate's words (waiting on a
text match against the ground truth, never on a sleep). Chromium is the Debian package at /usr/bin/chromium,
driven by Playwright's CDP client; no browser is ever downloaded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiortc import RTCPeerConnection, RTCSessionDescription
from playwright.async_api import BrowserContext, Page, async_playwright, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from domain.events import (
    AskedRef,
    ConsentEvent,
    ErrorEvent,
    GuideCoverageEvent,
    GuideItemStatus,
    Keyword,
    KeywordsEvent,
    LevelEvent,
    ParticipantEvent,
    ProtectedTopicAlert,
    SegmentEvent,
    SentimentEvent,
    Speaker,
    TalkBalanceEvent,
    to_json,
)
from testing.browser import fake_microphone_args, write_channel

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
DIALOGUE = "mobile_mixed"
START_TIMEOUT_S = 180  # first start loads Whisper and starts the embedded store; slow on a busy 2-core box
WORDS_TIMEOUT_MS = 120_000  # the first candidate turn ends 14 s into the file; the rest is STT under contention


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


@dataclass
class Server:
    url: str
    admin_key: str
    process: subprocess.Popen[str]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def create_interview(self) -> str:
        r = httpx.post(f"{self.url}/api/interviews", headers=self._admin, timeout=30, json={
            "candidateId": "cand-browser", "jobId": "job-browser", "scheduledAt": datetime.now(UTC).isoformat()})
        assert r.status_code == 201, r.text
        return str(r.json()["interviewId"])

    def join_url(self, interview_id: str, role: str, name: str) -> str:
        r = httpx.post(f"{self.url}/api/interviews/{interview_id}/tokens", headers=self._admin, timeout=30,
                       json={"role": role, "name": name})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["token"] in body["joinUrl"]
        # The link carries the server's idea of its own URL; the browser talks to the address we started.
        return f"{self.url}{httpx.URL(body['joinUrl']).raw_path.decode()}"

    @property
    def _admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Server]:
    """`python server.py` exactly as documented, on a free port, embedded defaults, readiness read from stdout."""
    tmp = tmp_path_factory.mktemp("browser-server")
    admin_key = secrets.token_urlsafe(24)
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": "0", "DATA_DIR": str(tmp / "data"),
           "ADMIN_API_KEY": admin_key, "LOG_LEVEL": "INFO",
           # Embedded store by default; when MONGODB_URL points at a real server, use a database of our own.
           "MONGODB_DB": f"test_browser_{secrets.token_hex(6)}"}
    log = tmp / "server.log"
    with log.open("w") as log_file:
        process = subprocess.Popen([sys.executable, "server.py"], cwd=REPO, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=log_file)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # keeps the pipe drained for the whole run, and hands lines to the waiter
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    pumper = threading.Thread(target=pump, name="server-stdout", daemon=True)
    pumper.start()
    srv = Server("", admin_key, process, log)
    started = False
    try:
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                pytest.fail(f"server printed no ready line in {START_TIMEOUT_S} s:\n{srv.log_tail()}")
            if line is None:
                pytest.fail(f"server exited during start-up (code {process.wait()}):\n{srv.log_tail()}")
            m = re.search(r"ready: (http://\S+)", line)
            if m:
                port = httpx.URL(m.group(1)).port
                srv.url = f"http://127.0.0.1:{port}"  # not "localhost": Chromium might try ::1 first
                break
        # the overlay's tone of words is off by default under the default jurisdiction (eu): this organisation
        # shows it (the candidate page's notice and the organisation's settings are tested in test_analysis_review)
        r = httpx.patch(f"{srv.url}/api/organisation", json={"toneEnabled": True},
                        headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
        assert r.status_code == 200, r.text
        started = True
        yield srv
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the graceful path: drains utterances, closes peers
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(f"server did not exit within 60 s of SIGTERM:\n{srv.log_tail()}")
        pumper.join(timeout=10)
        assert process.stdout is not None
        process.stdout.close()
        if started:
            assert process.returncode == 0, f"server exited with {process.returncode} on SIGTERM:\n{srv.log_tail()}"


@asynccontextmanager
async def _browser(chromium: str, profile: Path, mic_wav: Path) -> AsyncIterator[tuple[BrowserContext, Page, list[str]]]:
    """A fresh headless Chromium whose microphone plays `mic_wav`; yields its page and the page's JS errors."""
    errors: list[str] = []
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True,
            args=fake_microphone_args(mic_wav),
            viewport={"width": 1280, "height": 800})
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.request.method} {r.url}")
                    if r.status >= 400 else None)
            yield context, page, errors
        finally:
            await context.close()


def _ground_truth(shared_data: Path) -> list[dict[str, object]]:
    turns = json.loads((shared_data / f"{DIALOGUE}.json").read_text())["turns"]
    return [t for t in turns if t["speaker"] == "candidate"]


@pytest.mark.slow  # real STT on real audio at real-time pace
async def test_interviewer_page_shows_candidate_words(server: Server, chromium: str, shared_data: Path,
                                                      tmp_path: Path) -> None:
    stereo = shared_data / f"{DIALOGUE}.stereo.wav"
    candidate_wav, silent_wav = tmp_path / "candidate.wav", tmp_path / "silence.wav"
    write_channel(stereo, 1, candidate_wav)  # right channel = the candidate
    write_channel(stereo, None, silent_wav)
    first_turn = _normalise(str(_ground_truth(shared_data)[0]["text"]))
    assert "shipped offline mode" in first_turn

    interview = server.create_interview()
    candidate_url = server.join_url(interview, "candidate", "Casey Candidate")
    interviewer_url = server.join_url(interview, "interviewer", "Ivo Interviewer")
    observer_url = server.join_url(interview, "observer", "Olga Observer")

    async with (_browser(chromium, tmp_path / "profile-interviewer", silent_wav) as (viewers, overlay, overlay_errors),
                _browser(chromium, tmp_path / "profile-candidate", candidate_wav) as (_, cand, cand_errors)):
        await overlay.goto(interviewer_url)
        await expect(overlay.locator("#who")).to_contain_text("Ivo Interviewer")
        await overlay.check("#consent")
        await overlay.click("#join")
        await expect(overlay.locator("#state")).to_have_attribute("data-state", "connected", timeout=30_000)
        # An observer uses the same page without a microphone (an offer with only the data channel).
        observer = await viewers.new_page()
        observer.on("pageerror", lambda exc: overlay_errors.append(f"observer: {exc}"))
        await observer.goto(observer_url)
        await observer.click("#join")
        await expect(observer.locator("#state")).to_have_attribute("data-state", "connected", timeout=30_000)
        await expect(observer.locator("#mute")).to_be_hidden()

        await cand.goto(candidate_url)
        await expect(cand.locator(".notice:not(#aedt)")).to_contain_text("no voice-tone or facial emotion analysis", ignore_case=True)
        await cand.click("#join")  # without consent nothing happens but a request to give it
        await expect(cand.locator("#error")).to_contain_text("consent")
        await cand.check("#consent")
        await cand.click("#join")
        await expect(cand.locator("#state")).to_have_attribute("data-state", "connected", timeout=30_000)

        # The overlay lists the candidate as a participant, labelled with the name and role from the token.
        participant = overlay.locator(".participants li", has_text="Casey Candidate")
        await expect(participant).to_contain_text("candidate", timeout=30_000)
        # Both level meters move while the candidate speaks: the local WebAudio one and the server's level events.
        speaking = "(sel) => Number(document.querySelector(sel)?.getAttribute('aria-valuenow')) > 30"
        await cand.wait_for_function(speaking, arg="#meter", timeout=30_000, polling=100)
        await overlay.wait_for_function(
            speaking, arg=f'.participants li[data-pid="{await participant.get_attribute("data-pid")}"] .meter',
            timeout=30_000, polling=100)

        # The candidate's first answer arrives as a final segment, labelled with the candidate's name.
        # Compared without spaces or punctuation: Whisper may write "off line mode" for "offline mode".
        await overlay.wait_for_function(
            """(phrase) => [...document.querySelectorAll('.seg[data-final="true"][data-role="candidate"] .text')]
                 .some((el) => el.textContent.toLowerCase().replace(/[^a-z0-9]+/g, '').includes(phrase))""",
            arg="shippedofflinemode", timeout=WORDS_TIMEOUT_MS, polling=250)
        segment = overlay.locator('.seg[data-final="true"][data-role="candidate"]',
                                  has_text=re.compile(r"off\W*line", re.I))
        await expect(segment.first.locator(".who")).to_contain_text("Casey Candidate")
        words = set(_normalise(" ".join(await overlay.locator('.seg[data-role="candidate"] .text').all_text_contents())).split())
        expected = first_turn.split()
        recalled = sum(w in words for w in expected) / len(expected)
        assert recalled >= 0.8, f"only {recalled:.0%} of the first answer's words are on the overlay: {sorted(words)}"

        # Text analysis of that segment shows up, labelled advisory, and traceable to its sentence.
        await expect(overlay.locator("#sentiment-summary")).to_contain_text("Casey Candidate", timeout=30_000)
        await expect(overlay.locator("#advisory")).to_contain_text("never from voice tone or faces")
        # Nothing the interviewer sees came from the interviewer's silent microphone.
        assert await overlay.locator('.seg[data-role="interviewer"][data-final="true"]').count() == 0
        # The observer sees the same room.
        await expect(observer.locator('.seg[data-final="true"][data-role="candidate"]',
                                      has_text=re.compile(r"off\W*line", re.I)).first).to_be_visible(timeout=30_000)

        # Leaving ends the session on the server (WHIP DELETE) and the overlay says so.
        await cand.click("#leave")
        # The DELETE is answered once the server drained the last utterance: seconds under load.
        await expect(cand.locator("#state")).to_have_attribute("data-state", "left", timeout=30_000)
        await expect(participant).to_have_class(re.compile(r"\bgone\b"), timeout=30_000)

        assert not cand_errors, cand_errors
        assert not overlay_errors, overlay_errors


async def test_forged_token_is_refused_with_the_servers_reason(server: Server, chromium: str, shared_data: Path,
                                                                tmp_path: Path) -> None:
    silent_wav = tmp_path / "silence.wav"
    write_channel(shared_data / f"{DIALOGUE}.stereo.wav", None, silent_wav)
    interview = server.create_interview()
    url = server.join_url(interview, "candidate", "Mallory")
    token = httpx.URL(url).params["token"]
    header, payload, _sig = token.split(".")
    forged = f"{header}.{payload}.{base64.urlsafe_b64encode(b'not the signature').rstrip(b'=').decode()}"

    async with _browser(chromium, tmp_path / "profile", silent_wav) as (_, page, _errors):
        await page.goto(f"{server.url}/candidate?token={forged}")
        await expect(page.locator("#who")).to_contain_text("Mallory")  # the page reads the payload to greet
        await page.check("#consent")
        await page.click("#join")
        await expect(page.locator("#state")).to_have_attribute("data-state", "failed", timeout=30_000)
        await expect(page.locator("#error")).to_contain_text("invalid or has expired")
        await expect(page.locator("#join")).to_be_enabled()  # nothing is stuck; the user can try again
        # The microphone was released after the refusal.
        assert await page.evaluate("document.getElementById('mic-state').textContent") == "Microphone off"


def test_pages_load_nothing_from_elsewhere() -> None:
    """Every asset the pages reference is one of ours under /static (no CDN, no build step)."""
    static = REPO / "adapters" / "static"
    for page in ("index.html", "candidate.html", "interviewer.html", "app.html"):
        html = (static / page).read_text()
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        for ref in refs:
            assert not re.match(r"^(https?:)?//", ref), f"{page} loads {ref} from elsewhere"
            if ref.startswith("/static/"):
                assert (static / ref.removeprefix("/static/")).is_file(), f"{page} references missing {ref}"
    for script in static.glob("*.js"):
        for ref in re.findall(r'from\s+"([^"]+)"', script.read_text()):
            assert ref.startswith("/static/") and (static / ref.removeprefix("/static/")).is_file(), (script, ref)


# ---------------------------------------------------------------------------------------------------------
# The overlay's rendering rules, driven by a real aiortc peer sending a scripted room over `analysis`.
# No STT here, so every rule (partial -> final in place, repeats ignored, keyword -> segments) is checked exactly.


@dataclass
class ScriptedRoom:
    url: str
    channels: asyncio.Queue[Any]
    peers: list[RTCPeerConnection]
    tokens: list[str]  # the bearer token of each WHIP POST


@asynccontextmanager
async def _scripted_room() -> AsyncIterator[ScriptedRoom]:
    """The static pages plus a WHIP endpoint whose aiortc peer hands each `analysis` channel to the test."""
    static = REPO / "adapters" / "static"
    channels: asyncio.Queue[Any] = asyncio.Queue()
    peers: list[RTCPeerConnection] = []
    tokens: list[str] = []

    async def whip(request: Request) -> Response:
        pc = RTCPeerConnection()
        peers.append(pc)
        tokens.append(request.headers["authorization"].removeprefix("Bearer "))
        # the page's `call` channel (peer-to-peer signalling) is not this test's business
        pc.on("datachannel", lambda channel: channel.label == "analysis" and channels.put_nowait(channel))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=(await request.body()).decode(), type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return Response(pc.localDescription.sdp, status_code=201, media_type="application/sdp",
                        headers={"Location": f"/whip/{request.path_params['iid']}/{len(peers)}"})

    app = Starlette(routes=[
        Route("/interviewer", lambda _request: FileResponse(static / "interviewer.html")),
        Route("/whip/{iid}", whip, methods=["POST"]),
        Route("/api/consent", lambda _request: Response(status_code=204), methods=["POST", "DELETE"]),
        # what the real service answers for an organisation that shows the tone of words (GET /api/notice)
        Route("/api/notice", lambda _request: JSONResponse({"noticeVersion": "test", "jurisdiction": "none",
                                                            "tone": True, "candidateNotice": None})),
        Route("/whip/{iid}/{sid}", lambda _request: Response(status_code=200), methods=["DELETE"]),
        Mount("/static", StaticFiles(directory=static)),
    ])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield ScriptedRoom(f"http://127.0.0.1:{sock.getsockname()[1]}", channels, peers, tokens)
    finally:
        for pc in peers:
            await pc.close()
        server.should_exit = True
        await task
        sock.close()


def _unsigned_token(iid: str, pid: str, role: str, name: str) -> str:
    """A join token's form (a JWT) whose payload is all the page reads; this scripted server checks no signature."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = {"alg": "HS256", "typ": "JWT", "kid": "join"}
    claims = {"iid": iid, "pid": pid, "role": role, "name": name, "exp": int(time.time()) + 600}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(b'unsigned')}"


async def test_overlay_rendering_rules(chromium: str, shared_data: Path, tmp_path: Path) -> None:
    silent_wav = tmp_path / "silence.wav"
    write_channel(shared_data / f"{DIALOGUE}.stereo.wav", None, silent_wav)
    casey = Speaker("candidate", "Casey Candidate", "p-cand")
    ivo = Speaker("interviewer", "Ivo Interviewer", "p-ivo")

    def seg(speaker: Speaker, seq: int, text: str, final: bool, **kw: Any) -> SegmentEvent:
        return SegmentEvent(speaker, seq, start_s=2.0 * seq, end_s=2.0 * seq + 1.5, text=text, final=final, **kw)

    async with _scripted_room() as room, _browser(chromium, tmp_path / "profile", silent_wav) as (_, page, errors):
        await page.goto(f"{room.url}/interviewer?token={_unsigned_token('iv-1', ivo.participant_id, 'interviewer', ivo.name)}")
        await page.check("#consent")
        await page.click("#join")
        channel = await asyncio.wait_for(room.channels.get(), 30)
        assert channel.label == "analysis"
        await expect(page.locator("#state")).to_have_attribute("data-state", "connected", timeout=30_000)

        def send(event: Any) -> None:
            channel.send(to_json(event))

        transcript = page.locator("#transcript .seg")
        send(ParticipantEvent(casey, joined=True))
        await expect(page.locator("#transcript")).to_contain_text("Casey Candidate (candidate) joined")

        # Partials of one sentence update a single element in place; the final replaces it.
        send(seg(casey, 0, "I work on", final=False))
        await expect(transcript).to_have_count(1)
        await expect(transcript.first).to_have_class(re.compile(r"\bpartial\b"))
        await expect(transcript.first).to_have_attribute("aria-hidden", "true")  # screen readers get the final
        send(seg(casey, 0, "I work on an iOS app", final=False))
        await expect(transcript.first.locator(".text")).to_have_text("I work on an iOS app")
        send(seg(casey, 0, "I work on an iOS app written in Swift.", final=True, confidence=0.9))
        await expect(transcript).to_have_count(1)
        await expect(transcript.first).to_have_attribute("data-final", "true")
        await expect(transcript.first).not_to_have_class(re.compile(r"\bpartial\b"))
        # A late partial, and the backlog repeating the final after a reconnect, change nothing.
        send(seg(casey, 0, "I work on an", final=False))
        send(seg(casey, 0, "I work on an iOS app written in Swift.", final=True))
        # Another speaker's sentence gets its own label; an analysis-free hallucination is marked as such.
        send(seg(ivo, 0, "Anything that went badly?", final=True))
        send(seg(casey, 1, "Last quarter I shipped offline mode.", final=True))
        send(seg(casey, 2, "Thank you for watching.", final=True, hallucination=True))
        await expect(transcript).to_have_count(4)
        await expect(transcript.nth(0).locator(".text")).to_have_text("I work on an iOS app written in Swift.")
        await expect(transcript.nth(1).locator(".who")).to_contain_text("Ivo Interviewer")
        await expect(transcript.nth(3)).to_contain_text("possibly misheard")

        # Sentiment: a per-speaker summary in words, on the canvas' accessible label too.
        send(SentimentEvent(casey, 0, score=0.2, rolling=0.2, start_s=0.0, end_s=1.5))
        send(SentimentEvent(casey, 1, score=0.7, rolling=0.45, start_s=2.0, end_s=3.5))
        await expect(page.locator("#sentiment-summary")).to_contain_text("Casey Candidate leaning positive · +0.45 · 2")
        await expect(page.locator("#sentiment-canvas")).to_have_attribute("aria-label", re.compile("Casey Candidate: leaning positive"))

        # Keywords, with counts; clicking one highlights exactly the sentences it came from, clicking again clears.
        send(KeywordsEvent(casey, [Keyword("swift", 1, 0.9, (0,)), Keyword("offline mode", 1, 0.8, (1,)),
                                   Keyword("ios", 1, 0.5, (0,))], seq=1))
        chip = page.locator('.chip[data-term="swift"]')
        await expect(chip).to_contain_text("×1")
        await chip.hover()
        await expect(chip).to_have_attribute("title", re.compile("written in Swift"))
        await chip.click()
        highlighted = page.locator("#transcript .seg.highlight")
        await expect(highlighted).to_have_count(1)
        await expect(highlighted).to_have_attribute("data-seq", "0")
        await expect(highlighted).to_have_attribute("data-pid", "p-cand")
        await chip.click()
        await expect(highlighted).to_have_count(0)

        # A sentence that fails to transcribe says so in place; the error is also a toast.
        send(seg(casey, 3, "We added crash", final=False))
        send(ErrorEvent(casey, "stt_failed", "speech-to-text failed", {"seq": 3, "start_s": 6.0, "end_s": 7.5}))
        await expect(transcript.nth(4)).to_contain_text("not transcribed")
        await expect(page.locator("#toasts")).to_contain_text("speech-to-text failed")

        # Levels drive the participant's meter; leaving greys the participant out.
        send(LevelEvent(casey, rms_dbfs=-12.0, peak_dbfs=-3.0, clipped=0, speaking=True, at_s=9.0))
        meter = page.locator('.participants li[data-pid="p-cand"] .meter')
        await expect(meter).to_have_class(re.compile(r"\bspeaking\b"))
        send(ParticipantEvent(casey, joined=False))
        await expect(page.locator('.participants li[data-pid="p-cand"]')).to_have_class(re.compile(r"\bgone\b"))
        await expect(page.locator("#transcript")).to_contain_text("Casey Candidate (candidate) left")

        # The server drops the session: the page resumes it by re-POSTing with the same token, and the
        # backlog the server replays on the new channel does not duplicate anything.
        await room.peers[-1].close()
        await expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting", timeout=30_000)
        channel = await asyncio.wait_for(room.channels.get(), 60)
        await expect(page.locator("#state")).to_have_attribute("data-state", "connected", timeout=30_000)
        assert len(room.peers) == 2 and room.tokens[0] == room.tokens[1]
        send(seg(casey, 0, "I work on an iOS app written in Swift.", final=True))
        send(seg(casey, 4, "Within two days.", final=True))
        await expect(transcript).to_have_count(6)

        # A revised sentence replaces the final's text where it stands, marked, with the live text in its tooltip;
        # the sentence's new sentiment replaces its point, and keyword tooltips read the new text.
        send(seg(casey, 1, "Last quarter I shipped the offline mode.", final=True, revision=1))
        revised = transcript.nth(2)
        await expect(revised.locator(".text")).to_have_text("Last quarter I shipped the offline mode.")
        await expect(revised).to_have_class(re.compile(r"\brevised\b"))
        await expect(revised).to_have_attribute("title", re.compile("live text: “Last quarter I shipped offline mode.”"))
        send(SentimentEvent(casey, 1, score=-0.3, rolling=-0.05, start_s=2.0, end_s=3.5))
        await expect(page.locator("#sentiment-summary")).to_contain_text("Casey Candidate neutral · -0.05 · 2 sentences")
        chip = page.locator('.chip[data-term="offline mode"]')
        await chip.hover()
        await expect(chip).to_have_attribute("title", re.compile("shipped the offline mode"))
        # The backlog repeating the live final after a reconnect does not undo the revision.
        send(seg(casey, 1, "Last quarter I shipped offline mode.", final=True))
        # The backlog after a restart sends a revised sentence alone, with the live text: shown as its final.
        channel.send(json.dumps({**seg(casey, 5, "We cut crashes by half.", final=True, revision=1).to_dict(),
                                 "originalText": "We cut crashes in half."}))
        await expect(transcript).to_have_count(7)
        await expect(transcript.nth(6)).to_have_class(re.compile(r"\brevised\b"))
        await expect(transcript.nth(6)).to_have_attribute("title", re.compile("live text: “We cut crashes in half.”"))
        send(seg(casey, 5, "We cut crashes in half.", final=True))  # its final, late: changes nothing
        send(seg(casey, 6, "And kept them there.", final=True))
        await expect(transcript).to_have_count(8)
        await expect(transcript.nth(6).locator(".text")).to_have_text("We cut crashes by half.")
        await expect(transcript.nth(2).locator(".text")).to_have_text("Last quarter I shipped the offline mode.")
        await expect(page.locator("#transcript-count")).to_have_text("7 sentences")

        # Cross-talk: a sentence sent marked, and one marked later by a revision, are greyed and labelled, and the
        # later one's tone point goes.
        send(seg(ivo, 7, "And kept them there.", final=True, crosstalk=True))
        await expect(transcript).to_have_count(9)
        await expect(transcript.nth(8)).to_have_class(re.compile(r"\bcrosstalk\b"))
        await expect(transcript.nth(8)).to_contain_text("cross-talk · not analysed")
        send(seg(casey, 1, "Last quarter I shipped the offline mode.", final=True, revision=2, crosstalk=True))
        await expect(transcript.nth(2)).to_have_class(re.compile(r"\bcrosstalk\b"))
        await expect(transcript.nth(2)).to_contain_text("cross-talk · not analysed")
        await expect(page.locator("#sentiment-summary")).to_contain_text("Casey Candidate neutral · +0.20 · 1 sentence")

        await page.click("#leave")
        await expect(page.locator("#state")).to_have_attribute("data-state", "left")
        assert not errors, errors


async def test_guidance_panel(chromium: str, shared_data: Path, tmp_path: Path) -> None:
    """Guidance events: a private alert banner (dismissable), the guide checklist, talk balance (`SCREENSHOTS=1`:
    docs/guidance.png)."""
    silent_wav = tmp_path / "silence.wav"
    write_channel(shared_data / f"{DIALOGUE}.stereo.wav", None, silent_wav)
    casey = Speaker("candidate", "Casey Candidate", "p-cand")
    ivo = Speaker("interviewer", "Ivo Interviewer", "p-ivo")
    async with _scripted_room() as room, _browser(chromium, tmp_path / "profile", silent_wav) as (_, page, errors):
        await page.goto(f"{room.url}/interviewer?token={_unsigned_token('iv-1', ivo.participant_id, 'interviewer', ivo.name)}")
        await page.check("#consent")  # an interviewer's voice is processed only after consent
        await page.click("#join")
        channel = await asyncio.wait_for(room.channels.get(), 30)
        await expect(page.locator("#state")).to_have_attribute("data-state", "connected", timeout=30_000)

        def send(event: Any) -> None:
            channel.send(to_json(event))

        asked = AskedRef("p-ivo", 0, "Walk me through a distributed system you've built.")
        send(ParticipantEvent(ivo, joined=True))
        send(ParticipantEvent(casey, joined=True))
        send(SegmentEvent(ivo, 0, 0.5, 3.0, asked.text, final=True))
        send(SegmentEvent(casey, 0, 3.5, 8.0, "I built a ledger on Kafka with three services.", final=True))
        send(SegmentEvent(ivo, 1, 8.2, 9.8, "And how old are you?", final=True))
        send(GuideCoverageEvent(
            [GuideItemStatus("q1", "Tell me about a distributed system you designed.", "system design", asked, 0.8,
                             budget_s=120, spent_s=150),
             GuideItemStatus("q2", "How do you review a teammate's code?", "collaboration")],
            [AskedRef("p-ivo", 1, "And how old are you?")],
            [{"category": "system design", "questions": 1, "covered": 1, "seconds": 4.5, "spentS": 150.0,
              "budgetS": 120.0, "remainingS": 0.0, "over": True},
             {"category": "collaboration", "questions": 1, "covered": 0, "seconds": 0.0, "spentS": 0.0,
              "budgetS": None, "remainingS": None, "over": False}]))
        send(ProtectedTopicAlert("p-ivo", 1, "And how old are you?", "age", 1.0,
                                 "Ask about relevant experience instead; if the role has a legal minimum age: "
                                 "\"Are you at least 18?\""))
        send(TalkBalanceEvent([{"participantId": "p-ivo", "role": "interviewer", "speakingSeconds": 4.1,
                                "share": 0.48, "interruptions": 0},
                               {"participantId": "p-cand", "role": "candidate", "speakingSeconds": 4.5,
                                "share": 0.52, "interruptions": 0}],
                              {"questionSeq": 0, "questionParticipantId": "p-ivo", "seconds": 4.5, "words": 9}))

        alert = page.locator("#guidance-alerts .guidance-alert")
        await expect(alert).to_have_count(1)
        await expect(alert).to_contain_text("Protected topic: age")
        await expect(alert).to_contain_text("Are you at least 18?")
        checklist = page.locator("#guide-checklist li")
        await expect(checklist).to_have_count(2)
        await expect(checklist.nth(0)).to_have_attribute("data-covered", "true")
        await expect(checklist.nth(1)).to_have_attribute("data-covered", "false")
        # time used against the budget, the overrun said in words (not only by colour); no budget: the time used
        await expect(checklist.nth(0)).to_contain_text("(2:30 / 2:00 — over by 0:30)")
        await expect(checklist.nth(1)).not_to_contain_text("/")
        sections = page.locator("#guide-sections li")
        await expect(sections).to_have_text(["system design: 2:30 / 2:00 — over by 0:30", "collaboration: 0:00 used"])
        await expect(sections.nth(0)).to_have_attribute("data-over", "true")
        await expect(page.locator("#guide-extra")).to_contain_text("And how old are you?")
        await expect(page.locator("#talk-balance .balance-seg")).to_have_count(2)
        await expect(page.locator("#talk-balance")).to_contain_text("candidate 52%")
        await expect(page.locator("#talk-longest")).to_contain_text("Longest answer: 5 s, 9 words")
        # the backlog after a reconnect repeats the alert: still one banner
        send(ProtectedTopicAlert("p-ivo", 1, "And how old are you?", "age", 1.0, "Ask about experience."))
        # a candidate withdrawing consent mid-interview marks the transcript where it happened
        send(ConsentEvent(casey, False, "", datetime(2026, 12, 2, 9, 30, tzinfo=UTC), 0))
        await expect(page.locator("#transcript")).to_contain_text("Casey Candidate withdrew consent at")
        send(ConsentEvent(casey, True, "2026-01", datetime(2026, 12, 2, 9, 31, tzinfo=UTC), 0))
        await expect(page.locator("#transcript")).to_contain_text("Casey Candidate gave consent at")
        await expect(page.locator("#talk-longest")).to_be_visible()
        await expect(alert).to_have_count(1)
        if os.environ.get("SCREENSHOTS"):  # rewrites docs/guidance.png (off by default: the tree stays clean)
            top = await page.locator("#guidance-alerts").bounding_box()
            bottom = await page.locator("#guidance-panel").bounding_box()
            assert top and bottom
            await page.screenshot(path=str(REPO / "docs" / "guidance.png"), full_page=True,
                                  clip={"x": top["x"], "y": top["y"], "width": max(top["width"], bottom["width"]),
                                        "height": bottom["y"] + bottom["height"] - top["y"]})
        await alert.locator("button").click()
        await expect(alert).to_have_count(0)
        await page.click("#leave")
        assert not errors, errors
