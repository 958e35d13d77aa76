"""End to end in headless Chromium: the real `python server.py`, the real pages, a fake microphone from a WAV.

The candidate page joins with its microphone playing the candidate's channel of a shared dialogue; the
interviewer page, in a second browser with a silent microphone, must show the candidate's words (waiting on a
text match against the ground truth, never on a sleep). Chromium is the Debian package at /usr/bin/chromium,
driven by Playwright's CDP client; no browser is ever downloaded.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import wave
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.async_api import BrowserContext, Page, async_playwright, expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
DIALOGUE = "mobile_mixed"
START_TIMEOUT_S = 180  # first start loads Whisper and starts the embedded store; slow on a busy 2-core box
WORDS_TIMEOUT_MS = 120_000  # the first candidate turn ends 14 s into the file; the rest is STT under contention

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
    "--use-fake-device-for-media-stream",
    # aiortc cannot resolve the .local names Chromium uses to hide host addresses; we are on loopback anyway.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
]


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium chromium-driver (see .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


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
           "ADMIN_API_KEY": admin_key, "LOG_LEVEL": "INFO"}
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

    threading.Thread(target=pump, name="server-stdout", daemon=True).start()
    srv = Server("", admin_key, process, log)
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


def _write_channel(src: Path, channel: int | None, dst: Path) -> None:
    """One channel of `src` as 16-bit mono PCM WAV (what Chromium's fake capture reads); None = silence."""
    with wave.open(str(src)) as w:
        assert w.getsampwidth() == 2, "the shared dialogues are 16-bit PCM"
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, channels)
    mono = np.zeros(len(pcm), dtype="<i2") if channel is None else np.ascontiguousarray(pcm[:, channel])
    with wave.open(str(dst), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(mono.tobytes())


@asynccontextmanager
async def _browser(chromium: str, profile: Path, mic_wav: Path) -> AsyncIterator[tuple[BrowserContext, Page, list[str]]]:
    """A fresh headless Chromium whose microphone plays `mic_wav`; yields its page and the page's JS errors."""
    errors: list[str] = []
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={mic_wav}"],
            viewport={"width": 1280, "height": 800})
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            yield context, page, errors
        finally:
            await context.close()


def _ground_truth(shared_data: Path) -> list[dict[str, object]]:
    turns = json.loads((shared_data / f"{DIALOGUE}.json").read_text())["turns"]
    return [t for t in turns if t["speaker"] == "candidate"]


async def test_interviewer_page_shows_candidate_words(server: Server, chromium: str, shared_data: Path,
                                                      tmp_path: Path) -> None:
    stereo = shared_data / f"{DIALOGUE}.stereo.wav"
    candidate_wav, silent_wav = tmp_path / "candidate.wav", tmp_path / "silence.wav"
    _write_channel(stereo, 1, candidate_wav)  # right channel = the candidate
    _write_channel(stereo, None, silent_wav)
    first_turn = _normalise(str(_ground_truth(shared_data)[0]["text"]))
    assert "offline mode" in first_turn

    interview = server.create_interview()
    candidate_url = server.join_url(interview, "candidate", "Casey Candidate")
    interviewer_url = server.join_url(interview, "interviewer", "Ivo Interviewer")

    async with (_browser(chromium, tmp_path / "profile-interviewer", silent_wav) as (_, overlay, overlay_errors),
                _browser(chromium, tmp_path / "profile-candidate", candidate_wav) as (_, cand, cand_errors)):
        await overlay.goto(interviewer_url)
        await expect(overlay.locator("#who")).to_contain_text("Ivo Interviewer")
        await overlay.click("#join")
        await expect(overlay.locator("#state")).to_have_attribute("data-state", "connected", timeout=30_000)

        await cand.goto(candidate_url)
        await expect(cand.locator(".notice")).to_contain_text("no voice-tone or facial emotion analysis", ignore_case=True)
        await cand.click("#join")
        await expect(cand.locator("#state")).to_have_attribute("data-state", "connected", timeout=30_000)

        # The overlay lists the candidate as a participant, labelled with the name and role from the token.
        participant = overlay.locator(".participants li", has_text="Casey Candidate")
        await expect(participant).to_contain_text("candidate", timeout=30_000)

        # The candidate's first answer arrives as a final segment, labelled with the candidate's name.
        await overlay.wait_for_function(
            """(phrase) => [...document.querySelectorAll('.seg[data-final="true"][data-role="candidate"] .text')]
                 .some((el) => el.textContent.toLowerCase().replace(/[^a-z0-9' ]+/g, ' ')
                                 .replace(/\\s+/g, ' ').includes(phrase))""",
            arg="offline mode", timeout=WORDS_TIMEOUT_MS, polling=250)
        segment = overlay.locator('.seg[data-final="true"][data-role="candidate"]', has_text=re.compile("offline", re.I))
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

        # Leaving ends the session on the server (WHIP DELETE) and the overlay says so.
        await cand.click("#leave")
        await expect(cand.locator("#state")).to_have_attribute("data-state", "left")
        await expect(participant).to_have_class(re.compile(r"\bgone\b"), timeout=30_000)

        assert not cand_errors, cand_errors
        assert not overlay_errors, overlay_errors


async def test_forged_token_is_refused_with_the_servers_reason(server: Server, chromium: str, shared_data: Path,
                                                                tmp_path: Path) -> None:
    silent_wav = tmp_path / "silence.wav"
    _write_channel(shared_data / f"{DIALOGUE}.stereo.wav", None, silent_wav)
    interview = server.create_interview()
    url = server.join_url(interview, "candidate", "Mallory")
    token = httpx.URL(url).params["token"]
    payload, _, _sig = token.partition(".")
    forged = f"{payload}.{base64.urlsafe_b64encode(b'not the signature').rstrip(b'=').decode()}"

    async with _browser(chromium, tmp_path / "profile", silent_wav) as (_, page, _errors):
        await page.goto(f"{server.url}/candidate?token={forged}")
        await expect(page.locator("#who")).to_contain_text("Mallory")  # the page reads the payload to greet
        await page.click("#join")
        await expect(page.locator("#state")).to_have_attribute("data-state", "failed", timeout=30_000)
        await expect(page.locator("#error")).to_contain_text("invalid or has expired")
        await expect(page.locator("#join")).to_be_enabled()  # nothing is stuck; the user can try again
        # The microphone was released after the refusal.
        assert await page.evaluate("document.getElementById('mic-state').textContent") == "Microphone off"


def test_pages_load_nothing_from_elsewhere() -> None:
    """Every asset the pages reference is one of ours under /static (no CDN, no build step)."""
    static = REPO / "adapters" / "static"
    for page in ("index.html", "candidate.html", "interviewer.html"):
        html = (static / page).read_text()
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        for ref in refs:
            assert not re.match(r"^(https?:)?//", ref), f"{page} loads {ref} from elsewhere"
            if ref.startswith("/static/"):
                assert (static / ref.removeprefix("/static/")).is_file(), f"{page} references missing {ref}"
    for script in static.glob("*.js"):
        for ref in re.findall(r'from\s+"([^"]+)"', script.read_text()):
            assert ref.startswith("/static/") and (static / ref.removeprefix("/static/")).is_file(), (script, ref)
