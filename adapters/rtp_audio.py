"""Decode received audio on the event loop instead of in aiortc's decoder thread (one thread per track).

aiortc hands every received audio frame to a per-receiver thread through a `queue.Queue`, and the thread hands
the decoded frame back with `asyncio.run_coroutine_threadsafe`. For 20 ms Opus frames that round trip costs far
more than the decode: profiling the server with ten rooms (twenty tracks, 1000 frames/s), the thread hand-offs
(`Condition.notify`, the loop's self-pipe wake-ups) were the largest single cost of the event loop, above SRTP.
Decoding a 20 ms Opus frame takes microseconds in libopus, so we decode inline, straight into the track's queue:
`track.recv()` works exactly as before, without the threads. Opus is decoded to mono (browsers send voice as
mono; a stereo stream is downmixed by libopus), which also halves what the DSP core reads.

It also releases each frame the moment its packet arrives (`AudioJitterBuffer`). aiortc's audio jitter buffer
(`JitterBuffer(capacity=16, prefetch=4)`) holds every frame until four later frames are complete: 80 ms added
to every word the server hears, and so to every final (measured: the server's stream time ran 109 ms behind the
sender's over loopback, `benchmarks.latency --breakdown`, `start_offset`). It has no playout clock, so the
prefetch smooths nothing here. Even with `prefetch=1` it waits for the next packet (20 ms), because it learns
that a frame is complete only from a packet of the next timestamp (a video frame spans packets); an audio packet
is a whole frame. It also returns one frame per packet received, so frames held behind a late packet stay a
frame late for the rest of the call; `AudioJitterBuffer` hands them all on once the gap is filled or given up.

This replaces two private attributes of `aiortc.RTCRtpReceiver` (its decoder queue and its jitter buffer) before
the receiver starts.
`decode_inline` checks that the attribute is what it expects and otherwise leaves aiortc's own path in place
(logged once), so an aiortc upgrade that changes it degrades to the old cost, never to silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.utils import uint16_add, uint32_add

log = logging.getLogger(__name__)

_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"
AUDIO_MAX_WAIT = 3  # packets received after a missing one before it is given up as lost (60 ms of 20 ms frames)
MAX_MISORDER = 100  # a packet this far from the expected sequence number restarts the sequence (as aiortc's)
OPUS_RATE = 48000  # Opus RTP timestamps count 48 kHz samples whatever the encoder's rate
MAX_FILL_SAMPLES = OPUS_RATE // 2  # longest gap between Opus frames filled with silence (longer: a stalled sender)
_STARTED_ATTR = "_RTCRtpReceiver__started"
_warned = False

# Called with each received Opus payload, as sent, and its RTP timestamp (the call relay forwards them).
OpusListener = Callable[[bytes, int], None]
# Called with a reason ("lost", "late") and a count of audio packets the jitter buffer did not hand on.
DropListener = Callable[[str, int], None]


class InlineAudioDecoder:
    """Stands in for the receiver's decoder queue.

    aiortc calls `put((codec, encoded_frame))` on the event loop for every frame the jitter buffer completes and
    `put(None)` when the receiver stops. Its decoder thread still starts; it blocks in `get()` until the stop
    and then ends the track as usual.
    """

    def __init__(self, out: asyncio.Queue[Any], on_error: Callable[[Exception], None] | None = None,
                 on_opus: OpusListener | None = None) -> None:
        self._out = out
        self._on_error = on_error
        self._on_opus = on_opus
        self._stopped = threading.Event()
        self._codec_name: str | None = None
        self._decoder: Any = None
        self.frames = 0
        self.errors = 0
        self._next_ts: int | None = None  # the RTP time (mapped) right after the last Opus frame decoded
        self.filled_samples = 0  # silence put in for missing Opus frames (`_fill_gap`)

    def put(self, item: tuple[Any, Any] | None) -> None:
        if item is None:
            self._stopped.set()
            return
        if self._stopped.is_set():
            return
        codec, encoded = item
        self._take(codec, encoded)
        first = getattr(encoded, "timestamp", 0)
        for later in getattr(encoded, "later", ()):  # `AudioFrames`: more frames released by the same packet
            # the receiver mapped the first frame's timestamp onto its stream's clock; the others keep their offsets
            self._take(codec, JitterFrame(data=later.data, timestamp=first + uint32_add(later.timestamp,
                                                                                       -encoded.raw_timestamp)))

    def _take(self, codec: Any, encoded: Any) -> None:
        if not getattr(encoded, "data", b""):
            return  # an empty payload would read as end-of-stream to the decoder and silence the track
        if self._on_opus is not None and codec.name == "opus":
            try:
                self._on_opus(encoded.data, encoded.timestamp)
            except Exception as exc:  # noqa: BLE001 - a failing listener must not cost the transcript its audio
                if self._on_error is not None:
                    with contextlib.suppress(Exception):
                        self._on_error(exc)
        try:
            frames = self._decode(codec, encoded)
            self._fill_gap(codec, encoded, frames)
            for frame in frames:
                self._out.put_nowait(frame)
                self.frames += 1
        except Exception as exc:  # noqa: BLE001 - raised here it would reach aiortc's transport and end the call
            # a corrupt packet: drop it and keep the decoder state, unless the decoder has ended (then a new one)
            if isinstance(exc, EOFError):
                self._codec_name = self._decoder = None
            self.errors += 1
            if self._on_error is not None:
                with contextlib.suppress(Exception):
                    self._on_error(exc)

    def _fill_gap(self, codec: Any, encoded: Any, frames: list[av.AudioFrame]) -> None:
        """Silence in place of the Opus frames that never came (lost, given up by `AudioJitterBuffer`, or a corrupt
        packet), up to `MAX_FILL_SAMPLES`: the stream's clock counts samples, so without it every lost 20 ms would
        pull the rest of the call's word times 20 ms earlier. Longer gaps are a stalled sender, which the track
        reader fills itself."""
        ts = getattr(encoded, "timestamp", None)
        if codec.name != "opus" or not isinstance(ts, int) or not frames:
            return
        gap = ts - self._next_ts if self._next_ts is not None else 0
        if 0 < gap <= MAX_FILL_SAMPLES:
            silence = av.AudioFrame.from_ndarray(np.zeros((1, gap), np.int16), format="s16", layout="mono")
            silence.sample_rate = OPUS_RATE
            self._out.put_nowait(silence)
            self.filled_samples += gap
        self._next_ts = ts + sum(f.samples for f in frames)  # Opus RTP time is in 48 kHz samples

    def get(self, block: bool = True, timeout: float | None = None) -> None:
        self._stopped.wait(timeout if block else 0)
        return None

    def _decode(self, codec: Any, encoded: Any) -> list[av.AudioFrame]:
        if codec.name != self._codec_name:
            self._codec_name, self._decoder = codec.name, _decoder_for(codec)
        if self._codec_name == "opus":
            return self._decoder.decode(av.Packet(encoded.data))
        return self._decoder.decode(encoded)


def _decoder_for(codec: Any) -> Any:
    if codec.name == "opus":
        ctx = av.CodecContext.create("libopus", "r")
        ctx.format = "s16"
        ctx.layout = "mono"
        ctx.sample_rate = 48000
        return ctx
    from aiortc.codecs import get_decoder  # G.711: aiortc's own (stateless, cheap) decoders

    return get_decoder(codec)


def decode_inline(receiver: Any, on_error: Callable[[Exception], None] | None = None,
                  on_opus: OpusListener | None = None, on_drop: DropListener | None = None) -> bool:
    """Make `receiver` (an audio `RTCRtpReceiver` that has not started) decode on the event loop; `on_opus` also
    gets every Opus payload before it is decoded; `on_drop(reason, n)` hears of packets the jitter buffer gave up
    ("lost") or dropped ("late": after their place was released, or duplicates).

    Returns False, leaving aiortc's threaded decoding in place, when the receiver is not what this expects.
    """
    global _warned
    track = getattr(receiver, "track", None)
    ok = (
        getattr(receiver, _STARTED_ATTR, True) is False
        and isinstance(getattr(receiver, _QUEUE_ATTR, None), queue.Queue)
        and isinstance(getattr(track, "_queue", None), asyncio.Queue)
        and getattr(track, "kind", None) == "audio"
    )
    if not ok:
        if not _warned:
            _warned = True
            log.warning("aiortc's receiver internals differ from what adapters.rtp_audio expects: audio is "
                        "decoded in aiortc's threads (works, costs more CPU per track)")
        return False
    assert track is not None
    setattr(receiver, _QUEUE_ATTR, InlineAudioDecoder(track._queue, on_error, on_opus))
    jitter = getattr(receiver, _JITTER_ATTR, None)
    if isinstance(jitter, JitterBuffer):  # else aiortc's own buffer stays (80 ms later, still correct)
        # only beside the inline decoder: aiortc's decoder thread would not read `AudioFrames.later`
        setattr(receiver, _JITTER_ATTR, AudioJitterBuffer(on_drop=on_drop))
    return True


class AudioFrames(JitterFrame):
    """The frames one packet releases, in order: this one (`data`, `timestamp`, which the receiver maps onto its
    stream's clock) and `later` ones (their RTP timestamps; `raw_timestamp` is this frame's)."""

    def __init__(self, first: JitterFrame, later: list[JitterFrame]) -> None:
        super().__init__(data=first.data, timestamp=first.timestamp)
        self.raw_timestamp = first.timestamp
        self.later = later


class AudioJitterBuffer:
    """Puts received audio packets back in sequence and releases each the moment it is next (no prefetch).

    An audio RTP packet is a whole frame (Opus, G.711, G.722), so a packet in sequence goes on at once. A packet
    after a missing one is held until the missing one arrives or `max_wait` packets are held (then the missing
    ones are given up as lost: `InlineAudioDecoder` puts silence in their place); either way everything held goes
    on in one `AudioFrames`, so a late packet costs the frames behind it only its own delay. A packet behind what
    was already released (a duplicate, or one given up) is dropped; one `MAX_MISORDER` or more away restarts the
    sequence there, after what was held. Same interface as aiortc's `JitterBuffer.add` for the receiver (never
    asks for a picture loss indication). Frames held when the sender stops go on when it sends again.
    """

    def __init__(self, max_wait: int = AUDIO_MAX_WAIT, on_drop: DropListener | None = None) -> None:
        if max_wait < 1:
            raise ValueError(f"max_wait must be >= 1, not {max_wait}")
        self.max_wait = max_wait
        self._on_drop = on_drop
        self._next: int | None = None  # the sequence number released next
        self._held: dict[int, Any] = {}
        self.lost = 0  # packets given up
        self.late = 0  # packets dropped because they came after their place was released or given up

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._next is None:
            self._next = seq
        ahead = uint16_add(seq, -self._next)
        if ahead >= 1 << 15:  # behind the released sequence
            if uint16_add(self._next, -seq) < MAX_MISORDER:
                self.late += 1
                self._dropped("late", 1)
                return False, None
            ahead = MAX_MISORDER  # far behind: the sender restarted its sequence
        frames: list[JitterFrame] = []
        if ahead >= MAX_MISORDER:  # what was held goes on first, the gaps between given up
            frames = self._release_all()
            self._next = seq
        self._held[seq] = packet
        if self._next not in self._held and len(self._held) >= self.max_wait:
            # give up the missing packets: on to the first one held
            expected = self._next
            first = min(self._held, key=lambda s: uint16_add(s, -expected))
            self._given_up(uint16_add(first, -expected))
            self._next = first
        frames += self._release()
        if not frames:
            return False, None
        return False, frames[0] if len(frames) == 1 else AudioFrames(frames[0], frames[1:])

    def _given_up(self, n: int) -> None:
        if n:
            self.lost += n
            self._dropped("lost", n)

    def _dropped(self, reason: str, n: int) -> None:
        if self._on_drop is not None:
            with contextlib.suppress(Exception):  # a failing listener must not reach aiortc's transport
                self._on_drop(reason, n)

    def _release(self) -> list[JitterFrame]:
        """The held packets from the next sequence number on, up to the first missing one."""
        frames = []
        while self._next in self._held:
            p = self._held.pop(self._next)
            frames.append(JitterFrame(data=p._data, timestamp=p.timestamp))
            self._next = uint16_add(self._next, 1)
        return frames

    def _release_all(self) -> list[JitterFrame]:
        """Every held packet in sequence, the missing ones between them given up."""
        frames: list[JitterFrame] = []
        while self._held:
            expected = self._next
            assert expected is not None  # set by the first packet, before anything is held
            first = min(self._held, key=lambda s: uint16_add(s, -expected))
            self._given_up(uint16_add(first, -expected))
            self._next = first
            frames += self._release()
        return frames
