"""The WHIP client against a minimal but real WHIP server: an aiortc answerer inside Starlette on a free port.

The server decodes the Opus audio it receives and reports the dominant frequency over the `analysis`
channel, so the tests check that the right channel of the file really crossed a WebRTC connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from testing.data import SHARED_DATA
from testing.net import serve
from testing.whip_client import FRAME_SAMPLES, RATE, WavChannelTrack, WhipError, decode_audio, whip_publish

DATA = SHARED_DATA
TOKEN = "good-token"
LEFT_HZ, RIGHT_HZ = 440.0, 1300.0


@dataclass
class Session:
    pc: RTCPeerConnection
    deleted: bool = False
    channel: object | None = None
    samples: list[np.ndarray] = field(default_factory=list)


@dataclass
class WhipServer:
    url: str
    sessions: dict[str, Session]


def _dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / RATE)[int(np.argmax(spectrum))])


async def _consume(track, sess: Session) -> None:
    reported = False
    while True:
        try:
            frame = await asyncio.wait_for(track.recv(), timeout=5)
        except (MediaStreamError, TimeoutError):
            return
        pcm = frame.to_ndarray().reshape(-1)
        if frame.layout.name == "stereo":
            pcm = pcm.reshape(-1, 2).mean(axis=1)
        sess.samples.append(pcm)
        # skip the codec's first 200 ms, then report once 1 s of audio is in
        if not reported and len(sess.samples) >= 60 and sess.channel is not None:
            audio = np.concatenate(sess.samples[10:60])
            msg = {"type": "audio.stats", "frames": len(sess.samples), "peak_hz": _dominant_hz(audio)}
            sess.channel.send(json.dumps(msg))
            reported = True


def _app(sessions: dict[str, Session], tasks: set[asyncio.Task]) -> Starlette:
    async def publish(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return PlainTextResponse("bad token", status_code=401)
        if request.headers.get("content-type") != "application/sdp":
            return PlainTextResponse("want application/sdp", status_code=415)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        sid = uuid.uuid4().hex
        sess = sessions[sid] = Session(pc)

        @pc.on("datachannel")
        def _on_channel(channel) -> None:
            sess.channel = channel
            channel.send(json.dumps({"type": "hello", "session": sid}))

        @pc.on("track")
        def _on_track(track) -> None:
            task = asyncio.create_task(_consume(track, sess))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        await pc.setRemoteDescription(RTCSessionDescription((await request.body()).decode(), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return Response(
            pc.localDescription.sdp,
            status_code=201,
            media_type="application/sdp",
            headers={"Location": f"/whip/{request.path_params['room']}/{sid}"},
        )

    async def leave(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return PlainTextResponse("bad token", status_code=401)
        sess = sessions.get(request.path_params["sid"])
        if sess is None:
            return PlainTextResponse("no such session", status_code=404)
        sess.deleted = True
        await sess.pc.close()
        return Response(status_code=200)

    return Starlette(
        routes=[
            Route("/whip/{room}", publish, methods=["POST"]),
            Route("/whip/{room}/{sid}", leave, methods=["DELETE"]),
        ]
    )


@pytest.fixture
async def whip_server() -> AsyncIterator[WhipServer]:
    sessions: dict[str, Session] = {}
    tasks: set[asyncio.Task] = set()
    async with serve(_app(sessions, tasks), log_level="warning", lifespan="off") as served:
        try:
            yield WhipServer(f"{served.url}/whip/room-1", sessions)
        finally:
            for sess in sessions.values():
                await sess.pc.close()
            for task in list(tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@pytest.fixture
def two_tone_wav(tmp_path: Path) -> Path:
    """3 s stereo, 48 kHz: 440 Hz on the left channel, 1300 Hz on the right."""
    t = np.arange(3 * RATE) / RATE
    left = 0.3 * np.sin(2 * np.pi * LEFT_HZ * t)
    right = 0.3 * np.sin(2 * np.pi * RIGHT_HZ * t)
    pcm = (np.stack([left, right], axis=1) * 32767).astype("<i2")
    path = tmp_path / "two_tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return path


async def _next_of_type(queue: asyncio.Queue, kind: str) -> dict:
    async with asyncio.timeout(15):
        while True:
            msg = await queue.get()
            if msg.get("type") == kind:
                return msg


@pytest.mark.parametrize(("channel", "hz"), [(0, LEFT_HZ), (1, RIGHT_HZ)])
async def test_publishes_the_chosen_channel_and_receives_analysis(whip_server, two_tone_wav, channel, hz):
    track = WavChannelTrack(two_tone_wav, channel, tail_s=0.5)
    session = await whip_publish(whip_server.url, TOKEN, track=track, analysis=True)
    try:
        async with asyncio.timeout(10):
            await session.wait_channel_open()
        hello = await _next_of_type(session.events, "hello")
        assert session.location == f"{whip_server.url}/{hello['session']}"
        stats = await _next_of_type(session.events, "audio.stats")
        assert abs(stats["peak_hz"] - hz) < 30, stats
        assert track.started_at is not None
        # the report needs 60 frames (1.2 s of stream time) to have crossed the connection first
        assert stats["_received_at"] >= track.started_at + 60 * FRAME_SAMPLES / RATE
        await track.wait_finished()
        assert track.frames_sent == track.total_frames
    finally:
        await session.close()
    server_session = whip_server.sessions[hello["session"]]
    assert server_session.deleted
    assert session.pc.connectionState == "closed"


async def test_observer_without_track_gets_the_channel(whip_server):
    session = await whip_publish(whip_server.url, TOKEN, track=None, analysis=True)
    async with session:
        async with asyncio.timeout(10):
            await session.wait_channel_open()
        assert (await _next_of_type(session.events, "hello"))["_received_at"] > 0
    assert all(s.deleted for s in whip_server.sessions.values())


async def test_refused_offer_raises_with_status(whip_server, two_tone_wav):
    with pytest.raises(WhipError) as info:
        await whip_publish(whip_server.url, "forged", track=WavChannelTrack(two_tone_wav, 0))
    assert info.value.status == 401
    assert "bad token" in info.value.body
    assert whip_server.sessions == {}


async def test_wait_channel_open_needs_analysis(whip_server, two_tone_wav):
    session = await whip_publish(whip_server.url, TOKEN, track=WavChannelTrack(two_tone_wav, 0))
    async with session:
        async with asyncio.timeout(10):
            await session.wait_connected()
        with pytest.raises(ValueError, match="no analysis channel"):
            await session.wait_channel_open()


async def test_nothing_to_publish_is_a_value_error():
    with pytest.raises(ValueError, match="nothing to publish"):
        await whip_publish("http://127.0.0.1:9/whip/x", TOKEN, track=None)


async def test_track_plays_channel_then_tail_then_ends(two_tone_wav):
    stereo = decode_audio(two_tone_wav)
    track = WavChannelTrack(two_tone_wav, 1, realtime=False, tail_s=0.1)
    frames = []
    while True:
        try:
            frames.append(await track.recv())
        except MediaStreamError:
            break
    assert track.readyState == "ended"
    await track.wait_finished()
    played = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    assert len(frames) == -(-(3 * RATE + RATE // 10) // FRAME_SAMPLES)
    assert all(
        f.samples == FRAME_SAMPLES and f.sample_rate == RATE and f.layout.name == "mono" for f in frames
    )
    assert np.array_equal(played[: 3 * RATE], stereo[1])
    assert not played[3 * RATE :].any()
    assert [f.pts for f in frames[:3]] == [0, FRAME_SAMPLES, 2 * FRAME_SAMPLES]


async def test_realtime_pacing_follows_the_schedule(two_tone_wav):
    track = WavChannelTrack(two_tone_wav, 0, tail_s=0, limit_s=0.2)
    assert track.wall_time_of(0.0) is None
    for _ in range(track.total_frames):
        await track.recv()
    loop = asyncio.get_running_loop()
    # the 10th frame is due when 200 ms of stream time have been "captured"
    assert loop.time() >= track.started_at + 0.2
    assert all(t >= track.started_at + (k + 1) * FRAME_SAMPLES / RATE for k, t in enumerate(track.sent_at))
    # a time inside frame 3 happened at started_at + t, later only by how late frame 3 went out
    late_3 = track.sent_at[3] - (track.started_at + 4 * FRAME_SAMPLES / RATE)
    assert track.wall_time_of(0.07) == pytest.approx(track.started_at + 0.07 + late_3)


def test_bad_inputs_are_value_errors(two_tone_wav, tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        WavChannelTrack(two_tone_wav, 2)
    with pytest.raises(ValueError, match="not found"):
        WavChannelTrack(tmp_path / "missing.wav", 0)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(ValueError, match="cannot open"):
        WavChannelTrack(junk, 0)
    with pytest.raises(ValueError, match="tail_s"):
        WavChannelTrack(two_tone_wav, 0, tail_s=-1)


def test_dialogue_channels_carry_their_speakers():
    """On the shared stereo dialogues the interviewer is left (0) and the candidate right (1)."""
    path = DATA / "mobile_mixed.stereo.wav"
    assert path.is_file(), f"test audio missing: {path} (set SHARED_DATA_DIR or put the shared data at ../shared/data)"
    turns = json.loads((DATA / "mobile_mixed.json").read_text())["turns"]
    planar = decode_audio(path)
    for turn in turns:
        span = slice(int(turn["start_s"] * RATE), int(turn["end_s"] * RATE))
        energy = (planar[:, span].astype(np.float64) ** 2).mean(axis=1)
        speaking = 0 if turn["speaker"] == "interviewer" else 1
        assert energy[speaking] > 100 * energy[1 - speaking], (turn["speaker"], energy)
