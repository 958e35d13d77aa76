"""Decode received audio on the event loop instead of in aiortc's decoder thread (one thread per track).

aiortc hands every received audio frame to a per-receiver thread through a `queue.Queue`, and the thread hands
the decoded frame back with `asyncio.run_coroutine_threadsafe`. For 20 ms Opus frames that round trip costs far
more than the decode: profiling the server with ten rooms (twenty tracks, 1000 frames/s), the thread hand-offs
(`Condition.notify`, the loop's self-pipe wake-ups) were the largest single cost of the event loop, above SRTP.
Decoding a 20 ms Opus frame takes microseconds in libopus, so we decode inline, straight into the track's queue:
`track.recv()` works exactly as before, without the threads. Opus is decoded to mono (browsers send voice as
mono; a stereo stream is downmixed by libopus), which also halves what the DSP core reads.

It also releases each frame as soon as the next packet arrives. aiortc's audio jitter buffer
(`JitterBuffer(capacity=16, prefetch=4)`) holds every frame until four later frames are complete: 80 ms added
to every word the server hears, and so to every final (measured: the server's stream time ran 109 ms behind the
sender's over loopback, `benchmarks.latency --breakdown`, `start_offset`). It has no playout clock, so the
prefetch smooths nothing here; reordering and loss are handled the same with `prefetch=1` (a frame waits for a
missing earlier packet either way, up to the 16-packet capacity).

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

log = logging.getLogger(__name__)

_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"
AUDIO_PREFETCH = 1  # frames a received frame waits behind (aiortc: 4, i.e. 80 ms of 20 ms Opus frames)
_STARTED_ATTR = "_RTCRtpReceiver__started"
_warned = False

# Called with each received Opus payload, as sent, and its RTP timestamp (the call relay forwards them).
OpusListener = Callable[[bytes, int], None]


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

    def put(self, item: tuple[Any, Any] | None) -> None:
        if item is None:
            self._stopped.set()
            return
        if self._stopped.is_set():
            return
        codec, encoded = item
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
            for frame in self._decode(codec, encoded):
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
                  on_opus: OpusListener | None = None) -> bool:
    """Make `receiver` (an audio `RTCRtpReceiver` that has not started) decode on the event loop; `on_opus` also
    gets every Opus payload before it is decoded.

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
    from aiortc.jitterbuffer import JitterBuffer

    jitter = getattr(receiver, _JITTER_ATTR, None)
    if isinstance(jitter, JitterBuffer):  # else aiortc's own buffer stays (80 ms later, still correct)
        setattr(receiver, _JITTER_ATTR, JitterBuffer(capacity=jitter.capacity, prefetch=AUDIO_PREFETCH))
    return True
