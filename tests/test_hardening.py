"""Defects an outside probe found (issue 15), each pinned by a test against the real service: real uvicorn on
port 0, real aiortc peers, raw sockets for misbehaving HTTP clients."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from testing.live_server import ADMIN_KEY, LiveServer, live_server, test_settings
from testing.whip_client import WavChannelTrack, whip_publish


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


CHROME_CANDIDATES = [  # what browsers send, which must stay accepted
    "842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag sXQe "
    "network-cost 999",
    "3885250869 1 udp 2122260223 8b35a3c4-40f4-4c04-9e4e-33b1e1b5fd21.local 59305 typ host generation 0 "
    "ufrag sXQe network-id 1",
    "1853887674 1 tcp 1518280447 2001:db8::1 9 typ host tcptype active generation 0 network-id 2",
    "a+b/c 256 UDP 0 10.0.0.1 65535 typ relay raddr 198.51.100.1 rport 3478",
]


def test_browser_candidates_are_accepted() -> None:
    from adapters.webrtc import check_candidate

    for line in CHROME_CANDIDATES:
        check_candidate(line)


async def test_malformed_ice_candidates_are_refused_by_name(live: LiveServer,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    iid = await live.create_interview()
    token = (await live.token(iid, "candidate", "Cat"))["token"]
    pc, sdp = await offer()
    good = next(line for line in sdp.split("\r\n") if line.startswith("a=candidate:"))
    f, comp, transport, prio, host, port, *_ = good[len("a=candidate:"):].split()
    bad = {  # candidate (after "a=candidate:") -> what the error must name
        f"{f} {comp} {transport} {prio} {host} 70000 typ host": "port",
        f"{f} {comp} {transport} {prio} {host} -1 typ host": "port",
        f"{f} 0 {transport} {prio} {host} {port} typ host": "component",
        f"{f} 257 {transport} {prio} {host} {port} typ host": "component",
        f"{f} {comp} sctp {prio} {host} {port} typ host": "transport",
        f"{f} {comp} {transport} 4294967296 {host} {port} typ host": "priority",
        f"{f} {comp} {transport} high {host} {port} typ host": "priority",
        f"{f} {comp} {transport} {prio} evil.example.com {port} typ host": "address",
        f"{f} {comp} {transport} {prio} 999.1.1.1 {port} typ host": "address",
        f"{f} {comp} {transport} {prio} {host} {port} typ bogus": "typ",
        f"{f} {comp} {transport} {prio} {host} {port} type host": "typ",
        f"{f} {comp} {transport} {prio} {host} {port} typ srflx raddr nowhere rport 1": "raddr",
        f"{f} {comp} {transport} {prio} {host} {port} typ srflx raddr 10.0.0.1 rport 99999": "rport",
        f"{f} {comp} tcp {prio} {host} {port} typ host tcptype sideways": "tcptype",
        f"{f} {comp} {transport} {prio} {host} {port} typ host generation": "no value",
        f"fo@o {comp} {transport} {prio} {host} {port} typ host": "foundation",
        f"{f} {comp} {transport} {prio} {host}": "expected",
    }
    try:
        for candidate, named in bad.items():
            r = await live.http.send(sdp_post(live, f"/whip/{iid}", token, sdp.replace(good, "a=candidate:" + candidate)))
            assert r.status_code == 400, (candidate, r.text)
            error = r.json()["error"]
            assert error["code"] == "malformed_sdp" and named in error["message"], (candidate, error)
        assert live.components.registry.rooms == {}
        # The service still serves, and nothing malformed reached aioice: not one traceback in the log.
        assert (await live.http.send(sdp_post(live, f"/whip/{iid}", token, sdp))).status_code == 201
    finally:
        await pc.close()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def half_a_request(url: str, head: str, body: bytes) -> None:
    """Sends `head` (request line and headers) and `body` on a raw socket, then closes it without reading."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_a_client_leaving_mid_body_is_logged_once_quietly(live: LiveServer,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    iid = await live.create_interview()
    token = (await live.token(iid, "candidate", "Cat"))["token"]
    pc, sdp = await offer()
    host = live.url.removeprefix("http://")
    try:
        await half_a_request(live.url, f"POST /whip/{iid} HTTP/1.1\nHost: {host}\nContent-Type: application/sdp\n"
                             f"Authorization: Bearer {token}\nContent-Length: {len(sdp)}\n",
                             sdp[: len(sdp) // 2].encode())
        await half_a_request(live.url, f"POST /api/interviews HTTP/1.1\nHost: {host}\n"
                             f"Content-Type: application/json\nAuthorization: Bearer {ADMIN_KEY}\n"
                             "Content-Length: 1000\n", b'{"candidateId": "c1", ')

        def refusals() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "client_disconnected" in r.getMessage()]

        await eventually(lambda: len(refusals()) == 2, within_s=10)
        assert {r.levelno for r in refusals()} == {logging.INFO}
        assert (await live.http.get(f"/api/interviews/{iid}")).status_code == 200  # still serving
    finally:
        await pc.close()
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "Exception in ASGI application" in m], messages
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], messages


async def test_only_allowed_hosts_are_served_and_links_never_follow_an_untrusted_host(
        tmp_path: Path, mongo_url: str) -> None:
    async def token_for(server: LiveServer, host: str) -> httpx.Response:
        iid = await server.create_interview()
        return await server.http.post(f"/api/interviews/{iid}/tokens", json={"role": "candidate"},
                                      headers={"Host": host})

    async with live_server(test_settings(tmp_path, mongo_url)) as live:
        port = live.url.rsplit(":", 1)[1]
        for evil in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost@evil.example"):
            r = await token_for(live, evil)
            assert r.status_code == 400, (evil, r.text)
            assert "token" not in r.text
        assert (await live.http.get("/healthz", headers={"Host": "evil.example"})).status_code == 400
        for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            r = await token_for(live, good)
            assert r.status_code == 201, (good, r.text)
            assert r.json()["joinUrl"].startswith(f"http://{good}/candidate?token=")

    # `*` lets every Host in, but a link is built only from a host named explicitly (or PUBLIC_URL).
    async with live_server(test_settings(tmp_path, mongo_url, allowed_hosts="*,meet.example.com")) as live:
        r = await token_for(live, "evil.example")
        assert r.status_code == 201 and r.json()["joinUrl"].startswith("/candidate?token="), r.text
        r = await token_for(live, "meet.example.com")
        assert r.json()["joinUrl"].startswith("http://meet.example.com/candidate?token=")
    async with live_server(test_settings(tmp_path, mongo_url, public_url="https://meet.example.com")) as live:
        assert (await token_for(live, "evil.example")).status_code == 400
        r = await token_for(live, "meet.example.com")
        assert r.json()["joinUrl"].startswith("https://meet.example.com/candidate?token="), r.text


def test_allowed_hosts_setting() -> None:
    from settings import Settings

    assert Settings.from_env({}).trusted_hosts() == ("localhost", "127.0.0.1", "::1")
    assert Settings.from_env({"PUBLIC_URL": "https://Meet.Example.com:8443", "HOST": "10.0.0.5"}).trusted_hosts() \
        == ("localhost", "127.0.0.1", "::1", "meet.example.com", "10.0.0.5")
    assert Settings.from_env({"ALLOWED_HOSTS": "a.example, *.b.example, [::1]"}).trusted_hosts() == \
        ("a.example", "*.b.example", "::1")
    for bad in ("a*b", "evil.example/x", "x y", "*.", "*evil"):
        with pytest.raises(ValueError, match="ALLOWED_HOSTS"):
            Settings.from_env({"ALLOWED_HOSTS": bad})


async def test_health_bodies_are_minimal_and_metrics_can_need_a_token(tmp_path: Path, mongo_url: str) -> None:
    metrics_token = "metrics-token-0123456789"
    async with live_server(test_settings(tmp_path, mongo_url, metrics_token=metrics_token)) as live:
        async with httpx.AsyncClient(base_url=live.url) as anon:
            assert (await anon.get("/healthz")).json() == {"status": "ok"}
            # Status and booleans only: no outbox counters or error text for anyone who asks.
            ready = await anon.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"status": "ready", "checks": {"lifespan": True, "store": True, "outbox": True,
                                                                     "audit": True}}
            for headers in ({}, {"Authorization": f"Bearer {ADMIN_KEY}"}, {"Authorization": "Bearer wrong"},
                            {"Authorization": metrics_token}, {"Authorization": f"Basic {metrics_token}"}):
                r = await anon.get("/metrics", headers=headers)
                assert r.status_code == 401, headers
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "interview_rooms_active" not in r.text
            r = await anon.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
            assert r.status_code == 200 and "interview_rooms_active" in r.text


async def test_half_sent_bodies_are_cut_off(tmp_path: Path, mongo_url: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with live_server(test_settings(tmp_path, mongo_url, body_timeout_s=1.0)) as live:
        iid = await live.create_interview()
        token = (await live.token(iid, "candidate", "Cat"))["token"]
        host, port = live.url.removeprefix("http://").split(":")
        heads = [f"POST /whip/{iid} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/sdp\r\n"
                 f"Authorization: Bearer {token}\r\nContent-Length: 5000\r\n\r\nv=0\r\n",
                 f"POST /api/interviews HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Length: 1000\r\n\r\n{{\"jobId\": "]

        async def slow_client(head: str) -> bytes:
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(head.encode())  # and then nothing more: the rest of the body never comes
                await writer.drain()
                return await reader.read()  # everything until the server closes the connection
            finally:
                writer.close()

        async with asyncio.timeout(30):  # without a body timeout these would wait for ever
            answers = await asyncio.gather(*(slow_client(heads[k % 2]) for k in range(50)))
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b'"code":"body_timeout"' in answer
        # The service kept serving meanwhile, and nobody joined on a half offer.
        assert (await live.http.get(f"/api/interviews/{iid}")).status_code == 200
        assert live.components.registry.rooms == {}
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_half_sent_heads_are_cut_off_while_others_are_served(tmp_path: Path, mongo_url: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with live_server(test_settings(tmp_path, mongo_url, header_timeout_s=1.0)) as live:
        host, port = live.url.removeprefix("http://").split(":")
        iid = await live.create_interview()
        full = (f"GET /api/interviews/{iid} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {ADMIN_KEY}\r\n\r\n").encode()
        halves = [full[:9], full[:len(full) // 2], full[:-2]]  # part of the line, of the headers, all but the end

        async def half_sent(head: bytes) -> bytes:
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(head)  # and then nothing more
                return await reader.read()  # everything until the server closes the connection
            finally:
                writer.close()

        async def trickling() -> bytes:
            """A byte of a head at a time, for as long as the server listens (slowloris)."""
            reader, writer = await asyncio.open_connection(host, int(port))
            head = full * 1000

            async def drip() -> None:
                for byte in head:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.05)  # the client's pace, not a wait for the server

            dripping = asyncio.create_task(drip())
            try:
                return await reader.read()
            finally:
                dripping.cancel()
                writer.close()

        async def kept_alive_then_half() -> tuple[bytes, bytes]:
            """A whole request served, then half of the next one on the same connection."""
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(full)
                first = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", first, re.IGNORECASE)[1])  # type: ignore[index]
                first += await reader.readexactly(length)
                writer.write(full[:20])
                return first, await reader.read()
            finally:
                writer.close()

        async def refused_then_dripping() -> bytes:
            """A body refused on its declared size (413, before reading it), whose client keeps sending it."""
            reader, writer = await asyncio.open_connection(host, int(port))

            async def drip() -> None:
                while True:
                    writer.write(b"x")
                    await asyncio.sleep(0.05)  # the client's pace

            dripping = asyncio.create_task(drip())
            writer.write(f"POST /api/interviews HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                         f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Length: 50000000\r\n\r\n".encode())
            try:
                return await reader.read()
            finally:
                dripping.cancel()
                writer.close()

        async def connected_only() -> bytes:
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                return await reader.read()
            finally:
                writer.close()

        async def served_meanwhile() -> list[int]:
            """A normal client, and one sending its head in pieces but in time, while the slow ones wait."""
            codes = [(await live.http.get(f"/api/interviews/{iid}")).status_code for _ in range(5)]
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                for k in range(0, len(full), 16):
                    writer.write(full[k:k + 16])
                    await asyncio.sleep(0.01)  # the client's pace
                codes.append(int((await reader.readuntil(b"\r\n")).split()[1]))
            finally:
                writer.close()
            return codes

        async with asyncio.timeout(30):  # without a header timeout these would wait for ever
            halves_answers, trickled, (first, second), refused, silent, codes = await asyncio.gather(
                asyncio.gather(*(half_sent(halves[k % 3]) for k in range(46))), trickling(), kept_alive_then_half(),
                refused_then_dripping(), connected_only(), served_meanwhile())
        for answer in [*halves_answers, trickled, second]:
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b'"code":"header_timeout"' in answer.replace(b" ", b"")
            assert b"connection: close" in answer.lower()
        assert first.startswith(b"HTTP/1.1 200 "), first[:200]
        assert refused.startswith(b"HTTP/1.1 413 "), refused[:200]  # then closed, though the body kept coming
        assert silent == b""  # a connection that never sent a byte is closed without an answer
        assert codes == [200] * 6
        assert live.components.registry.rooms == {}
    timeouts = [r for r in caplog.records if "header_timeout" in r.getMessage()]
    assert len(timeouts) == 48 and all(r.levelno == logging.INFO for r in timeouts)  # once each, quietly
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_header_timeout_setting() -> None:
    from adapters.http_edge import header_timeout_protocol
    from settings import Settings

    assert Settings.from_env({}).header_timeout_s == 10.0
    assert Settings.from_env({"HEADER_TIMEOUT_S": "2.5"}).header_timeout_s == 2.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ValueError, match="HEADER_TIMEOUT_S"):
            Settings.from_env({"HEADER_TIMEOUT_S": bad})
    assert header_timeout_protocol(2.5).header_timeout_s == 2.5
    with pytest.raises(ValueError, match="header timeout"):
        header_timeout_protocol(0)


async def test_closed_rooms_are_freed_at_once_not_by_a_later_full_collection(live: LiveServer,
                                                                           shared_data: Path) -> None:
    # aiortc's peer connections are reference cycles that only the cyclic collector frees, and it runs its full
    # collections rarely on a big heap. Nothing of ours may hang off them (or form cycles of its own): a closed
    # room, its participants, streams and WHIP sessions must be freed by reference counting as they close.
    registry, whip = live.components.registry, live.components.whip
    peers: list[tuple[Any, WavChannelTrack]] = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(2):
            iid = await live.create_interview()
            for role in ("interviewer", "candidate"):
                token = (await live.token(iid, role, role.title()))["token"]
                track = WavChannelTrack(shared_data / "jfk.flac", limit_s=2, tail_s=0.5, encoded=True)
                peers.append((await whip_publish(f"{live.url}/whip/{iid}", token, track=track,
                                                 analysis=role == "interviewer"), track))
            room = registry.rooms[iid]
            refs = [weakref.ref(room), *(weakref.ref(p) for p in room.participants.values()),
                    *(weakref.ref(s) for s in whip.sessions.values())]
            pcs = [weakref.ref(s.pc) for s in whip.sessions.values()]
            async with asyncio.timeout(60):
                await asyncio.gather(*(session.wait_connected() for session, _ in peers))
                await asyncio.gather(*(track.wait_finished() for _, track in peers))
            refs += [weakref.ref(p.stream) for p in room.participants.values() if p.stream is not None]
            assert len(refs) == 7, refs
            del room
            await asyncio.gather(*(session.close() for session, _ in peers))
            peers.clear()
            await eventually(lambda: not registry.rooms and not whip.sessions, within_s=30)
            await eventually(lambda: all(r() is None for r in refs), within_s=10)  # noqa: B023 - awaited here
            gc.collect()
            assert all(pc() is None for pc in pcs)  # aiortc's own cycles: freed by the collector
    finally:
        gc.enable()
        for session, _ in peers:
            await session.close()
