"""The call between a room's participants (adapters.call): TURN credentials against a real coturn, signalling and
the audio relay with aiortc peers against the real service, and the pages in headless Chromium (fake camera and
microphone) calling each other peer to peer, or through the server's relay when no direct path exists.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint
from playwright.async_api import Browser, Page, async_playwright, expect

from adapters.call import IceConfig, turn_credentials
from settings import Settings
from testing.browser import fake_microphone_args, write_channel
from testing.live_server import LiveServer, live_server, test_settings
from testing.turn import TurnServer, turnserver_binary
from testing.whip_client import WavChannelTrack, WhipSession, whip_publish

DIALOGUE = "mobile_mixed"
TURN_SECRET = "turn-secret-0123456789abcdef"


# ---- TURN credentials ------------------------------------------------------------------------------------------
def test_turn_credentials_follow_the_rest_api_scheme() -> None:
    """username = `<expiry>:<user>`, credential = base64(HMAC-SHA1(secret, username)), computed independently by
    openssl exactly as coturn's documentation shows (`openssl dgst -binary -sha1 -hmac $secret | openssl base64`)."""
    username, credential = turn_credentials(TURN_SECRET.encode(), "p_abc", 1_700_000_000)
    assert username == "1700000000:p_abc"
    digest = subprocess.run(["openssl", "dgst", "-binary", "-sha1", "-hmac", TURN_SECRET],
                            input=username.encode(), capture_output=True, check=True).stdout
    b64 = subprocess.run(["openssl", "base64"], input=digest, capture_output=True, check=True).stdout
    assert credential == b64.decode().strip()

    ice = IceConfig(("stun:stun.example.org:3478", "turn:turn.example.org:3478?transport=udp",
                     "turns:turn.example.org:5349"), TURN_SECRET.encode(), 600, clock=lambda: 1_000.0)
    stun, turn = ice.for_participant("p_abc")
    assert stun == {"urls": ["stun:stun.example.org:3478"]}  # STUN needs no credentials
    assert turn["username"] == "1600:p_abc" and turn["urls"] == ["turn:turn.example.org:3478?transport=udp",
                                                                   "turns:turn.example.org:5349"]
    assert TURN_SECRET not in repr(ice)


class _OpenChannel:
    """A `call` data channel that is open and accepts every message."""

    readyState = "open"
    bufferedAmount = 0

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, data: str) -> None:
        self.sent.append(json.loads(data))


def test_a_resumed_members_channel_is_counted_once() -> None:
    """A resume's new `call` channel replaces the old one, whichever closes first: `call_members` counts people."""
    from adapters.call import CallHub, CallMember
    from adapters.metrics import Metrics

    metrics = Metrics()
    hub = CallHub(metrics)

    def members() -> float:
        return metrics.call_members._value.get()  # type: ignore[attr-defined,no-any-return]

    def member() -> CallMember:
        return CallMember("iv1", "p_cand", "candidate", "Cam", _OpenChannel())

    old, new = member(), member()
    hub.attach(old)
    hub.attach(new)  # the resumed page's channel opens before the old connection is closed
    hub.detach(old)
    assert members() == 1
    hub.detach(new)
    assert members() == 0
    first, second = member(), member()
    hub.attach(first)
    hub.detach(first)  # the old connection closes first
    hub.attach(second)
    assert members() == 1


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = turnserver_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("coturn is not installed (apt-get install coturn)")
        pytest.skip("coturn is not installed (apt-get install coturn)")
    server = TurnServer(tmp_path_factory.mktemp("coturn"), binary, TURN_SECRET)
    server.start()
    yield server
    server.stop()


async def test_minted_credentials_allocate_a_relay_on_coturn(coturn: TurnServer) -> None:
    """A real TURN server with `use-auth-secret` accepts what the service mints, and refuses a wrong secret or an
    expired credential."""
    ice = IceConfig((f"turn:127.0.0.1:{coturn.port}",), TURN_SECRET.encode(), 600)
    turn = ice.for_participant("p_cand")[0]

    async def allocate(username: str, password: str) -> tuple[str, int]:
        transport, _ = await create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", coturn.port),
                                                  username=username, password=password, lifetime=60)
        try:
            return transport.get_extra_info("sockname")  # type: ignore[no-any-return]
        finally:
            transport.close()

    async with asyncio.timeout(30):
        relayed = await allocate(turn["username"], turn["credential"])
        assert relayed[0] == "127.0.0.1"
        wrong = IceConfig(ice.urls, b"another-secret-0123456789", 600).for_participant("p_cand")[0]
        with pytest.raises(TransactionFailed):
            await allocate(wrong["username"], wrong["credential"])
        expired = IceConfig(ice.urls, TURN_SECRET.encode(), 600, clock=lambda: 1_000_000.0).for_participant("p")[0]
        with pytest.raises(TransactionFailed):
            await allocate(expired["username"], expired["credential"])


def test_ice_servers_setting_takes_stun_and_turn_urls() -> None:
    ok = Settings.from_env({"ICE_SERVERS": "stun:stun.l.google.com:19302, turn:turn.example.org?transport=tcp,"
                                           "turns:[2001:db8::1]:5349", "TURN_SECRET": TURN_SECRET})
    assert ok.ice_servers == ("stun:stun.l.google.com:19302", "turn:turn.example.org?transport=tcp",
                              "turns:[2001:db8::1]:5349")
    for bad in ("http://turn.example.org", "stun:host?transport=udp", "turn:host:3478?transport=sctp", "turn:"):
        with pytest.raises(ValueError, match="ICE_SERVERS"):
            Settings.from_env({"ICE_SERVERS": bad, "TURN_SECRET": TURN_SECRET})
    with pytest.raises(ValueError, match="TURN_SECRET"):
        Settings.from_env({"ICE_SERVERS": "turn:turn.example.org"})
    with pytest.raises(ValueError) as err:
        Settings.from_env({"TURN_SECRET": "short"})
    assert "short" not in str(err.value)  # a secret's value is never echoed


# ---- signalling and relay with aiortc peers --------------------------------------------------------------------
@pytest.fixture
async def live(tmp_path: Path, mongo_url: str) -> AsyncIterator[LiveServer]:
    async with live_server(test_settings(tmp_path, mongo_url)) as server:
        yield server


async def _join(live: LiveServer, interview: str, role: str, name: str, **kw: Any) -> tuple[WhipSession, str]:
    token = await live.token(interview, role, name)
    session = await whip_publish(f"{live.url}/whip/{interview}", token["token"], call=True, **kw)
    return session, str(token["participantId"])


async def _until(check: Callable[[], Awaitable[bool]], within_s: float = 30.0) -> None:
    async with asyncio.timeout(within_s):
        while True:  # a metric or a channel state: nothing to await but polling
            if await check():
                return
            await asyncio.sleep(0.1)


async def test_signalling_stays_between_the_participants_of_one_room(live: LiveServer, shared_data: Path) -> None:
    room, other_room = await live.create_interview(), await live.create_interview()
    quiet = shared_data / f"{DIALOGUE}.stereo.wav"
    cand, cand_id = await _join(live, room, "candidate", "Casey", track=WavChannelTrack(quiet, 1, encoded=True))
    ivo, ivo_id = await _join(live, room, "interviewer", "Ivo", track=WavChannelTrack(quiet, 0, encoded=True))
    obs, obs_id = await _join(live, room, "observer", "Olga", track=None, analysis=True)
    stranger, stranger_id = await _join(live, other_room, "interviewer", "Sam",
                                        track=WavChannelTrack(quiet, 0, encoded=True))
    async with cand, ivo, obs, stranger, asyncio.timeout(60):
        # Each side learns of the other; the observer is counted for the candidate, never listed.
        while True:
            peers = await cand.next_call_message("peers")
            if peers["peers"] and peers["observers"] == 1:
                break
        assert peers["self"] == cand_id
        assert [(p["participantId"], p["role"], p["name"]) for p in peers["peers"]] == [(ivo_id, "interviewer", "Ivo")]
        while not (await ivo.next_call_message("peers"))["peers"]:
            pass
        # The observer's call channel is closed by the server: it sends and receives nothing peer to peer.
        await _until(lambda: _closed(obs))
        assert obs.call_messages.empty()
        assert set(live.components.call.rooms[room]) == {cand_id, ivo_id}  # type: ignore[union-attr]
        # The other room's interviewer is alone in its call.
        assert (await stranger.next_call_message("peers"))["peers"] == []

        # An offer reaches the named peer, with `from` set by the server whatever the page claimed.
        cand.send_call({"type": "offer", "to": ivo_id, "from": stranger_id, "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"})
        offer = await ivo.next_call_message("offer")
        assert offer["from"] == cand_id and offer["to"] == ivo_id
        cand.send_call({"type": "candidate", "to": ivo_id, "candidate": {
            "candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "x": 1}})
        candidate = await ivo.next_call_message("candidate")
        assert "x" not in candidate["candidate"]  # only the fields of an RTCIceCandidateInit go on

        # Nothing reaches an observer, another room, or anyone with a malformed message; each is counted.
        bad: list[str | bytes] = [
            json.dumps({"type": "offer", "to": obs_id, "sdp": "v=0"}),
            json.dumps({"type": "offer", "to": stranger_id, "sdp": "v=0"}),
            "not json", b"\x00binary", json.dumps({"type": "shout", "to": ivo_id}),
            json.dumps({"type": "offer", "to": ivo_id, "sdp": 42}),
            json.dumps({"type": "offer", "to": ivo_id, "sdp": "v=0" + "x" * 70_000}),
        ]
        for message in bad:
            cand.send_call(message)
        expected = {"not_allowed": 2, "not_json": 1, "not_text": 1, "bad_type": 1, "bad_field": 1, "too_large": 1}
        await _until(lambda: _dropped_at_least(live, expected))
        # Quality reports become histograms labelled by path only.
        cand.send_call({"type": "stats", "peers": [{"participantId": ivo_id, "path": "p2p", "rttS": 0.031,
                                                    "jitterS": 0.004, "lossRatio": 0.0}]})
        await _until(lambda: _metric_at_least(live, "call_rtt_seconds_count", 1, path="p2p"))
        # A flood is cut by the rate limit.
        for _ in range(300):
            cand.send_call({"type": "bye", "to": ivo_id})
        await _until(lambda: _dropped_at_least(live, {"rate": 1}))
        ivo_messages = [m async for m in _drain(ivo)]
        stranger_messages = [m async for m in _drain(stranger)]
        assert all(m.get("from") == cand_id for m in ivo_messages if m["type"] != "peers")
        assert all(m["type"] == "peers" and not m["peers"] for m in stranger_messages)


async def test_a_fifth_interviewer_waits_outside_the_mesh_until_a_seat_frees(live: LiveServer, shared_data: Path,
                                                                             tmp_path: Path) -> None:
    """The candidate and the first four interviewers form the mesh; a fifth is told the call is full, is listed to
    nobody and reaches nobody, and takes the seat of an interviewer who leaves."""
    room = await live.create_interview()
    quiet = shared_data / f"{DIALOGUE}.stereo.wav"
    silence = tmp_path / "silence.wav"
    write_channel(quiet, None, silence)
    cand, cand_id = await _join(live, room, "candidate", "Casey", track=WavChannelTrack(silence, 0, encoded=True))
    seated = [await _join(live, room, "interviewer", f"Ivo {i}", track=WavChannelTrack(silence, 0, encoded=True))
              for i in range(4)]
    fifth, fifth_id = await _join(live, room, "interviewer", "Fifth", track=WavChannelTrack(silence, 0, encoded=True))
    async with cand, fifth, asyncio.timeout(60):
        try:
            while True:  # the candidate's latest view once everyone is in
                peers = await cand.next_call_message("peers")
                if len(peers["peers"]) == 4 and peers["full"] is False:
                    break
            assert {p["participantId"] for p in peers["peers"]} == {pid for _, pid in seated}
            while True:
                mine = await fifth.next_call_message("peers")
                if mine["full"]:
                    break
            assert mine["peers"] == []
            fifth.send_call({"type": "offer", "to": cand_id, "sdp": "v=0\r\n"})
            await _until(lambda: _dropped_at_least(live, {"not_allowed": 1}))
            seen_by_candidate = [m async for m in _drain(cand)]
            assert all(m["type"] == "peers" and fifth_id not in {p["participantId"] for p in m["peers"]}
                       for m in seen_by_candidate)

            # One of the four leaves: the fifth is admitted and meets the candidate.
            leaving, leaving_id = seated.pop(0)
            await leaving.close()
            while True:
                mine = await fifth.next_call_message("peers")
                if not mine["full"]:
                    break
            assert cand_id in {p["participantId"] for p in mine["peers"]}
            while True:
                peers = await cand.next_call_message("peers")
                ids = {p["participantId"] for p in peers["peers"]}
                if fifth_id in ids:
                    break
            assert leaving_id not in ids and len(ids) == 4
        finally:
            for session, _ in seated:
                await session.close()


async def _closed(session: WhipSession) -> bool:
    return session.call_channel is not None and session.call_channel.readyState == "closed"


async def _dropped_at_least(live: LiveServer, counts: dict[str, int]) -> bool:
    for reason, n in counts.items():
        if await live.metric("call_messages_dropped_total", reason=reason) < n:
            return False
    return True


async def _metric_at_least(live: LiveServer, name: str, n: float, **labels: str) -> bool:
    return await live.metric(name, **labels) >= n


async def _drain(session: WhipSession) -> AsyncIterator[dict[str, Any]]:
    while not session.call_messages.empty():
        yield session.call_messages.get_nowait()


async def test_relay_forwards_the_opus_packets_unchanged(live: LiveServer, shared_data: Path) -> None:
    """Two participants without a peer-to-peer path hear each other through the server: the packets that arrive are
    the ones the other side sent, byte for byte (no decoding or re-encoding on the way)."""
    room = await live.create_interview()
    wav = shared_data / f"{DIALOGUE}.stereo.wav"
    cand_track, ivo_track = WavChannelTrack(wav, 1, encoded=True), WavChannelTrack(wav, 0, encoded=True)
    heard: dict[str, list[bytes]] = {"cand": [], "ivo": []}
    cand, cand_id = await _join(live, room, "candidate", "Casey", track=cand_track, relay_slots=4,
                          relay_listener=lambda mid, payload, ts: heard["cand"].append(payload))
    ivo, ivo_id = await _join(live, room, "interviewer", "Ivo", track=ivo_track, relay_slots=4,
                              relay_listener=lambda mid, payload, ts: heard["ivo"].append(payload))
    async with cand, ivo, asyncio.timeout(60):
        while not (await cand.next_call_message("peers"))["peers"]:
            pass
        cand.send_call({"type": "relay", "to": ivo_id})
        to_cand, to_ivo = await cand.next_call_message("relay"), await ivo.next_call_message("relay")
        assert to_cand["mid"] is not None and to_ivo["mid"] is not None
        assert await live.metric("call_relayed_streams") == 2
        await _until(lambda: _heard(heard, 50), 45)  # 50 distinct packets: speech from both sides
        sent_by_cand = cand_track._packets
        sent_by_ivo = ivo_track._packets
        assert sent_by_cand is not None and sent_by_ivo is not None
        _assert_in_order(heard["ivo"], sent_by_cand)
        _assert_in_order(heard["cand"], sent_by_ivo)

        # The interviewer receives the candidate directly now: its `unrelay` ends that direction only. The
        # candidate's own direct path may not be up yet, so the interviewer's audio still reaches it.
        ivo.send_call({"type": "unrelay", "to": cand_id})
        await _until(lambda: _metric_below(live, "call_relayed_streams", 2))
        assert await live.metric("call_relayed_streams") == 1
        hub = live.components.call
        assert hub is not None
        cand_member, ivo_member = hub.rooms[room][cand_id], hub.rooms[room][ivo_id]
        assert not cand_member.taps and all(slot.source is None for slot in ivo_member.slots)
        assert set(ivo_member.taps) == {cand_id}
        assert [slot.source for slot in cand_member.slots].count(ivo_id) == 1
        await _stopped_one_way(heard, to="ivo", going_on="cand")

        # The candidate receives the interviewer directly too: nothing is relayed, every slot is idle.
        cand.send_call({"type": "unrelay", "to": ivo_id})
        await _until(lambda: _metric_is(live, "call_relayed_streams", 0))
        assert all(not m.taps and all(slot.source is None for slot in m.slots) for m in (cand_member, ivo_member))
        await _silent_while_sending(heard, [cand_track, ivo_track])
        # Another `unrelay` finds nothing to end; a page whose direct path broke asks again and is relayed both ways.
        cand.send_call({"type": "unrelay", "to": ivo_id})
        cand.send_call({"type": "relay", "to": ivo_id})
        await cand.next_call_message("relay")
        await ivo.next_call_message("relay")
        assert await live.metric("call_relayed_streams") == 2
    # Both left: nothing is relayed any more.
    await _until(lambda: _metric_is(live, "call_relayed_streams", 0))


async def _heard(heard: dict[str, list[bytes]], n: int) -> bool:
    return all(len(set(v)) >= n for v in heard.values())


async def _metric_is(live: LiveServer, name: str, value: float) -> bool:
    return await live.metric(name) == value


async def _metric_below(live: LiveServer, name: str, value: float) -> bool:
    return await live.metric(name) < value


IN_FLIGHT = 3  # packets already queued or on the wire when forwarding stops


async def _stopped_one_way(heard: dict[str, list[bytes]], *, to: str, going_on: str) -> None:
    """Nothing more reaches `to` while `going_on` receives another 50 packets (a second of relayed audio)."""
    then = {k: len(v) for k, v in heard.items()}
    await _until(lambda: _more(heard[going_on], then[going_on] + 50))
    assert len(heard[to]) - then[to] <= IN_FLIGHT, f"still relayed to {to} after its unrelay"


async def _silent_while_sending(heard: dict[str, list[bytes]], tracks: list[WavChannelTrack]) -> None:
    """Nothing more is heard on either side while both send another 50 packets (a second of audio)."""
    then = {k: len(v) for k, v in heard.items()}
    sent = [t.frames_sent for t in tracks]

    async def sent_enough() -> bool:
        return all(t.frames_sent >= n + 50 for t, n in zip(tracks, sent, strict=True))

    await _until(sent_enough)
    assert all(len(heard[k]) - then[k] <= IN_FLIGHT for k in heard), "still relayed after both unrelays"


async def _more(received: list[bytes], n: int) -> bool:
    return len(received) >= n


def _assert_in_order(received: list[bytes], sent: list[bytes]) -> None:
    """The received payloads are a subsequence of the sent ones (packets may be lost, never altered or reordered)."""
    assert set(received) <= set(sent), "a relayed payload differs from every one sent: it was re-encoded"
    at = 0
    for payload in received:
        at = sent.index(payload, at) + 1  # ValueError: out of order


# ---- the pages in Chromium -------------------------------------------------------------------------------------
HOOK_PEERS = "async () => (await window.interviewCall.stats()).peers"


async def _receiving(page: Page, role: str, path: str, *, frames: int, packets: int = 100,
                     within_s: float = 60.0) -> dict[str, Any]:
    """Waits until the page's hook reports `role` by `path` with that many audio packets and video frames."""
    async with asyncio.timeout(within_s):
        while True:  # the hook is a promise: Playwright's wait_for_function would take it as truthy at once
            for peer in await page.evaluate(HOOK_PEERS):
                if (peer["role"] == role and peer["path"] == path and peer["audioPacketsReceived"] > packets
                        and peer["videoFramesDecoded"] >= frames):
                    return peer  # type: ignore[no-any-return]
            await asyncio.sleep(0.5)


@asynccontextmanager
async def _browsers(chromium: str, mics: dict[str, Path]) -> AsyncIterator[dict[str, Browser]]:
    """One headless Chromium per fake microphone (the fake capture file is per browser process)."""
    async with async_playwright() as pw:
        browsers: dict[str, Browser] = {}
        try:
            for name, wav in mics.items():
                browsers[name] = await pw.chromium.launch(executable_path=chromium, headless=True,
                                                          args=fake_microphone_args(wav))
            yield browsers
        finally:
            for browser in browsers.values():
                await browser.close()


async def _page(browser: Browser, url: str, errors: list[str], *, width: int = 1280, height: int = 800) -> Page:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"{url}: {exc}"))
    # Chromium logs every HTTP error status as a console error without its request; those are judged from the
    # responses instead, where a DELETE of a WHIP session the server already ended (404) is the page working as
    # meant (whip.js ignores it: the closed peer connection ended the session first).
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)

    def on_response(response: Any) -> None:
        method = response.request.method
        if response.status >= 400 and not (method == "DELETE" and response.status == 404 and "/whip/" in response.url):
            errors.append(f"{method} {response.url} -> {response.status}")

    page.on("response", on_response)
    await page.goto(url)
    if await page.locator("#consent").is_visible():  # candidates and interviewers consent first; observers send nothing
        await page.check("#consent")
    await page.click("#join")
    await expect(page.locator("#state")).to_have_attribute("data-state", "connected", timeout=30_000)
    return page


async def _join_url(live: LiveServer, interview: str, role: str, name: str, query: str = "") -> str:
    token = await live.token(interview, role, name)
    page = "candidate" if role == "candidate" else "interviewer"
    return f"{live.url}/{page}?token={token['token']}{query}"


@pytest.mark.browser
@pytest.mark.slow  # the overlay check waits for real STT on the candidate's first answer
async def test_pages_call_each_other_peer_to_peer(live: LiveServer, chromium: str, shared_data: Path,
                                                  tmp_path: Path) -> None:
    stereo = shared_data / f"{DIALOGUE}.stereo.wav"
    candidate_wav, silent_wav = tmp_path / "candidate.wav", tmp_path / "silence.wav"
    write_channel(stereo, 1, candidate_wav)
    write_channel(stereo, None, silent_wav)
    room, other_room = await live.create_interview(), await live.create_interview()
    errors: list[str] = []
    async with _browsers(chromium, {"candidate": candidate_wav, "quiet": silent_wav}) as browsers:
        ivo = await _page(browsers["quiet"], await _join_url(live, room, "interviewer", "Ivo Interviewer"), errors)
        observer = await _page(browsers["quiet"], await _join_url(live, room, "observer", "Olga Observer"), errors)
        stranger = await _page(browsers["quiet"], await _join_url(live, other_room, "interviewer", "Sam Stranger"),
                               errors)
        # the candidate on a phone-sized screen
        cand = await _page(browsers["candidate"], await _join_url(live, room, "candidate", "Casey Candidate"), errors,
                           width=390, height=844)
        await expect(cand.locator(".notice:not(#aedt)")).to_contain_text("no video is recorded or analysed", ignore_case=True)

        # Each hears and sees the other, directly.
        await _receiving(cand, "interviewer", "p2p", frames=10)
        await _receiving(ivo, "candidate", "p2p", frames=10)
        await expect(cand.locator('.tile.peer')).to_contain_text("Ivo Interviewer")
        await expect(ivo.locator('.tile.peer')).to_contain_text("Casey Candidate")
        await expect(cand.locator(".tile.self video")).to_be_visible()
        # The candidate sees who is watching: the interviewer by name, the observer counted.
        await expect(cand.locator("#watching")).to_contain_text("Ivo Interviewer")
        await expect(cand.locator("#watching")).to_contain_text("1 observer")
        # On the phone-sized screen the tiles fit the width.
        assert await cand.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")

        # The observer and the other room's page are in nobody's call.
        assert await observer.evaluate(HOOK_PEERS) == []
        assert await stranger.evaluate(HOOK_PEERS) == []
        assert await stranger.locator(".tile.peer").count() == 0
        await expect(observer.locator("#call-note")).to_contain_text("no audio or video")

        # The server received audio only: no page offered it video, and no session of its receives any.
        assert await live.metric("webrtc_tracks_received_total", kind="video") == 0
        # the candidate and two interviewers (a page that had to resume its session offers again)
        assert await live.metric("webrtc_tracks_received_total", kind="audio") >= 3
        for session in live.components.whip.sessions.values():  # type: ignore[union-attr]
            assert all(t.kind == "audio" or t.currentDirection in (None, "inactive")
                       for t in session.pc.getTransceivers())

        # The overlay still shows the candidate's words (and the observer's too).
        for page in (ivo, observer):
            await page.wait_for_function(
                """(phrase) => [...document.querySelectorAll('.seg[data-final="true"][data-role="candidate"] .text')]
                     .some((el) => el.textContent.toLowerCase().replace(/[^a-z0-9]+/g, '').includes(phrase))""",
                arg="shippedofflinemode", timeout=120_000, polling=500)

        # Connection quality is shown per peer and reported to the server, by path.
        await expect(cand.locator(".tile.peer .quality")).to_have_attribute("data-level", re.compile("good|fair|poor"))
        await _until(lambda: _metric_at_least(live, "call_rtt_seconds_count", 1, path="p2p"), 60)

        # The camera toggle stops the video the interviewer receives; the call goes on.
        await cand.click("#camera")
        await expect(cand.locator("#camera")).to_have_attribute("aria-pressed", "true")
        await cand.click("#leave")
        await expect(ivo.locator(".tile.peer")).to_have_count(0, timeout=30_000)
    assert not errors, errors


@pytest.mark.browser
async def test_pages_without_a_direct_path_talk_through_the_relay_until_one_appears(
        live: LiveServer, chromium: str, shared_data: Path, tmp_path: Path) -> None:
    stereo = shared_data / f"{DIALOGUE}.stereo.wav"
    candidate_wav, interviewer_wav = tmp_path / "candidate.wav", tmp_path / "interviewer.wav"
    write_channel(stereo, 1, candidate_wav)
    write_channel(stereo, 0, interviewer_wav)
    room = await live.create_interview()
    errors: list[str] = []
    # `p2p-retry-s=1`: a relayed pair retries the direct path after 1 s, 2 s, 4 s… instead of 15 s, 30 s, 60 s…
    # (whichever page makes the offers, which depends on the participant ids)
    retry = "&p2p-retry-s=1"
    async with _browsers(chromium, {"candidate": candidate_wav, "interviewer": interviewer_wav}) as browsers:
        ivo = await _page(browsers["interviewer"],
                          await _join_url(live, room, "interviewer", "Ivo Interviewer", retry), errors)
        # `p2p=off`: the candidate's page withholds its ICE candidates and ignores the interviewer's
        cand = await _page(browsers["candidate"],
                           await _join_url(live, room, "candidate", "Casey Candidate", "&p2p=off" + retry), errors)
        await _receiving(cand, "interviewer", "relay", frames=0)
        before = await _receiving(ivo, "candidate", "relay", frames=0)
        assert await live.metric("call_relayed_streams") == 2
        await expect(cand.locator(".tile.peer .tile-note")).to_contain_text("Video is off")
        await expect(ivo.locator(".tile.peer .tile-note")).to_contain_text("Video is off")
        # Relayed audio keeps flowing while the direct path is retried (and fails), and no video comes that way.
        after = await _receiving(ivo, "candidate", "relay", frames=0, packets=before["audioPacketsReceived"] + 150)
        assert after["videoFramesDecoded"] == 0
        assert await live.metric("call_relayed_streams") == 2

        # The network lets the direct path through: the next retry connects, both switch, the server stops relaying.
        await cand.evaluate("window.interviewCall.allowP2P()")
        direct = await _receiving(ivo, "candidate", "p2p", frames=10, packets=50)
        await _receiving(cand, "interviewer", "p2p", frames=10, packets=50)
        await _until(lambda: _metric_is(live, "call_relayed_streams", 0), 30)
        members = live.components.call.rooms[room].values()  # type: ignore[union-attr]
        assert all(not m.taps and all(slot.source is None for slot in m.slots) for m in members)
        await expect(ivo.locator(".tile.peer .tile-note")).to_have_text("")
        assert await ivo.evaluate("document.querySelector('.tile.peer audio').srcObject === null")
        # Audio goes on directly after the switch.
        await _receiving(ivo, "candidate", "p2p", frames=10, packets=direct["audioPacketsReceived"] + 100)
    assert not errors, errors
