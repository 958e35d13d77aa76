"""Reference-based bleed suppression: take another participant's voice out of this microphone's audio before
speech-to-text.

A microphone beside the other participant's speakers (no echo cancellation), or in the same room, hears their
voice a little later and 10-30 dB lower. The cross-talk guard (`pipeline.guards.bleed_of`) keeps the sentence from
being shown twice, but the bled-in voice still changes what the decoder makes of this speaker's own words
(substitutions, the other's words mixed into a final) and fills the pauses between them. Within a room every
participant's audio is at hand, so the other streams are a reference for the bleed in this one, as the far-end
signal is for an echo canceller:

1. delay: GCC-PHAT cross-correlation of this utterance with the other stream's audio around it, searched over
   `MIN_DELAY_S`..`MAX_DELAY_S` (the bleed comes after its source: an acoustic path, perhaps a peer-to-peer call
   and a second capture chain);
2. is it a copy? The correlation peak must stand out from the rest of the searched lags (`MIN_PEAK_Z`), and the
   copy must be quieter than its source (broadband least-squares gain <= `MAX_GAIN`): the other stream also holds
   a faint copy of *this* speaker, which must never be taken for a source;
3. subtract: in short-time Fourier frames, a least-squares transfer function per frequency bin (a block
   frequency-domain filter: it absorbs a fractional delay and the loudspeaker's and room's colouring), the
   estimated bleed subtracted from each frame, overlap-add back.

It runs once per decode (a closed utterance, a speculative final's snapshot, a partial), never per 20 ms frame;
`python -m benchmarks.crosstalk --cost` measures it. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATE = 16000
MIN_DELAY_S = -0.01  # room for the error of mapping two streams to one time axis (arrival time in the server)
MAX_DELAY_S = 0.3  # the guard's window: acoustic path + a capture chain, or a peer-to-peer call in between
MIN_PEAK_Z = 6.0  # the correlation peak, in robust standard deviations above the median of the searched lags
MAX_GAIN = 0.5  # a copy is >= 6 dB below its source (the guard's level gap)
MIN_REF_RMS = 30.0  # int16 RMS of the reference below which there is nothing to remove (about -60 dBFS)
FRAME = 512  # 32 ms STFT frames, 50 % overlap (sqrt-Hann analysis and synthesis windows sum to one)
HOP = FRAME // 2
TAPER = 320  # 20 ms fades at the ends of the audio before the delay search
_EPS = 1e-9


@dataclass(slots=True, frozen=True)
class Suppression:
    """What `suppress_bleed` found: the bleed's delay (s), broadband gain (dB) and peak prominence."""

    delay_s: float
    gain_db: float
    peak_z: float


def suppress_bleed(mic: np.ndarray, ref: np.ndarray, lead: int) -> tuple[np.ndarray, Suppression | None]:
    """`mic` (int16, 16 kHz) with the delayed, attenuated copy of `ref` it holds subtracted, and what was found
    (None, and `mic` itself, when no copy was found). `ref` is the other stream's audio on the same time axis,
    starting `lead` samples before `mic` (zeros where unknown); it should cover `mic` plus
    `MAX_DELAY_S` before it."""
    if mic.dtype != np.int16 or mic.ndim != 1 or ref.ndim != 1:
        raise ValueError("suppress_bleed: mic must be 1-D int16 and ref 1-D")
    if lead < 0:
        raise ValueError(f"suppress_bleed: lead must be >= 0, got {lead}")
    if mic.size < FRAME or ref.size == 0:
        return mic, None
    x = mic.astype(np.float64)
    r = ref.astype(np.float64)
    if float(np.sqrt(np.mean(r * r))) < MIN_REF_RMS * np.sqrt(min(1.0, mic.size / ref.size)):
        return mic, None
    found = _delay(_tapered(x), _tapered(r), lead)
    if found is None:
        return mic, None
    d, z = found
    aligned = _aligned(r, lead - d, x.size)
    power = float(aligned @ aligned)
    if power <= _EPS:
        return mic, None
    gain = float(x @ aligned) / power
    if not 0.0 < gain <= MAX_GAIN:
        return mic, None
    cleaned = _subtract(x, aligned)
    out = np.clip(np.round(cleaned), -32768, 32767).astype(np.int16)
    return out, Suppression(d / RATE, 20.0 * np.log10(gain), z)


def _delay(x: np.ndarray, r: np.ndarray, lead: int) -> tuple[int, float] | None:
    """The lag d (samples; mic[k] ~ ref[lead + k - d]) of the GCC-PHAT peak in the searched range, and its
    prominence; None when the peak does not stand out."""
    n = 1 << int(np.ceil(np.log2(x.size + r.size)))
    spec = np.fft.rfft(x, n) * np.conj(np.fft.rfft(r, n))
    cc = np.fft.irfft(spec / (np.abs(spec) + _EPS), n)
    # cc[m] = sum_k x[k + m] r[k]; a copy delayed by d sits at m = d - lead
    lo, hi = int(round(MIN_DELAY_S * RATE)), int(round(MAX_DELAY_S * RATE))
    lags = np.arange(lo, hi + 1)
    values = cc[(lags - lead) % n]
    i = int(np.argmax(values))
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median))) + _EPS
    z = (float(values[i]) - median) / spread
    if z < MIN_PEAK_Z:
        return None
    return int(lags[i]), z


def _tapered(x: np.ndarray) -> np.ndarray:
    """x with TAPER-sample half-Hann fades at both ends: a cut through speech is a step, and whitened steps of
    two cuts would correlate at the lag that lines the cuts up."""
    n = min(TAPER, x.size // 2)
    if n == 0:
        return x
    fade = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
    out = x.copy()
    out[:n] *= fade
    out[x.size - n :] *= fade[::-1]
    return out


def _aligned(r: np.ndarray, offset: int, length: int) -> np.ndarray:
    """r[offset : offset + length], zeros outside r."""
    out = np.zeros(length)
    a, b = max(0, offset), min(r.size, offset + length)
    if b > a:
        out[a - offset : b - offset] = r[a:b]
    return out


def _frames(x: np.ndarray, window: np.ndarray) -> np.ndarray:
    """STFT of x padded by half a frame on each side: every sample of x lies under two windows."""
    padded = np.zeros(HOP + x.size + FRAME)
    padded[HOP : HOP + x.size] = x
    idx = np.arange(FRAME)[None, :] + HOP * np.arange((padded.size - FRAME) // HOP + 1)[:, None]
    return np.fft.rfft(padded[idx] * window, axis=1)


def _subtract(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """x minus ref filtered by the per-bin least-squares transfer function from ref to x (STFT, overlap-add)."""
    window = np.sqrt(np.hanning(FRAME + 1)[:FRAME])  # periodic Hann: its 50 %-overlapped squares sum to one
    spec_x, spec_r = _frames(x, window), _frames(ref, window)
    h = np.sum(spec_x * np.conj(spec_r), axis=0) / (np.sum(np.abs(spec_r) ** 2, axis=0) + _EPS)
    frames = np.fft.irfft(spec_x - h[None, :] * spec_r, FRAME, axis=1) * window
    out = np.zeros(HOP + x.size + FRAME)
    for i, frame in enumerate(frames):
        out[i * HOP : i * HOP + FRAME] += frame
    return out[HOP : HOP + x.size]
