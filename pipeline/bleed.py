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
3. subtract: a least-squares FIR filter of the reference, a few ms long around the found lag (a fractional
   delay, a loudspeaker's colouring), fitted by least squares reweighted per 0.25 s block, so that the blocks where
   this speaker is silent decide it and their own words over the bleed barely bias it, then subtracted. A room's reverberation
   (hundreds of ms) is beyond it: what it leaves is for the cross-talk guard;
4. gate: a 20 ms frame the subtraction took nearly everything from (this speaker was silent) becomes digital
   silence, which the decoder hears as silence rather than making words of a faint residue.

It runs once per decode (a closed utterance, a speculative final's snapshot, a partial), never per 20 ms frame;
`python -m benchmarks.crosstalk --cost` measures it. Nothing here does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RATE = 16000
MIN_DELAY_S = -0.01  # room for the error of mapping two streams to one time axis (arrival time in the server)
MAX_DELAY_S = 0.3  # the guard's window: acoustic path + a capture chain, or a peer-to-peer call in between
MIN_PEAK_Z = 6.0  # the correlation peak, in robust standard deviations above the median of the searched lags
MIN_PEAK_SHARE = 0.3  # ... and at least this share of the peak of the other stream's copy of this speaker
MAX_GAIN = 0.5  # a copy is >= 6 dB below its source (the guard's level gap)
MIN_REF_RMS = 30.0  # int16 RMS of the reference below which there is nothing to remove (about -60 dBFS)
# the bleed's filter: 0.5 ms before the found lag (a fractional delay) to 1.5 ms after it (a loudspeaker's and
# microphone's colouring); each coefficient more lets the speaker's own words over the bleed bias the fit more
TAPS_BEFORE, TAPS_AFTER = 8, 24
LOADING = 1e-4  # diagonal loading of the filter's normal equations (a reference with empty bands)
BLOCK = 4000  # 0.25 s: the blocks the fit weighs (this speaker silent in some, talking in others)
FIT_ROUNDS = 3  # a plain least-squares fit, then two reweighted ones
GATE_FRAME = 320  # 20 ms, the pipeline's frame
GATE_DB = 15.0  # a frame the subtraction reduced by more than this was the other voice only
# an utterance whose active speech level the suppression lowered by this much held nothing but the other voice
BLEED_ONLY_DB = 20.0
MIN_SAMPLES = 512  # 32 ms: less is no speech to match
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
    if mic.size < MIN_SAMPLES or ref.size == 0:
        return mic, None
    x = mic.astype(np.float64)
    r = ref.astype(np.float64)
    if float(np.sqrt(np.mean(r * r))) < MIN_REF_RMS:  # the other stream heard (next to) nothing here
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
    cleaned = _gated(x, _subtract(x, r, lead - d))
    out = np.clip(np.round(cleaned), -32768, 32767).astype(np.int16)
    return out, Suppression(d / RATE, 20.0 * math.log10(gain), z)


def _delay(x: np.ndarray, r: np.ndarray, lead: int) -> tuple[int, float] | None:
    """The lag d (samples; mic[k] ~ ref[lead + k - d]) of the GCC-PHAT peak in the searched range, and its
    prominence; None when the peak does not stand out."""
    # long enough that the searched lags (|d| <= MAX_DELAY_S around `lead`) do not wrap around
    n = 1 << int(np.ceil(np.log2(max(x.size, r.size) + 2 * int(round(MAX_DELAY_S * RATE)) + lead + 1)))
    spec = np.fft.rfft(x, n) * np.conj(np.fft.rfft(r, n))
    cc = np.fft.irfft(spec / (np.abs(spec) + _EPS), n)
    # cc[m] = sum_k x[k + m] r[k]; a copy delayed by d sits at m = d - lead
    lo, hi = int(round(MIN_DELAY_S * RATE)), int(round(MAX_DELAY_S * RATE))
    lags = np.arange(-hi, hi + 1)
    values = cc[(lags - lead) % n]
    ahead = lags >= lo
    i = int(np.argmax(np.where(ahead, values, -np.inf)))
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median))) + _EPS
    z = (float(values[i]) - median) / spread
    if z < MIN_PEAK_Z:
        return None
    # the other stream holds a copy of this speaker too, `lags` below zero: when that one is much the stronger,
    # this speaker is the source here and a peak after it is their own voice's self-similarity, not a copy
    behind = float(np.max(values[~ahead])) - median
    if float(values[i]) - median < MIN_PEAK_SHARE * behind:
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


def _gated(x: np.ndarray, cleaned: np.ndarray) -> np.ndarray:
    """`cleaned` with its GATE_FRAME frames that were nearly all bleed (the subtraction took away all but
    `GATE_DB` of them: this speaker was silent there) made digital silence. What the subtraction leaves of a copy
    is faint, but a decoder given nothing else makes words of it ("Thank you very much.") where silence decodes
    as silence; a frame with this speaker's own words loses little and stays."""
    n = x.size // GATE_FRAME * GATE_FRAME
    before = np.sum(x[:n].reshape(-1, GATE_FRAME) ** 2, axis=1)
    after = np.sum(cleaned[:n].reshape(-1, GATE_FRAME) ** 2, axis=1)
    silent = np.repeat(after < before * 10.0 ** (-GATE_DB / 10.0), GATE_FRAME)
    out = cleaned.copy()
    out[:n][silent] = 0.0
    return out


def _subtract(x: np.ndarray, r: np.ndarray, base: int) -> np.ndarray:
    """x minus its prediction from r by a short FIR filter around the found lag (x[k] ~ sum_i taps[i] seg[k + i],
    seg[t] = r[base - TAPS_AFTER + t]: TAPS_BEFORE..TAPS_AFTER samples around the lag, a fractional delay and a
    loudspeaker's colouring). The filter is fitted by least squares reweighted per BLOCK (`FIT_ROUNDS`, each block
    weighted by the inverse of what the previous fit left in it): the blocks where the bleed is alone decide it,
    and this speaker's own words over the bleed, which no filter of the reference explains, barely bias it."""
    k = TAPS_BEFORE + TAPS_AFTER + 1
    seg = _aligned(r, base - TAPS_AFTER, x.size + k - 1)
    edges = np.arange(0, x.size + BLOCK, BLOCK).clip(max=x.size)
    edges = edges[np.r_[True, np.diff(edges) > 0]]
    starts, ends = edges[:-1], edges[1:]
    # per-block normal equations from running sums of lagged products: O(samples x taps), no matrix of rows
    grams = np.empty((starts.size, k, k))
    for lag in range(k):
        run = np.concatenate([[0.0], np.cumsum(seg[: seg.size - lag] * seg[lag:])])
        tap = np.arange(k - lag)
        block = run[ends[:, None] + tap] - run[starts[:, None] + tap]
        grams[:, tap, tap + lag] = block
        grams[:, tap + lag, tap] = block
    rhs = np.empty((starts.size, k))
    for i in range(k):
        run = np.concatenate([[0.0], np.cumsum(seg[i : i + x.size] * x)])
        rhs[:, i] = run[ends] - run[starts]
    floor = 1e-6 * float(np.mean(x * x)) + 1.0
    weights = np.ones(starts.size)
    predicted = np.zeros(x.size)
    for _ in range(FIT_ROUNDS):
        gram = np.tensordot(weights, grams, 1)
        gram[np.diag_indices_from(gram)] += LOADING * np.trace(gram) / k + _EPS
        taps = np.linalg.solve(gram, weights @ rhs)
        predicted = np.correlate(seg, taps, mode="valid")  # sum_i taps[i] seg[k + i]
        power = np.add.reduceat((x - predicted) ** 2, starts) / (ends - starts)
        weights = 1.0 / (power + floor)
    return x - predicted
