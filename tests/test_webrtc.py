"""WHIP ingest over real loopback WebRTC: aiortc peers (testing.whip_client) against the real service.

The long test plays both channels of a shared dialogue at real-time pace, one peer per participant, and
checks what the interviewer's `analysis` channel receives (speakers, text within a WER bound, latency
measured on /metrics) and that the candidate receives nothing. The others cover joining, resuming,
leaving, dead tracks, dropped connections and every kind of bad request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection

from testing.live_server import LiveServer, live_server, test_settings
from testing.text import wer
from testing.whip_client import WavChannelTrack, WhipSession, whip_publish


@pytest.fixture
async def live(tmp_path: Path, mongo_url: str) -> AsyncIterator[LiveServer]:
    async with live_server(test_settings(tmp_path, mongo_url)) as server:
        yield server


async def events_until(session: WhipSession, done: Callable[[list[dict[str, Any]]], bool], *,
                       into: list[dict[str, Any]], within_s: float) -> list[dict[str, Any]]:
    """Collects the session's analysis messages into `into` until `done(into)` holds."""
    async with asyncio.timeout(within_s):
        while not done(into):
            into.append(await session.events.get())
    return into


def finals_of(events: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "segment.final" and e["speaker"]["role"] == role and e["text"]]


async def offer_sdp(*, audio: bool = True, channel: bool = False, video: bool = False) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if channel:
        pc.createDataChannel("analysis")
    if audio:
        pc.addTransceiver("audio", direction="sendonly")
    if video:
        pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


class StallingTrack(MediaStreamTrack):
    """Plays a file for `frames` frames, then sends nothing until `resume` is set (a microphone that died)."""

    kind = "audio"

    def __init__(self, source: WavChannelTrack, frames: int) -> None:
        super().__init__()
        self.source = source
        self.left = frames
        self.resume = asyncio.Event()

    async def recv(self) -> Any:
        if self.left <= 0:
            await self.resume.wait()
        self.left -= 1
        return await self.source.recv()


@pytest.mark.slow
async def test_two_peers_interview_over_loopback(live: LiveServer, shared_data: Path) -> None:
    wav = shared_data / "mobile_mixed.stereo.wav"
    truth = json.loads((shared_data / "mobile_mixed.json").read_text())
    # the overlay's tone of words is off by default under the default jurisdiction (eu): this organisation shows it
    assert (await live.http.patch("/api/organisation", json={"toneEnabled": True})).status_code == 200
    iid = await live.create_interview()
    tok_i = await live.token(iid, "interviewer", "Ivy Interviewer")
    tok_c = await live.token(iid, "candidate", "Cam Candidate")
    assert tok_c["joinUrl"].startswith(f"{live.url}/candidate?token=")
    assert tok_i["joinUrl"].startswith(f"{live.url}/interviewer?token=")

    whip = f"{live.url}/whip/{iid}"
    t0 = time.perf_counter()
    interviewer = await whip_publish(whip, tok_i["token"], track=WavChannelTrack(wav, 0), analysis=True)
    join_s = time.perf_counter() - t0
    # The candidate asks for analysis too: the server must refuse it whatever the offer says.
    candidate = await whip_publish(whip, tok_c["token"], track=WavChannelTrack(wav, 1), analysis=True)
    received: list[dict[str, Any]] = []
    try:
        await interviewer.wait_channel_open()
        # Bad requests while the interview runs disturb nobody.
        async with httpx.AsyncClient() as anon:
            assert (await anon.post(whip, content=b"v=0 nonsense",
                                    headers={"Content-Type": "application/sdp"})).status_code == 401
            assert (await anon.post(whip, content=b"garbage", headers={
                "Content-Type": "application/sdp", "Authorization": f"Bearer {tok_c['token']}"})).status_code == 400
        tracks = [t for t in (interviewer.pc.getSenders()[0].track, candidate.pc.getSenders()[0].track)]
        await asyncio.gather(*(t.wait_finished() for t in tracks))
        # Each speaks about half of the dialogue (levels say `speaking` per 100 ms).
        assert 0.15 < await live.metric("audio_speech_ratio") < 0.85
        assert await live.metric("interview_participants_active", role="candidate") == 1
        assert await live.metric("interview_rooms_active") == 1
        # Leaving drains the candidate's stream: its `participant.left` follows its last final.
        await candidate.close()
        await events_until(interviewer, lambda ev: any(
            e["type"] == "participant.left" and e["speaker"]["role"] == "candidate" for e in ev),
            into=received, within_s=60)
        assert candidate.events.empty()  # not one analysis message reached the candidate

        for role in ("interviewer", "candidate"):
            finals = finals_of(received, role)
            reference = " ".join(t["text"] for t in truth["turns"] if t["speaker"] == role)
            hypothesis = " ".join(f["text"] for f in finals)
            print(f"{role}: WER {wer(reference, hypothesis):.3f} over {len(finals)} finals")
            assert wer(reference, hypothesis) <= 0.15, (role, hypothesis)
            expected_name = "Ivy Interviewer" if role == "interviewer" else "Cam Candidate"
            assert {f["speaker"]["name"] for f in finals} == {expected_name}
            assert [f["seq"] for f in finals] == sorted({f["seq"] for f in finals})
        assert {e["type"] for e in received} >= {"participant.joined", "segment.partial", "segment.final",
                                                  "sentiment", "keywords", "level", "participant.left"}

        # A late observer with only a data channel gets the backlog: everything final so far.
        tok_o = await live.token(iid, "observer", "Olga Observer")
        observer = await whip_publish(whip, tok_o["token"], track=None, analysis=True)
        backlog: list[dict[str, Any]] = []
        n_finals = len([e for e in received if e["type"] == "segment.final"])
        await events_until(observer, lambda ev: len([e for e in ev if e["type"] == "segment.final"]) >= n_finals,
                           into=backlog, within_s=20)
        assert [e["text"] for e in backlog if e["type"] == "segment.final"] == \
            [e["text"] for e in received if e["type"] == "segment.final"]
        await observer.close()
    finally:
        await interviewer.close()
        await candidate.close()

    stored = (await live.http.get(f"/api/interviews/{iid}/transcript")).json()["segments"]
    assert sorted((s["participantId"], s["seq"]) for s in stored) == sorted(
        (f["speaker"]["participantId"], f["seq"]) for f in received if f["type"] == "segment.final" and f["text"])
    assert await live.metric("final_latency_seconds_count") >= len(stored)
    assert await live.metric("audio_frames_in_total") > 1000
    assert await live.metric("whip_joins_total", role="candidate") == 1
    assert await live.metric("errors_total", kind="unauthorized") == 1
    print(f"join {join_s * 1000:.0f} ms; latency sum/count "
          f"{await live.metric('final_latency_seconds_sum'):.2f}/{await live.metric('final_latency_seconds_count'):.0f}")


@dataclass
class Watched:
    """An interview with an observer listening on `analysis` and a candidate publishing a track."""

    iid: str
    whip: str
    tok_c: dict[str, Any]
    viewer: WhipSession
    cand: WhipSession


async def watched_candidate(live: LiveServer, track: MediaStreamTrack) -> Watched:
    iid = await live.create_interview()
    tok_o = await live.token(iid, "observer", "Obi")
    tok_c = await live.token(iid, "candidate", "Cat")
    whip = f"{live.url}/whip/{iid}"
    viewer = await whip_publish(whip, tok_o["token"], track=None, analysis=True)
    return Watched(iid, whip, tok_c, viewer, await whip_publish(whip, tok_c["token"], track=track))


async def test_repost_with_same_token_resumes_and_delete_leaves(live: LiveServer, shared_data: Path) -> None:
    w = await watched_candidate(live, WavChannelTrack(shared_data / "jfk.flac", limit_s=1))
    iid, whip, tok_c, viewer, first = w.iid, w.whip, w.tok_c, w.viewer, w.cand
    registry = live.components.registry
    pid = tok_c["participantId"]
    participant = registry.get(iid, pid)
    assert participant is not None and participant.session_id == first.location.rsplit("/", 1)[1]

    second = await whip_publish(whip, tok_c["token"], track=WavChannelTrack(shared_data / "jfk.flac", limit_s=1))
    assert registry.get(iid, pid) is participant  # same participant, same stream
    assert participant.session_id == second.location.rsplit("/", 1)[1]
    assert first.location not in [s.location for s in live.components.whip.sessions.values()]
    auth = {"Authorization": f"Bearer {tok_c['token']}"}
    assert (await live.http.delete(first.location, headers=auth)).status_code == 404  # replaced session is gone

    # Someone else's token cannot end this session; PATCH (ICE restart) is not supported: 405.
    other = await live.token(iid, "candidate", "Mallory")
    assert (await live.http.delete(second.location,
                                   headers={"Authorization": f"Bearer {other['token']}"})).status_code == 403
    assert (await live.http.patch(second.location, headers=auth, content=b"a=ice-ufrag:x")).status_code == 405
    assert (await live.http.delete(second.location, headers=auth)).status_code == 200
    seen: list[dict[str, Any]] = []
    await events_until(viewer, lambda ev: any(e["type"] == "participant.left" for e in ev), into=seen, within_s=20)
    assert len([e for e in seen if e["type"] == "participant.joined" and e["speaker"]["participantId"] == pid]) == 1
    assert registry.get(iid, pid) is None
    for session in (first, second, viewer):
        await session.close()  # DELETEs of sessions already gone just log a warning


async def test_dropped_connection_is_cleaned_up(live: LiveServer, shared_data: Path) -> None:
    w = await watched_candidate(live, WavChannelTrack(shared_data / "jfk.flac", limit_s=2))
    iid, tok_c, viewer, cand = w.iid, w.tok_c, w.viewer, w.cand
    await cand.wait_connected()
    session_id = cand.location.rsplit("/", 1)[1]
    await cand.pc.close()  # vanish without a DELETE
    seen: list[dict[str, Any]] = []
    await events_until(viewer, lambda ev: any(e["type"] == "participant.left" for e in ev), into=seen, within_s=30)
    assert session_id not in live.components.whip.sessions
    assert live.components.registry.get(iid, tok_c["participantId"]) is None
    assert await live.metric("interview_participants_active", role="candidate") == 0
    await cand.close()  # closes its HTTP client (the DELETE finds nothing: 404)
    await viewer.close()


async def test_dead_track_is_detected_not_spun_on(live: LiveServer, shared_data: Path) -> None:
    live.components.whip.dead_track_s = 1.5
    track = StallingTrack(WavChannelTrack(shared_data / "jfk.flac"), frames=50)
    w = await watched_candidate(live, track)
    viewer, cand = w.viewer, w.cand
    seen: list[dict[str, Any]] = []
    await events_until(viewer, lambda ev: any(e["type"] == "error" and e["code"] == "track_dead" for e in ev),
                       into=seen, within_s=30)
    assert await live.metric("errors_total", kind="track") == 1
    session = live.components.whip.sessions[cand.location.rsplit("/", 1)[1]]
    reader = [t for t in session.tasks if t.get_name().startswith("audio-")]
    assert len(reader) == 1 and not reader[0].done()  # parked on the track, not polling it

    # The microphone comes back: the same reader takes the audio again.
    frames_before = await live.metric("audio_frames_in_total")
    track.resume.set()
    await events_until(viewer, lambda ev: any(e["type"] == "level" and e["at_s"] > 3.0 for e in ev),
                       into=seen, within_s=30)
    assert await live.metric("audio_frames_in_total") > frames_before
    assert len([e for e in seen if e["type"] == "error"]) == 1
    await cand.close()
    await viewer.close()


async def test_a_failing_pipeline_is_reported_once_and_the_session_survives(live: LiveServer,
                                                                             shared_data: Path) -> None:
    registry = live.components.registry
    real_factory = registry.stream_factory
    failures = {"left": 25}  # the first 25 frames (0.5 s) find the pipeline broken

    def flaky_factory(*args: Any) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("pipeline unavailable")
        return real_factory(*args)

    registry.stream_factory = flaky_factory
    w = await watched_candidate(live, WavChannelTrack(shared_data / "jfk.flac", limit_s=4))
    viewer, cand = w.viewer, w.cand
    seen: list[dict[str, Any]] = []
    await events_until(viewer, lambda ev: any(e["type"] == "segment.final" and e["text"] for e in ev),
                       into=seen, within_s=60)
    assert [e["code"] for e in seen if e["type"] == "error"] == ["pipeline_failed"]
    assert await live.metric("audio_frames_dropped_total", reason="pipeline_error") == 25
    assert "americans" in " ".join(e["text"] for e in seen if e["type"] == "segment.final").lower()
    await cand.close()
    await viewer.close()


async def test_bad_requests_get_precise_errors(live: LiveServer) -> None:
    iid = await live.create_interview()
    tok_c = (await live.token(iid, "candidate", "Cat"))["token"]
    tok_o = (await live.token(iid, "observer", "Obi"))["token"]
    other_iid = await live.create_interview()
    tok_other = (await live.token(other_iid, "interviewer", "Ivy"))["token"]
    signer = live.components.signer
    expired, _ = signer.issue(iid, "candidate", "Old", ttl_s=-1)
    pcs = []
    pc, audio_offer = await offer_sdp(audio=True)
    pcs.append(pc)
    pc, channel_only = await offer_sdp(audio=False, channel=True)
    pcs.append(pc)
    whip = f"/whip/{iid}"

    async def post(path: str, token: str | None, body: bytes | str, content_type: str = "application/sdp") -> Any:
        headers = {"Content-Type": content_type}
        headers["Authorization"] = f"Bearer {token}" if token else ""
        async with httpx.AsyncClient(base_url=live.url) as anon:
            return await anon.post(path, content=body, headers=headers)

    cases: list[tuple[str, Any, int, str]] = [
        ("no token", await post(whip, None, audio_offer), 401, "invalid_token"),
        ("expired token", await post(whip, expired, audio_offer), 401, "invalid_token"),
        ("forged token", await post(whip, tok_c[:-2] + ("AA" if not tok_c.endswith("AA") else "BB"), audio_offer),
         401, "invalid_token"),
        ("token for another interview", await post(whip, tok_other, audio_offer), 403, "wrong_interview"),
        ("unknown interview", await post("/whip/nope", signer.issue("nope", "candidate", "C")[0], audio_offer),
         404, "unknown_interview"),
        ("not SDP", await post(whip, tok_c, "hello"), 400, "malformed_sdp"),
        ("broken SDP", await post(whip, tok_c, "v=0\r\nm=audio x y z\r\n"), 400, "malformed_sdp"),
        ("no ICE credentials", await post(whip, tok_c, audio_offer.replace("a=ice-ufrag", "a=x-ufrag")), 400,
         "malformed_sdp"),
        ("candidate without audio", await post(whip, tok_c, channel_only), 400, "no_audio"),
        ("wrong content type", await post(whip, tok_c, audio_offer, "text/plain"), 415, "unsupported_media_type"),
        ("oversized offer", await post(whip, tok_c, "v=0\r\n" + "a=x\r\n" * 20000), 413, "body_too_large"),
    ]
    for what, response, status, code in cases:
        assert response.status_code == status, (what, response.text)
        assert response.json()["error"]["code"] == code, what
    assert cases[0][1].headers["www-authenticate"].startswith("Bearer")

    # An observer may join with only a data channel; nobody joined because of the refusals above.
    assert live.components.registry.rooms == {}
    ok = await post(whip, tok_o, channel_only)
    assert ok.status_code == 201 and ok.headers["location"].startswith(f"/whip/{iid}/")
    assert ok.headers["content-type"].startswith("application/sdp") and ok.text.startswith("v=0")

    # Token endpoint: admin key only (a join token is authenticated but has the wrong role), validated body.
    url = f"/api/interviews/{iid}/tokens"
    async with httpx.AsyncClient(base_url=live.url) as anon:
        assert (await anon.post(url, json={"role": "candidate", "name": "X"})).status_code == 401
        r = await anon.post(url, json={"role": "candidate", "name": "X"}, headers={"Authorization": f"Bearer {tok_o}"})
        assert r.status_code == 403
    r = await live.http.post(url, json={"role": "admin", "name": "", "extra": 1})
    assert r.status_code == 422 and set(r.json()["error"]["fields"]) == {"role", "name", "extra"}
    assert (await live.http.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
            ).status_code == 422
    assert (await live.http.post(url, content=b"x" * (2 << 20), headers={"Content-Type": "application/json"})
            ).status_code == 413
    assert (await live.http.post("/api/interviews/nope/tokens", json={"role": "candidate"})).status_code == 404
    await live.http.post(f"/api/interviews/{other_iid}/cancel", json={"reason": "test"})
    assert (await live.http.post(f"/api/interviews/{other_iid}/tokens", json={"role": "candidate"})
            ).status_code == 409
    # Cancelling revoked every join token of the interview, and any minted after.
    for token in (tok_other, signer.issue(other_iid, "interviewer", "Ivy")[0]):
        refused = await post(f"/whip/{other_iid}", token, audio_offer)
        assert refused.status_code == 401 and refused.json()["error"]["message"] == "token revoked"
    # Pages refuse a link of the other role.
    assert (await live.http.get(f"/interviewer?token={tok_c}")).status_code == 403
    assert (await live.http.get(f"/candidate?token={tok_c}")).status_code == 200
    for pc in pcs:
        await pc.close()


async def test_video_in_the_offer_is_declined_not_decoded(live: LiveServer) -> None:
    iid = await live.create_interview()
    tok = (await live.token(iid, "interviewer", "Ivy"))["token"]
    pc, sdp = await offer_sdp(audio=True, video=True, channel=True)
    async with httpx.AsyncClient(base_url=live.url) as anon:
        r = await anon.post(f"/whip/{iid}", content=sdp,
                            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {tok}"})
    assert r.status_code == 201
    video = [block for block in r.text.split("m=")[1:] if block.startswith("video")]
    assert video and "a=inactive" in video[0]
    assert np.any([block.startswith("audio") and "a=recvonly" in block for block in r.text.split("m=")[1:]])
    await pc.close()


@pytest.mark.parametrize(("fmt", "layout", "rate"), [("s16", "stereo", 48000), ("s16p", "stereo", 48000),
                                                      ("s16", "mono", 16000), ("fltp", "stereo", 48000),
                                                      ("s16", "5.1", 48000), ("s16", "mono", 22050)])
def test_decoded_frames_become_interleaved_int16(fmt: str, layout: str, rate: int) -> None:
    import av

    from adapters.webrtc import frame_to_pcm

    n = rate // 50
    channels = av.AudioLayout(layout).nb_channels
    ramp = (np.arange(n) % 100).astype(np.int16) * 100  # same signal on every channel
    if fmt == "fltp":
        data = np.tile(ramp.astype(np.float32) / 32768, (channels, 1))
    elif fmt.endswith("p"):
        data = np.tile(ramp, (channels, 1))
    else:
        data = np.repeat(ramp, channels).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
    frame.sample_rate = rate
    converter: list[Any] = [None]
    pcm, out_rate, out_channels = frame_to_pcm(frame, converter)
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    if fmt in ("s16", "s16p") and channels <= 2 and rate in (16000, 48000):
        assert (out_rate, out_channels) == (rate, channels)
        np.testing.assert_array_equal(pcm.reshape(-1, channels)[:, 0], ramp)  # interleaved, not planar
        np.testing.assert_array_equal(pcm.reshape(-1, channels)[:, -1], ramp)
    else:  # converted once to what aiortc's Opus decoder gives: 48 kHz stereo s16
        assert (out_rate, out_channels) == (48000, 2) and converter[0] is not None
        assert pcm.size % 2 == 0
    # A resumed session whose frames differ from the stream's format is converted to that format.
    pcm, out_rate, out_channels = frame_to_pcm(frame, converter, (16000, 1))
    assert (out_rate, out_channels) == (16000, 1) and pcm.dtype == np.int16
