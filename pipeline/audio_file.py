"""Decode audio files (anything PyAV/FFmpeg reads: wav, flac, mp3, ogg, ...) into int16 PCM."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DecodedAudio:
    rate: int
    channels: int
    pcm: np.ndarray  # int16, interleaved when channels == 2

    @property
    def frames(self) -> int:
        return self.pcm.size // self.channels

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate

    def channel(self, i: int) -> np.ndarray:
        """One channel as a contiguous int16 array."""
        if not 0 <= i < self.channels:
            raise ValueError(f"channel {i} out of range for {self.channels}-channel audio")
        return np.ascontiguousarray(self.pcm[i :: self.channels])


def read_audio(source: str | Path | bytes, *, rate: int | None = None, mono: bool = False) -> DecodedAudio:
    """Decode the first audio stream of `source` (a path or the file's bytes) to int16.

    Keeps the file's rate and channel count (more than two channels are downmixed to stereo) unless `rate`
    or `mono` ask for a conversion. Raises ValueError with a one-line reason for missing, corrupt, empty or
    undecodable input.
    """
    import av

    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise ValueError(f"{name}: no such file")
    chunks: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), mode="r") as container:
            if not container.streams.audio:
                raise ValueError(f"{name}: no audio stream")
            stream = container.streams.audio[0]
            in_channels = stream.codec_context.channels or 1
            out_channels = 1 if mono else min(2, in_channels)
            out_rate = rate or stream.codec_context.sample_rate or stream.rate
            if not out_rate:
                raise ValueError(f"{name}: unknown sample rate")
            resampler = av.AudioResampler(
                format="s16", layout="mono" if out_channels == 1 else "stereo", rate=out_rate
            )
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1).copy())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1).copy())
    except (av.error.FFmpegError, OSError, EOFError) as exc:  # before ValueError: PyAV's errors subclass it
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ValueError(f"{name}: cannot decode audio ({reason})") from exc
    pcm = np.concatenate(chunks).astype(np.int16, copy=False) if chunks else np.zeros(0, np.int16)
    if pcm.size < out_channels:
        raise ValueError(f"{name}: no audio samples")
    pcm = pcm[: pcm.size - pcm.size % out_channels]
    return DecodedAudio(rate=int(out_rate), channels=out_channels, pcm=np.ascontiguousarray(pcm))
