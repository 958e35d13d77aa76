"""Inline audio decoding on the event loop: works on the installed aiortc, survives corrupt packets, ends tracks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from adapters.rtp_audio import AudioFrames, InlineAudioDecoder, decode_inline
from testing.whip_client import WavChannelTrack, opus_packets

OPUS = SimpleNamespace(name="opus")


def test_corrupt_packets_are_dropped_and_reported_and_decoding_goes_on() -> None:
    tone = (np.sin(np.arange(48000) * 2 * np.pi * 440 / 48000) * 8000).astype(np.int16)
    packets = opus_packets(tone)
    out: asyncio.Queue[Any] = asyncio.Queue()
    errors: list[Exception] = []
    dec = InlineAudioDecoder(out, errors.append)
    dec.put((OPUS, SimpleNamespace(data=packets[0])))
    dec.put((OPUS, SimpleNamespace(data=b"\xff\xfe not opus at all")))
    dec.put((OPUS, SimpleNamespace(data=b"")))  # an empty payload must not end the decoder's stream
    for p in packets[1:]:
        dec.put((OPUS, SimpleNamespace(data=p)))
    assert dec.errors == 1 and len(errors) == 1 and isinstance(errors[0], ValueError)
    frames = [out.get_nowait() for _ in range(out.qsize())]
    assert len(frames) == len(packets) == dec.frames
    assert {(f.sample_rate, f.layout.name, f.format.name, f.samples) for f in frames} == {(48000, "mono", "s16", 960)}
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames[5:]]).astype(np.float64)
    assert 3000 < np.sqrt(np.mean(pcm**2)) < 8000  # the tone came through (rms of 8000-peak sine ~ 5657)
    dec.put(None)
    assert dec.get(timeout=1) is None  # aiortc's idle decoder thread is released at stop
    dec.put((OPUS, SimpleNamespace(data=packets[0])))
    assert out.empty()  # nothing after stop


def test_frames_released_together_are_each_decoded_and_relayed_with_their_own_timestamp() -> None:
    """A late packet releases the frames held behind it in one `AudioFrames`: every one is decoded, and the call
    relay's listener gets each payload with its own timestamp on the receiver's clock (the first one's, mapped,
    plus its RTP offset, across the 32-bit wrap)."""
    tone = (np.sin(np.arange(48000) * 2 * np.pi * 440 / 48000) * 8000).astype(np.int16)
    packets = opus_packets(tone)[:4]
    out: asyncio.Queue[Any] = asyncio.Queue()
    heard: list[tuple[bytes, int]] = []
    dec = InlineAudioDecoder(out, on_opus=lambda data, ts: heard.append((data, ts)))
    raw = [(2**32 - 960 + 960 * i) % 2**32 for i in range(4)]  # RTP timestamps wrap after the first
    frames = [JitterFrame(data=p, timestamp=t) for p, t in zip(packets, raw, strict=True)]
    released = AudioFrames(frames[0], frames[1:])
    released.timestamp = 48000  # as the receiver's TimestampMapper sets it on the frame it is handed
    dec.put((OPUS, released))
    assert [ts for _, ts in heard] == [48000, 48960, 49920, 50880]
    assert [data for data, _ in heard] == packets
    assert out.qsize() == 4 == dec.frames


def test_a_missing_opus_frame_becomes_silence_so_later_words_keep_their_time() -> None:
    """The stream's clock counts samples: a frame that never came (given up as lost, or corrupt) is replaced by as
    much silence, so the words after it are not pulled earlier; a long stall is left to the track reader."""
    tone = (np.sin(np.arange(48000) * 2 * np.pi * 440 / 48000) * 8000).astype(np.int16)
    packets = opus_packets(tone)[:6]
    out: asyncio.Queue[Any] = asyncio.Queue()
    dec = InlineAudioDecoder(out)
    for i in (0, 1, 3, 4):  # frame 2 lost
        dec.put((OPUS, JitterFrame(data=packets[i], timestamp=960 * i)))
    dec.put((OPUS, JitterFrame(data=packets[5], timestamp=960 * 5 + 48000)))  # a 1 s stall: not filled here
    frames = [out.get_nowait() for _ in range(out.qsize())]
    assert [f.samples for f in frames] == [960, 960, 960, 960, 960, 960]
    assert not frames[2].to_ndarray().any() and frames[3].to_ndarray().any()  # the silence sits where 2 was
    assert dec.filled_samples == 960 and dec.frames == 5


async def test_a_real_receiver_decodes_inline_and_its_track_ends_on_close(shared_data: Path) -> None:
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    source = WavChannelTrack(shared_data / "jfk.flac", limit_s=2, realtime=False)
    sender.addTrack(source)
    tracks: list[Any] = []
    receiver.on("track", tracks.append)
    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        (transceiver,) = receiver.getTransceivers()
        assert decode_inline(transceiver.receiver)  # the installed aiortc is what rtp_audio expects
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        (track,) = tracks
        frames = [await asyncio.wait_for(track.recv(), 10) for _ in range(50)]
        assert all(isinstance(f, av.AudioFrame) and f.layout.name == "mono" for f in frames)
        assert max(np.abs(f.to_ndarray()).max() for f in frames) > 1000  # speech, not silence
    finally:
        await sender.close()
        await receiver.close()
    with pytest.raises(MediaStreamError):
        while True:
            await asyncio.wait_for(track.recv(), 5)


def test_a_failing_error_callback_never_reaches_aiortc() -> None:
    def broken_callback(exc: Exception) -> None:
        raise RuntimeError("metrics are down")

    dec = InlineAudioDecoder(asyncio.Queue(), broken_callback)
    dec.put((OPUS, SimpleNamespace(data=b"\xff\xfe not opus")))  # must not raise into the packet handler
    assert dec.errors == 1


def test_an_unexpected_receiver_keeps_aiortcs_own_decoding() -> None:
    assert decode_inline(SimpleNamespace(track=None)) is False


async def test_a_received_frame_goes_on_at_once_and_in_order(shared_data: Path) -> None:
    """aiortc's audio jitter buffer held each frame until 4 later ones were complete (80 ms on every final), and even
    with no prefetch until the next packet (20 ms); with `decode_inline` a packet in sequence is decoded the moment
    it arrives, a late one is waited for and the frames behind it follow at once, in order."""
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    sender.addTrack(WavChannelTrack(shared_data / "jfk.flac", limit_s=1, realtime=False))
    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        (transceiver,) = receiver.getTransceivers()
        dropped: list[tuple[str, int]] = []
        assert decode_inline(transceiver.receiver, on_drop=lambda reason, n: dropped.append((reason, n)))
        buffer = vars(transceiver.receiver)["_RTCRtpReceiver__jitter_buffer"]

        def add(seq: int) -> list[int]:
            packet = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=960 * seq % 2**32,
                               payload=b"\xfc")
            packet._data = packet.payload  # type: ignore[attr-defined]  # aiortc's receiver sets it (depacketized)
            frame = buffer.add(packet)[1]
            if frame is None:
                return []
            return [f.timestamp // 960 for f in (frame, *getattr(frame, "later", ()))]

        assert [add(0), add(1), add(2)] == [[0], [1], [2]]  # frame n out when packet n is in
        assert [add(4), add(5), add(3), add(6)] == [[], [], [3, 4, 5], [6]]  # 3 late: waited for, order kept
        assert add(3) == [] and buffer.late == 1  # a duplicate of a released packet
        # 7 lost: given up once three packets wait behind it, and dropped if it comes after all
        assert [add(8), add(9), add(10), add(7), add(11)] == [[], [], [8, 9, 10], [], [11]]
        assert buffer.lost == 1 and buffer.late == 2
        assert add(13) == [] and add(5000) == [13, 5000]  # a jump (sender restart): what was held goes on first
        assert buffer.lost == 2
        assert dropped == [("late", 1), ("lost", 1), ("late", 1), ("lost", 1)]  # what /metrics counts
        # far behind is a restart too; then the 16-bit sequence number wraps, with a late packet across it
        assert [add(65534), add(65535), add(65537), add(65536)] == [[65534], [65535], [], [65536, 65537]]
    finally:
        await sender.close()
        await receiver.close()
