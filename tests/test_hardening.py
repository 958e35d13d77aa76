"""Defects an outside probe found (issue 15), each pinned by a test against the real service: real uvicorn on
port 0, real aiortc peers, raw sockets for misbehaving HTTP clients."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from testing.live_server import LiveServer, live_server, test_settings


@pytest.fixture
async def live(tmp_path: Path, mongo_url: str) -> AsyncIterator[LiveServer]:
    async with live_server(test_settings(tmp_path, mongo_url)) as server:
        yield server


async def offer(*, audio: bool = True) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if audio:
        pc.addTransceiver("audio", direction="sendonly")
    else:
        pc.createDataChannel("analysis")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def sdp_post(live: LiveServer, path: str, token: str, sdp: str | bytes) -> httpx.Request:
    return live.http.build_request("POST", path, content=sdp, headers={
        "Content-Type": "application/sdp", "Authorization": f"Bearer {token}"})


async def eventually(predicate: Callable[[], bool], within_s: float) -> None:
    """Polls `predicate` (state of the in-process server that no event announces) until it holds."""
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110 - no event announces this state
            await asyncio.sleep(0.02)


async def test_a_connection_that_fails_while_joining_leaves_no_ghost(live: LiveServer) -> None:
    iid = await live.create_interview()
    cand = await live.token(iid, "candidate", "Cat")
    registry, whip = live.components.registry, live.components.whip
    # Only TCP candidates: aioice connects over UDP only, so the server's ICE fails at once, while the POST
    # is still adding the participant (opening the room reads the store).
    pc, sdp = await offer()
    tcp_only = "\r\n".join(re.sub(r"^(a=candidate:\S+ \d+ )udp (.*)$", r"\1tcp \2 tcptype passive", line)
                           for line in sdp.split("\r\n"))
    assert " udp " not in tcp_only and " tcp " in tcp_only
    try:
        for _ in range(3):  # a ghost 3 times out of 3 before the fix
            r = await live.http.send(sdp_post(live, f"/whip/{iid}", cand["token"], tcp_only))
            # Refused, or (if the failure came after the answer) dropped like any lost connection.
            assert r.status_code in (201, 400), r.text
            if r.status_code == 400:
                assert r.json()["error"]["code"] == "connection_failed"
            await eventually(lambda: registry.get(iid, cand["participantId"]) is None, within_s=10)
            assert not [s for s in whip.sessions.values() if s.closed or s.pc.connectionState == "failed"]
            assert registry.rooms == {}  # the room closed with its only participant
        assert await live.metric("interview_participants_active", role="candidate") == 0
        assert await live.metric("interview_rooms_active") == 0
    finally:
        await pc.close()


async def test_pages_are_served_only_by_their_guarded_routes(live: LiveServer) -> None:
    iid = await live.create_interview()
    candidate = (await live.token(iid, "candidate", "Cat"))["token"]
    async with httpx.AsyncClient(base_url=live.url) as anon:
        for path in ("/static/candidate.html", "/static/interviewer.html", "/static/index.html",
                     f"/static/interviewer.html?token={candidate}", "/static/./interviewer.html",
                     "/static/x/../candidate.html", "/static/%63andidate.html"):
            r = await anon.get(path)
            assert r.status_code == 404, (path, r.status_code)
            assert "<html" not in r.text.lower(), path
        # The guarded route still refuses the candidate's token on the interviewer page.
        assert (await anon.get(f"/interviewer?token={candidate}")).status_code == 403
        # Every asset carries the security headers the pages do (CSP with frame-ancestors, nosniff, no referrer).
        for path in ("/static/call.js", "/static/app.css", "/static/whip.js"):
            r = await anon.get(path)
            assert r.status_code == 200, path
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
            revalidated = await anon.get(path, headers={"If-None-Match": r.headers["etag"]})
            assert revalidated.status_code == 304
            assert "frame-ancestors 'none'" in revalidated.headers["content-security-policy"]
