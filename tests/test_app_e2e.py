"""The web app end to end against the real backend: the service (`server.create_app` under uvicorn on loopback,
nx-27017, an embedded nats-server, Whisper in its worker processes), headless Chromium, a fake microphone
speaking `jfk.flac`.

The walk the issue asks for, found by role and label the way people find things: the admin signs in and adds an
HR user and two interviewers; HR schedules an interview with interviewer 1 for a new candidate (a question's time
budget out of range and a competency longer than the API takes are refused in the form and nothing is sent; budgets
in range and competencies are stored with their questions, and the details page groups the questions by competency)
and copies the candidate link from the page; the candidate opens it in a browser of their own and speaks; interviewer 1
signs in, joins from the dashboard with one click and reads the candidate's words in the overlay; interviewer 2
signs in and sees no interview, and the API answers a direct read of it with 404. And the first start of `python
server.py` without users prints a one-time setup link that makes the first admin. `tests/test_webapp.py` keeps the
UI's edge cases (refresh, lock-outs, filters) against a loopback double.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from testing.browser import fake_microphone_args, write_speech
from testing.data import JFK_AUDIO
from testing.live_server import LiveServer, live_server, test_settings
from testing.server_process import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "correct horse battery staple"
ADMIN_EMAIL = "ada@example.com"
WORDS_TIMEOUT_MS = 60_000  # jfk's 11 s, its final, and Whisper under whatever else shares the machine


@asynccontextmanager
async def _browser(chromium: str, args: list[str]) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            yield browser
        finally:
            await browser.close()


async def _page(browser: Browser, errors: list[str], who: str) -> Page:
    """A fresh context (its own cookies: one person on their own machine) and its page; JS errors collected."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB")
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"{who}: {exc}"))
    return page


async def _sign_in(page: Page, url: str, email: str) -> None:
    await page.goto(f"{url}/app/")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Interviews", level=1)).to_be_visible()


async def _access_token(live: LiveServer, email: str) -> str:
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return str(r.json()["accessToken"])


async def test_admin_hr_candidate_and_interviewers_walk(chromium: str, tmp_path: Path, mongo_url: str) -> None:
    speech, silence = tmp_path / "jfk.wav", tmp_path / "silence.wav"
    write_speech(JFK_AUDIO, speech)
    write_speech(JFK_AUDIO, silence, tail_s=0.0, gain=0.0)
    settings = test_settings(tmp_path, mongo_url, guidance=False, stt_revise=False)
    errors: list[str] = []
    async with (live_server(settings) as live,
                _browser(chromium, fake_microphone_args(silence)) as staff,
                _browser(chromium, fake_microphone_args(speech)) as candidates):
        assert live.components.accounts is not None
        await live.components.accounts.create_admin(ADMIN_EMAIL, "default", PASSWORD)
        url = live.url

        # ---- the admin adds HR and two interviewers
        admin = await _page(staff, errors, "admin")
        await _sign_in(admin, url, ADMIN_EMAIL)
        await admin.get_by_role("navigation", name="Main").get_by_role("link", name="Users").click()
        await expect(admin.get_by_role("heading", name="Users", level=1)).to_be_visible()
        people = [("Hana HR", "hana@example.com", "HR"), ("Ivo Interviewer", "ivo@example.com", "Interviewer"),
                  ("Una Unassigned", "una@example.com", "Interviewer")]
        for name, email, role in people:
            await admin.get_by_label("Name", exact=True).fill(name)
            await admin.get_by_label("Email", exact=True).fill(email)
            await admin.get_by_label("Role").select_option(label=role)
            await admin.get_by_label("Initial password").fill(PASSWORD)
            await admin.get_by_role("button", name="Add user").click()
            await expect(admin.get_by_role("table", name=re.compile("Users"))
                         .get_by_role("row", name=re.compile(name))).to_contain_text(email)
        await admin.context.close()

        # ---- HR schedules an interview with Ivo for a new candidate and copies the candidate link
        hr = await _page(staff, errors, "hr")
        await _sign_in(hr, url, "hana@example.com")
        await hr.get_by_role("link", name="Schedule an interview").click()
        await hr.get_by_label("New candidate").check()
        await hr.get_by_label("Candidate name").fill("Casey Candidate")
        await hr.get_by_label("Candidate email").fill("casey@example.com")
        await hr.get_by_label("Job id").fill("backend-dev")
        await hr.get_by_label("Date and time").fill("2030-03-05T14:30")
        await hr.get_by_label("Ivo Interviewer (ivo@example.com)").check()
        await hr.get_by_label("Question 1", exact=True).fill("What would you ask of your country?")
        # from the keyboard, text -> competency -> budget: a competency of 101 characters (the API takes 100) is
        # said next to its field as it is typed, a time budget out of 1 s .. 8 h when the form is sent; nothing is sent
        await hr.get_by_label("Question 1", exact=True).press("Tab")
        competency = hr.get_by_label("Competency for question 1")
        await expect(competency).to_be_focused()
        await hr.keyboard.type("x" * 101)
        await expect(competency).to_have_attribute("aria-invalid", "true")
        await expect(competency).to_have_accessible_description(re.compile("at most 100 characters; this one has more"))
        await expect(hr.locator("#competency-1-error")).to_have_attribute("aria-live", "polite")
        await hr.keyboard.press("Tab")
        budget = hr.get_by_label("Time budget for question 1 (minutes)")
        await expect(budget).to_be_focused()
        await hr.keyboard.type("481")
        await hr.keyboard.press("Enter")
        await expect(budget).to_have_attribute("aria-invalid", "true")
        await expect(budget).to_have_accessible_description(re.compile("from 1 second to 8 hours"))
        problems = hr.get_by_role("alert").filter(has_text="Please correct these")
        await expect(problems).to_contain_text("Question 1: a competency can be at most 100 characters")
        await expect(problems).to_contain_text("Question 1: the time budget must be from 1 second to 8 hours")
        await expect(competency).to_be_focused()  # the first problem
        hr_token = await _access_token(live, "hana@example.com")
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {hr_token}"}) as http:
            assert (await http.get("/api/interviews")).json()["items"] == []
            assert (await http.get("/api/candidates")).json()["items"] == []
        await competency.fill("  Civic duty ")
        await expect(competency).not_to_have_attribute("aria-invalid", "true")
        await budget.fill("2.5")
        await expect(budget).not_to_have_attribute("aria-invalid", "true")
        # two questions in one competency, one in another, one in none; a competency field offers those typed in
        # the other rows
        guide = [("And what would you do for it?", "Motivation", ""),
                 ("What can we do together for the freedom of man?", "Civic duty", "1"),
                 ("Anything else?", "", "")]
        for n, (text, comp, minutes) in enumerate(guide, start=2):
            await hr.get_by_role("button", name="Add a question").click()
            await hr.get_by_label(f"Question {n}", exact=True).fill(text)
            await hr.get_by_label(f"Competency for question {n}").fill(comp)
            await hr.get_by_label(f"Time budget for question {n} (minutes)").fill(minutes)
        await hr.get_by_label("Competency for question 3").focus()
        await expect(hr.locator("datalist#competency-options option")).to_have_count(2)
        assert await hr.locator("datalist#competency-options option").evaluate_all(
            "options => options.map((o) => o.value)") == ["Civic duty", "Motivation"]
        await hr.get_by_role("button", name="Schedule interview").click()
        await expect(hr.get_by_role("heading", name="Interview with Casey Candidate")).to_be_visible()
        interview_id = hr.url.rstrip("/").rsplit("/", 1)[-1]
        await expect(hr.get_by_role("main")).not_to_contain_text("null")  # no absent part written as text
        panel = hr.get_by_role("region", name="Questions")
        await expect(panel.get_by_role("heading", level=3)).to_have_text(["Civic duty", "Motivation", "Other"])
        civic = panel.get_by_role("group", name="Civic duty")
        await expect(civic).to_contain_text("2 questions · time budget 3 min 30 s")
        await expect(civic.get_by_role("listitem")).to_have_text([
            "What would you ask of your country? · time budget 2 min 30 s",
            "What can we do together for the freedom of man? · time budget 1 min"])
        # numbered by their place in the guide, not within the section
        assert await civic.get_by_role("listitem").evaluate_all("items => items.map((li) => li.value)") == [1, 3]
        motivation = panel.get_by_role("group", name="Motivation")
        await expect(motivation.locator(".section-budget")).to_have_text("1 question")
        await expect(motivation.get_by_role("listitem")).to_have_text(["And what would you do for it?"])
        await expect(panel.get_by_role("group", name="Other").get_by_role("listitem")).to_have_text(["Anything else?"])
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {hr_token}"}) as http:
            stored = (await http.get(f"/api/interviews/{interview_id}")).json()["questions"]
        assert [(q["text"], q["category"], q.get("budgetS")) for q in stored] == [
            ("What would you ask of your country?", "Civic duty", 150.0),
            ("And what would you do for it?", "Motivation", None),
            ("What can we do together for the freedom of man?", "Civic duty", 60.0),
            ("Anything else?", "", None)]
        await hr.get_by_role("button", name="Copy candidate link").click()
        link = hr.get_by_role("textbox", name="Candidate link")
        await expect(link).to_have_value(re.compile(r"/candidate\?token="))
        candidate_link = await link.input_value()
        await hr.context.close()

        # ---- the candidate opens the link on their own machine, consents and speaks
        candidate = await _page(candidates, errors, "candidate")
        await candidate.goto(candidate_link)
        await candidate.get_by_role("checkbox", name=re.compile("consent")).check()
        await candidate.get_by_role("button", name="Join interview").click()
        await expect(candidate.locator("#state")).to_have_attribute("data-state", "connected", timeout=30_000)

        # ---- Ivo joins from the dashboard with one click and reads the candidate's words
        ivo = await _page(staff, errors, "ivo")
        await _sign_in(ivo, url, "ivo@example.com")
        await expect(ivo.get_by_role("status").filter(has_text="1 interview")).to_be_visible()
        await ivo.get_by_role("button", name=re.compile("^Join")).click()
        await ivo.wait_for_url(re.compile(r"/interviewer\?token="))
        await ivo.get_by_role("checkbox", name=re.compile("I consent")).check()
        await ivo.get_by_role("button", name="Join", exact=True).click()
        transcript = ivo.get_by_role("log", name="Live transcript")
        await expect(transcript).to_contain_text(re.compile(r"ask not what your country", re.I),
                                                 timeout=WORDS_TIMEOUT_MS)
        await expect(transcript).to_contain_text("Casey Candidate")

        # ---- Una, not assigned, sees nothing of it, in the app or from the API
        una = await _page(staff, errors, "una")
        await _sign_in(una, url, "una@example.com")
        await expect(una.get_by_role("status").filter(has_text="No interviews match.")).to_be_visible()
        await expect(una.get_by_role("button", name=re.compile("^Join"))).to_have_count(0)
        token = await _access_token(live, "una@example.com")
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
            for path in (f"/api/interviews/{interview_id}", f"/api/interviews/{interview_id}/transcript"):
                r = await http.get(path)
                assert r.status_code == 404, (path, r.text)
            assert (await http.post(f"/api/interviews/{interview_id}/join")).status_code == 404
            assert (await http.get("/api/interviews")).json()["items"] == []

        await candidate.get_by_role("button", name="Leave").click()
        await expect(candidate.locator("#state")).to_have_attribute("data-state", "left", timeout=30_000)
        assert not errors, errors


async def test_first_start_prints_a_one_time_setup_link(chromium: str, tmp_path: Path) -> None:
    """`python server.py` on an empty embedded store without ADMIN_API_KEY prints a setup link; opening it makes
    the first admin (signed in at once); the link does not work a second time."""
    server = ServerProcess(tmp_path / "data", admin_key="", env={"MONGODB_URL": "", "GUIDANCE": "false"})
    try:
        await server.start()
        deadline = time.monotonic() + 30
        while not (found := re.search(r"first admin: open (\S+)", server.tail_log(200))):
            assert time.monotonic() < deadline, server.tail_log()
            await asyncio.sleep(0.2)  # the line is printed just after /readyz turns 200
        printed = httpx.URL(found.group(1))
        token = printed.params["token"]
        assert printed.path == "/app/setup"
        link = f"{server.url}{printed.raw_path.decode()}"  # 127.0.0.1, not localhost: Chromium may try ::1 first
        errors: list[str] = []
        async with _browser(chromium, []) as browser:
            page = await _page(browser, errors, "first admin")
            await page.goto(link)
            await expect(page.get_by_role("heading", name="Create the first admin")).to_be_visible()
            await page.get_by_label("Your name").fill("Ada Admin")
            await page.get_by_label("Email").fill(ADMIN_EMAIL)
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Create admin account").click()
            await expect(page.get_by_role("heading", name="Users", level=1)).to_be_visible()
            await expect(page.get_by_role("table", name=re.compile("Users"))
                         .get_by_role("row", name=re.compile("Ada Admin"))).to_contain_text(ADMIN_EMAIL)

            again = await _page(browser, errors, "second use")
            await again.goto(link)
            await again.get_by_label("Email").fill("eve@example.com")
            await again.get_by_label("Password").fill(PASSWORD)
            await again.get_by_role("button", name="Create admin account").click()
            await expect(again.get_by_role("alert")).to_contain_text("An admin exists")
            await expect(again.get_by_role("link", name="Go to sign in")).to_be_visible()
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post("/api/auth/setup", json={"token": token, "email": "eve@example.com",
                                                         "password": PASSWORD})
            assert r.status_code == 410
        assert not errors, errors
    finally:
        assert server.stop() == 0, server.tail_log()
    # the token went to standard output once, never into a log line
    assert server.log_path.read_text().count(token) == 1
