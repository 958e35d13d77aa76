"""A WHIP (RFC 9725) publishing client on aiortc, and a track that plays a recording at real-time pace.

Used by the WebRTC tests and by `python -m benchmarks.latency` to stand in for browsers: each peer
publishes one channel of a dialogue recording and (for interviewers) listens on the `analysis` data
channel, stamping every message with the local loop time it arrived at.

Signalling is non-trickle, as RFC 9725 allows: ICE gathering completes before the offer is POSTed
(`Content-Type: application/sdp`, `Authorization: Bearer <join token>`); the server answers
`201 Created` with the SDP answer and a `Location` for the session, which `WhipSession.close()` DELETEs.

Time: `WavChannelTrack.started_at` is the loop-clock instant of stream time zero, as if a microphone had
started capturing then; frame k (20 ms) is handed to the encoder at `started_at + (k + 1) * 0.02`, when a
microphone would have finished capturing it. So a ground-truth time `t` seconds into the file happened
at `started_at + t` on the loop clock (`wall_time_of(t)` also adds any lateness of our own sender), and
`msg["_received_at"] - wall_time_of(t)` is the latency a listener feels.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import av
import httpx
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from adapters.rtp_audio import decode_inline

log = logging.getLogger(__name__)

RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz: what browsers send and what aiortc's Opus encoder packs per packet
FRAME_S = FRAME_SAMPLES / RATE


class WhipError(RuntimeError):
    """The WHIP endpoint refused the offer (or answered something that is not a WHIP answer)."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def decode_audio(path: str | Path, rate: int = RATE) -> np.ndarray:
    """Decode any PyAV-readable audio file to int16 planar samples, shape (channels, n), at `rate`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"audio file not found: {path}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot open {path} as audio: {exc}") from exc
    with container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        layout = stream.codec_context.layout.name
        resampler = av.AudioResampler(format="s16p", layout=layout, rate=rate)
        chunks: list[np.ndarray] = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if not chunks:
        raise ValueError(f"{path} decoded to no samples")
    return np.ascontiguousarray(np.concatenate(chunks, axis=1), dtype=np.int16)


_OPUS_PACKETS: dict[tuple[Any, ...], list[bytes]] = {}


def opus_packets(samples: np.ndarray, bit_rate: int = 32_000) -> list[bytes]:
    """48 kHz mono s16 samples (a whole number of 20 ms frames) as one Opus packet per frame, as a browser's
    voice encoder would send them (the encoder's look-ahead delays the audio by a few ms, as live encoding does)."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = bit_rate
    codec.options = {"application": "voip"}
    codec.time_base = fractions.Fraction(1, RATE)
    n_frames = len(samples) // FRAME_SAMPLES
    packets: list[bytes] = []
    for k in range(n_frames):
        frame = av.AudioFrame.from_ndarray(samples[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES].reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = k * FRAME_SAMPLES
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    if len(packets) < n_frames:
        raise ValueError(f"Opus encoder returned {len(packets)} packets for {n_frames} frames")
    return packets[:n_frames]


class WavChannelTrack(MediaStreamTrack):
    """Plays one channel of an audio file as 20 ms, 48 kHz mono s16 frames, then `tail_s` of silence, then ends.

    `channel=None` plays a mono file as is and downmixes a multichannel one. With `realtime=True` frames
    are paced on the loop clock against an absolute schedule (a late frame does not delay the next
    ones); `late_frames` / `max_late_s` count how far the pacing fell behind, which tells a benchmark
    whether the *sender* kept real time. `limit_s` plays only the first seconds of the file.

    `encoded=True` hands aiortc Opus packets encoded once up front (shared by every track playing the same
    channel) instead of raw frames to encode live: what a browser sends is the same, but a load generator
    running many peers on the machine under test no longer spends a core encoding them.
    """

    kind = "audio"

    def __init__(
        self,
        path: str | Path,
        channel: int | None = None,
        *,
        realtime: bool = True,
        tail_s: float = 2.0,
        limit_s: float | None = None,
        encoded: bool = False,
    ) -> None:
        super().__init__()
        if tail_s < 0:
            raise ValueError(f"tail_s must be >= 0, got {tail_s}")
        planar = decode_audio(path)
        n_channels = planar.shape[0]
        if channel is None:
            mono = planar[0] if n_channels == 1 else planar.mean(axis=0).round().astype(np.int16)
        elif not 0 <= channel < n_channels:
            raise ValueError(f"channel {channel} out of range: {path} has {n_channels} channel(s)")
        else:
            mono = planar[channel]
        if limit_s is not None:
            mono = mono[: max(0, int(limit_s * RATE))]
        tail = np.zeros(int(round(tail_s * RATE)), dtype=np.int16)
        samples = np.concatenate([mono, tail])
        pad = (-len(samples)) % FRAME_SAMPLES
        self._samples = np.ascontiguousarray(np.concatenate([samples, np.zeros(pad, dtype=np.int16)]))
        self.path = Path(path)
        self.channel = channel
        self.duration_s = len(mono) / RATE
        self.realtime = realtime
        self.started_at: float | None = None
        self.sent_at: list[float] = []  # loop time each frame was handed to the encoder
        self.frames_sent = 0
        self.late_frames = 0  # frames handed over more than one frame period after their due time
        self.max_late_s = 0.0
        self._finished = asyncio.Event()
        self._packets: list[bytes] | None = None
        if encoded:
            key = (str(Path(path).resolve()), channel, tail_s, limit_s)
            if key not in _OPUS_PACKETS:
                _OPUS_PACKETS[key] = opus_packets(self._samples)
            self._packets = _OPUS_PACKETS[key]

    @property
    def total_frames(self) -> int:
        return len(self._samples) // FRAME_SAMPLES

    async def wait_finished(self) -> None:
        """Wait until the last frame (tail included) has been handed to the encoder, or the track stopped."""
        await self._finished.wait()

    def stop(self) -> None:
        self._finished.set()
        super().stop()

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        k = self.frames_sent
        if k >= self.total_frames:
            self._finished.set()
            self.stop()
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self.started_at is None:
            self.started_at = loop.time()
        if self.realtime:
            due = self.started_at + (k + 1) * FRAME_S
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                late = -wait
                self.max_late_s = max(self.max_late_s, late)
                if late > FRAME_S:
                    self.late_frames += 1
        self.frames_sent = k + 1
        self.sent_at.append(loop.time())
        if self._packets is not None:
            packet = av.Packet(self._packets[k])
            packet.pts = k * FRAME_SAMPLES
            packet.time_base = fractions.Fraction(1, RATE)
            return packet
        chunk = self._samples[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES]
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = k * FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, RATE)
        return frame

    def wall_time_of(self, t_s: float) -> float | None:
        """Loop time at which stream time `t_s` happened, as a listener on this peer should count it.

        That is `started_at + t_s`, moved later by however late the frame holding `t_s` was handed over
        (a busy sender must not be charged to the server); None if that frame has not been sent.
        """
        if self.started_at is None:
            return None
        k = min(max(0, int(t_s / FRAME_S)), self.total_frames - 1)
        if k >= len(self.sent_at):
            return None
        lateness = max(0.0, self.sent_at[k] - (self.started_at + (k + 1) * FRAME_S))
        return self.started_at + t_s + lateness


class WhipSession:
    """One published WHIP session: the peer connection, its resource URL, the `analysis` messages and, with a
    `call` channel, the call's signalling messages (`call_messages`)."""

    def __init__(
        self,
        location: str,
        pc: RTCPeerConnection,
        http: httpx.AsyncClient,
        token: str,
        *,
        owns_http: bool,
        channel: Any | None,
        call_channel: Any | None = None,
    ) -> None:
        self.location = location
        self.pc = pc
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.unparsed_messages = 0
        self._http = http
        self._token = token
        self._owns_http = owns_http
        self._channel = channel
        self._channel_open = asyncio.Event()
        self._connected = asyncio.Event()
        self._failed = asyncio.Event()
        self._closed = False
        self.call_channel = call_channel
        self.call_messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        if call_channel is not None:
            @call_channel.on("message")
            def _on_call(message: str | bytes) -> None:
                self.call_messages.put_nowait(json.loads(message))

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if pc.connectionState == "connected":
                self._connected.set()
            elif pc.connectionState in ("failed", "closed"):
                self._failed.set()

        if channel is not None:
            if channel.readyState == "open":
                self._channel_open.set()

            @channel.on("open")
            def _on_open() -> None:
                self._channel_open.set()

            @channel.on("message")
            def _on_message(message: str | bytes) -> None:
                received_at = asyncio.get_running_loop().time()
                try:
                    data = json.loads(message)
                    if not isinstance(data, dict):
                        raise ValueError("not a JSON object")
                except ValueError:
                    self.unparsed_messages += 1
                    log.warning("analysis channel: ignoring a message that is not a JSON object")
                    return
                data["_received_at"] = received_at
                self.events.put_nowait(data)

    async def _wait(self, event: asyncio.Event, what: str) -> None:
        done = asyncio.ensure_future(event.wait())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait({done, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            failed.cancel()
        if not event.is_set():
            raise WhipError(f"peer connection {self.pc.connectionState} before {what}")

    async def wait_connected(self) -> None:
        """Wait for the ICE/DTLS connection (wrap in `asyncio.timeout`); raises `WhipError` if it fails."""
        await self._wait(self._connected, "connection")

    async def wait_channel_open(self) -> None:
        """Wait for the `analysis` channel to open (wrap in `asyncio.timeout`); raises `WhipError` if the peer fails."""
        if self._channel is None:
            raise ValueError("this session has no analysis channel (publish with analysis=True)")
        await self._wait(self._channel_open, "analysis channel open")

    async def next_call_message(self, kind: str) -> dict[str, Any]:
        """The next `call` message of type `kind`, skipping others (wrap in `asyncio.timeout`)."""
        while True:
            msg = await self.call_messages.get()
            if msg.get("type") == kind:
                return msg

    def send_call(self, message: dict[str, Any] | str | bytes) -> None:
        assert self.call_channel is not None, "publish with call=True"
        self.call_channel.send(message if isinstance(message, str | bytes) else json.dumps(message))

    def relay_track(self, mid: str) -> MediaStreamTrack:
        """The received audio of the relay slot `mid` (the transceivers `relay_slots` added)."""
        for t in self.pc.getTransceivers():
            if t.mid == mid and t.kind == "audio":
                return t.receiver.track
        raise KeyError(mid)

    async def close(self) -> None:
        """Leave: DELETE the session resource (errors are logged, not raised) and close the peer connection."""
        if self._closed:
            return
        self._closed = True
        try:
            response = await self._http.delete(
                self.location, headers={"Authorization": f"Bearer {self._token}"}
            )
            if response.status_code >= 400:
                log.warning("WHIP DELETE %s -> %s", self.location, response.status_code)
        except httpx.HTTPError as exc:
            log.warning("WHIP DELETE %s failed: %s", self.location, exc)
        finally:
            await self.pc.close()
            if self._owns_http:
                await self._http.aclose()

    async def __aenter__(self) -> WhipSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _gathered(pc: RTCPeerConnection) -> None:
    # aiortc gathers every candidate inside setLocalDescription(); this guard keeps the non-trickle
    # contract explicit should that ever change.
    if pc.iceGatheringState == "complete":
        return
    done = asyncio.Event()

    @pc.on("icegatheringstatechange")
    def _on_change() -> None:
        if pc.iceGatheringState == "complete":
            done.set()

    if pc.iceGatheringState != "complete":
        await done.wait()


MAX_REDIRECTS = 3


async def _post_offer(http: httpx.AsyncClient, url: str, token: str, sdp: str) -> tuple[httpx.Response, str]:
    """POST the offer, following `307`/`308` redirects (RFC 9725 section 4.5: the room is on another node) with the
    same offer and token. Returns the last response and the URL that gave it (where the session's Location is)."""
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = await http.post(
                url,
                content=sdp.encode(),
                headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            raise WhipError(f"WHIP POST {url} failed: {exc}") from exc
        if response.status_code not in (307, 308) or not response.headers.get("location"):
            return response, url
        url = urljoin(url, response.headers["location"])
        log.info("WHIP POST redirected to %s", url)
    raise WhipError(f"WHIP POST: more than {MAX_REDIRECTS} redirects", status=response.status_code)


NOTICE_VERSION = "2026-01"  # the notice version the pages send (adapters.privacy.NOTICE_VERSION)


async def give_consent(http: httpx.AsyncClient, url: str, token: str, notice_version: str = NOTICE_VERSION) -> int:
    """`POST /api/consent` on the server of the WHIP endpoint `url`; the status (204 when recorded)."""
    consent_url = urljoin(url, "/api/consent")
    try:
        response = await http.post(consent_url, json={"noticeVersion": notice_version, "accepted": True},
                                   headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        log.warning("consent POST %s failed: %s", consent_url, exc)
        return 0
    if response.status_code != 204:
        log.warning("consent POST %s -> %s: %s", consent_url, response.status_code, response.text[:200])
    return response.status_code


async def withdraw_consent(http: httpx.AsyncClient, url: str, token: str) -> int:
    """`DELETE /api/consent` on the server of the WHIP endpoint `url`; the status (204 when recorded)."""
    response = await http.delete(urljoin(url, "/api/consent"), headers={"Authorization": f"Bearer {token}"})
    return response.status_code


async def whip_publish(
    url: str,
    token: str,
    *,
    track: MediaStreamTrack | None,
    analysis: bool = False,
    call: bool = False,
    relay_slots: int = 0,
    relay_listener: Callable[[str, bytes, int], None] | None = None,
    session: httpx.AsyncClient | None = None,
    ice_servers: list[RTCIceServer] | None = None,
    http_timeout: float = 10.0,
    consent: bool = True,
    notice_version: str = NOTICE_VERSION,
) -> WhipSession:
    """Publish `track` (send-only audio) to the WHIP endpoint `url`; with `analysis`, also open the overlay channel;
    with `call`, the call's signalling channel, and `relay_slots` receive-only audio transceivers (as the pages do);
    `relay_listener(mid, payload, rtp_timestamp)` gets every Opus payload they receive, as received.

    With `consent` (and a track), first `POST /api/consent` as the pages do: the server processes no audio of a
    participant who has not consented. A refused consent is logged, not raised: the WHIP POST that follows
    reports the same problem (a bad token, a closed interview) the way callers expect.

    `ice_servers` defaults to none (host candidates only), which is what loopback and LAN peers need;
    aiortc would otherwise try Google's public STUN server. Raises `WhipError` unless the server answers 201
    with an SDP body and a Location header.
    """
    if track is None and not analysis and not call:
        raise ValueError("nothing to publish: give a track, analysis=True, or both")
    if track is not None and track.kind != "audio":
        raise ValueError(f"WHIP ingest here takes an audio track, got {track.kind!r}")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers or [])))
    owns_http = session is None
    http = session if session is not None else httpx.AsyncClient(timeout=http_timeout)
    try:
        channel = pc.createDataChannel("analysis") if analysis else None
        call_channel = pc.createDataChannel("call") if call else None
        if track is not None:
            pc.addTransceiver(track, direction="sendonly")
        for _ in range(relay_slots):
            pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        await _gathered(pc)
        if consent and track is not None:
            await give_consent(http, url, token, notice_version)
        response, url = await _post_offer(http, url, token, pc.localDescription.sdp)
        if response.status_code != 201:
            raise WhipError(
                f"WHIP POST {url} -> {response.status_code}: {response.text[:300]}",
                status=response.status_code,
                body=response.text,
            )
        location = response.headers.get("location")
        if not location:
            raise WhipError(
                f"WHIP POST {url} -> 201 without a Location header", status=201, body=response.text
            )
        answer = response.text
        if not answer.startswith("v=0"):
            raise WhipError(
                f"WHIP POST {url} -> 201 but the body is not an SDP answer", status=201, body=answer
            )
        result = WhipSession(urljoin(url, location), pc, http, token, owns_http=owns_http, channel=channel,
                             call_channel=call_channel)
    except BaseException:
        await pc.close()
        if owns_http:
            await http.aclose()
        raise
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    except BaseException:
        await result.close()  # the server already holds a session for us: DELETE it
        raise
    if relay_listener is not None:
        # the receivers' tracks exist once the answer is set, and start only when the connection is up
        for t in pc.getTransceivers():
            if t.kind == "audio" and t.direction == "recvonly":
                decode_inline(t.receiver, on_opus=functools.partial(relay_listener, str(t.mid)))
    return result
