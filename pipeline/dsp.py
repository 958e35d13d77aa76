"""DSP core facade: raw PCM in, utterances out.

The numeric work lives in the Cython extension ``pipeline._dsp`` (built from ``csrc/_dsp.pyx``); this module
validates input and turns kernel status codes into precise ``ValueError``s.

* :class:`Resampler` - streaming polyphase FIR (Kaiser, ≥ 95 dB stopband, linear phase, delay compensated) with
  fused stereo downmix. Chunk-invariant: int16 output is bit-identical however the input is split.
* :class:`Vad` - per-frame speech decision: ``hybrid`` (our band-energy tracker + webrtcvad), ``webrtc`` or
  ``silero`` (ONNX, one thread).
* :class:`Segmenter` - utterance endpointer with pre-roll, end-of-speech silence, minimum speech and a
  maximum length cut at the quietest frame, in sample-accurate stream time.
* :class:`LevelMeter` - RMS/peak dBFS and clipping count.
* :class:`FrontEnd` - all of the above for one participant stream; the hot path is a single Cython call per push.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

try:
    from pipeline import _dsp
except ImportError as exc:  # pragma: no cover - exercised only on a machine without the build
    raise ImportError(
        "pipeline._dsp (the compiled DSP core) is missing: build it with `pip install -e .` "
        "(or `python setup.py build_ext --inplace`) from the repository root"
    ) from exc

__all__ = [
    "FrontEnd",
    "Level",
    "LevelMeter",
    "Resampler",
    "Segmenter",
    "Utterance",
    "Vad",
    "VAD_KINDS",
    "design_bank",
]

log = logging.getLogger(__name__)

RATE = 16000  # the rate everything after the resampler runs at
VAD_KINDS = ("hybrid", "webrtc", "silero")
_KIND_CODE = {"hybrid": _dsp.HYBRID, "webrtc": _dsp.WEBRTC, "silero": _dsp.SILERO}

# Filter design: stopband attenuation and band edges relative to the lower Nyquist frequency fc.
# Passband 0.875 fc (7 kHz for 16 kHz output), stopband from 1.025 fc (8.2 kHz): tones at 8.2 kHz and above
# would alias into the passband. Upsampling keeps 0.85 fc so that 8 kHz input stays within 5 ms of delay.
_ATTEN_DB = 92.0
_MIN_RATE, _MAX_RATE = 4000, 384000
_MAX_BANK = 1 << 22  # floats: bounds memory for awkward rate pairs

# hybrid VAD tuning (band SNR thresholds in dB, hangover) - chosen on the shared dialogues, see benchmarks/dsp.py
_T_ON_DB = 6.0  # band SNR that alone means speech
_T_LOW_DB = 2.0  # band SNR at which webrtcvad's "speech" is believed
_T_STAY_DB = 3.0  # the same two thresholds while already speaking
_T_STAY_LOW_DB = 0.0
_HANGOVER_MS = 240
_WEBRTC_MODE = 3


def _check_rate(name: str, rate: object) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer):
        raise ValueError(f"{name} must be an integer sample rate in Hz, got {rate!r}")
    r = int(rate)
    if not _MIN_RATE <= r <= _MAX_RATE:
        raise ValueError(f"{name}={r} Hz is unsupported (must be {_MIN_RATE}..{_MAX_RATE} Hz)")
    return r


@lru_cache(maxsize=32)
def design_bank(in_rate: int, out_rate: int) -> tuple[np.ndarray, int, int, int]:
    """Polyphase bank for in_rate -> out_rate: (bank float32 [L, K], L, M, D) with D the filter delay in
    samples at the upsampled rate L*in_rate. Rows are time-reversed phases, each normalised to DC gain 1."""
    g = math.gcd(in_rate, out_rate)
    L, M = out_rate // g, in_rate // g
    if L == 1 and M == 1:
        bank = np.zeros((1, 16), np.float32)
        bank[0, -1] = 1.0
        return bank, 1, 1, 0
    fc = min(in_rate, out_rate) / 2.0
    fp = (0.875 if out_rate < in_rate else 0.85) * fc
    fs = 1.025 * fc
    up = float(L * in_rate)
    dw = 2.0 * math.pi * (fs - fp) / up
    n = int(math.ceil((_ATTEN_DB - 7.95) / (2.285 * dw))) + 1
    n += 1 - n % 2  # odd: integer delay
    D = (n - 1) // 2
    beta = 0.1102 * (_ATTEN_DB - 8.7)
    cutoff = (fp + fs) / 2.0 / up  # cycles per upsampled sample
    t = np.arange(n) - D
    h = 2.0 * cutoff * np.sinc(2.0 * cutoff * t) * np.kaiser(n, beta)
    k0 = -(-n // L)
    K = -(-k0 // 16) * 16
    if L * K > _MAX_BANK:
        raise ValueError(
            f"resampling {in_rate} -> {out_rate} Hz needs {L} filter phases: unsupported rate pair"
        )
    padded = np.zeros(L * k0)
    padded[:n] = h
    phases = padded.reshape(k0, L).T  # phases[p, i] = h[p + i*L]
    phases = phases / phases.sum(axis=1, keepdims=True)  # DC gain exactly 1 per output phase
    bank = np.zeros((L, K), np.float32)
    bank[:, K - k0 :] = phases[:, ::-1]
    return np.ascontiguousarray(bank), L, M, D


def _check_pcm(x: object, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 1:
        raise ValueError(f"{what} must be 1-D (interleave channels), got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (use np.ascontiguousarray)")
    if x.size == 0:
        raise ValueError(f"{what} is empty")
    return x


class Resampler:
    """Streaming polyphase FIR resampler for integer rate pairs.

    ``process`` takes 1-D C-contiguous int16 or float32 and returns the same dtype; ``process_stereo`` takes
    interleaved stereo int16 and returns mono int16, downmixing while it converts (no extra pass or copy).
    Output is aligned with the input (no leading delay); ``flush`` returns the tail so that one stream of n
    input samples yields exactly ceil(n * out_rate / in_rate) outputs, then the instance starts a new stream.
    An instance is tied to the input layout (dtype, mono/stereo) of its first call until flushed.
    """

    __slots__ = ("in_rate", "out_rate", "_core", "_kind")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = _check_rate("in_rate", in_rate)
        self.out_rate = _check_rate("out_rate", out_rate)
        bank, L, M, D = design_bank(self.in_rate, self.out_rate)
        self._core = _dsp.Polyphase(bank, L, M, D)
        self._kind: str | None = None

    @property
    def delay_samples(self) -> float:
        """Algorithmic delay (look-ahead the filter needs) in output-rate samples."""
        return self._core.D / self._core.M

    @property
    def delay_s(self) -> float:
        return self.delay_samples / self.out_rate

    def _lock(self, kind: str) -> None:
        if self._kind is None:
            self._kind = kind
        elif self._kind != kind:
            raise ValueError(
                f"this Resampler stream carries {self._kind} input; got {kind} (use one instance per stream, "
                "or flush() first)"
            )

    def process(self, x: np.ndarray) -> np.ndarray:
        x = _check_pcm(x, "input")
        if x.dtype == np.int16:
            self._lock("int16 mono")
            return self._core.process_i16(x, False)
        if x.dtype == np.float32:
            self._lock("float32 mono")
            r = self._core.process_f32(x)
            if isinstance(r, int):
                raise ValueError("input contains NaN or infinity")
            return r
        raise ValueError(f"input dtype must be int16 or float32, got {x.dtype}")

    def process_stereo(self, x: np.ndarray) -> np.ndarray:
        x = _check_pcm(x, "stereo input")
        if x.dtype != np.int16:
            raise ValueError(f"stereo input dtype must be int16, got {x.dtype}")
        if x.size % 2:
            raise ValueError(f"interleaved stereo input needs an even number of samples, got {x.size}")
        self._lock("int16 stereo")
        return self._core.process_i16(x, True)

    def flush(self) -> np.ndarray:
        kind, self._kind = self._kind, None
        if kind is None or kind.startswith("int16"):
            return self._core.flush_i16()
        return self._core.flush_f32()


@dataclass(slots=True)
class Level:
    rms_dbfs: float
    peak_dbfs: float
    clipped: int


_FLOOR_DBFS = -120.0


def _dbfs(sumsq: float, peak: int, n: int, clipped: int) -> Level:
    rms = math.sqrt(sumsq / n) if n else 0.0
    return Level(
        rms_dbfs=20.0 * math.log10(rms / 32768.0) if rms > 0 else _FLOOR_DBFS,
        peak_dbfs=20.0 * math.log10(peak / 32768.0) if peak > 0 else _FLOOR_DBFS,
        clipped=int(clipped),
    )


class LevelMeter:
    """RMS and peak in dBFS (full scale = 32768) and the number of full-scale samples of an int16 block.
    Silence reads -120 dBFS."""

    __slots__ = ()

    def measure(self, x: np.ndarray) -> Level:
        x = _check_pcm(x, "audio")
        if x.dtype != np.int16:
            raise ValueError(f"audio dtype must be int16, got {x.dtype}")
        s, pk, clip = _dsp.level_stats(x)
        return _dbfs(s, pk, x.size, clip)


@dataclass(slots=True)
class Utterance:
    start: int  # stream time in 16 kHz samples of the first sample (pre-roll included)
    end: int  # exclusive
    audio: np.ndarray  # int16, 16 kHz, len == end - start
    speech_start: int | None = None  # where detected speech began (after the pre-roll)
    speech_end: int | None = None  # where detected speech ended (before the trailing silence)

    @property
    def start_s(self) -> float:
        return self.start / RATE

    @property
    def end_s(self) -> float:
        return self.end / RATE

    @property
    def speech_start_s(self) -> float:
        return (self.start if self.speech_start is None else self.speech_start) / RATE

    @property
    def speech_end_s(self) -> float:
        return (self.end if self.speech_end is None else self.speech_end) / RATE

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / RATE


class _SileroFrames:
    """Silero VAD v6 (ONNX from the faster-whisper package, onnxruntime with one thread) fed 20 ms frames:
    it scores 512-sample windows (with 64 samples of context); a frame takes the latest window's probability.
    Decision with hysteresis: on above 0.5, off below 0.35."""

    WINDOW = 512
    CONTEXT = 64

    def __init__(self, on: float = 0.5, off: float = 0.35) -> None:
        self._session = _silero_session()
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._buf = np.zeros(self.CONTEXT + 4 * self.WINDOW, np.float32)
        self._n = self.CONTEXT  # valid samples in _buf (context first)
        self.prob = 0.0
        self._on, self._off = on, off
        self._state = False

    def __call__(self, frame: np.ndarray) -> bool:
        m = frame.size
        self._buf[self._n : self._n + m] = frame
        self._buf[self._n : self._n + m] *= 1.0 / 32768.0
        self._n += m
        W, C = self.WINDOW, self.CONTEXT
        while self._n >= C + W:
            inp = self._buf[None, : C + W]
            out, self._h, self._c = self._session.run(None, {"input": inp, "h": self._h, "c": self._c})
            self.prob = float(out.reshape(-1)[0])
            rest = self._n - W
            self._buf[:rest] = self._buf[W : self._n]
            self._n = rest
        if self.prob > self._on:
            self._state = True
        elif self.prob < self._off:
            self._state = False
        return self._state


@lru_cache(maxsize=1)
def _silero_path() -> str:
    import faster_whisper

    path = os.path.join(os.path.dirname(faster_whisper.__file__), "assets", "silero_vad_v6.onnx")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Silero VAD model not found at {path} (faster-whisper package incomplete)")
    return path


def _silero_session() -> Any:
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return onnxruntime.InferenceSession(_silero_path(), sess_options=opts, providers=["CPUExecutionProvider"])


def _check_frame_ms(frame_ms: object) -> int:
    if frame_ms not in (10, 20, 30) or isinstance(frame_ms, bool):
        raise ValueError(f"frame_ms must be 10, 20 or 30, got {frame_ms!r}")
    return int(frame_ms)


def _vad_core(kind: str, frame_len: int) -> Any:
    if kind not in _KIND_CODE:
        raise ValueError(f"vad must be one of {', '.join(VAD_KINDS)}, got {kind!r}")
    wproc = whandle = silero = None
    if kind in ("hybrid", "webrtc"):
        import _webrtcvad  # the C module behind webrtcvad; called directly to skip a Python frame per 20 ms

        whandle = _webrtcvad.create()
        _webrtcvad.init(whandle)
        _webrtcvad.set_mode(whandle, _WEBRTC_MODE)
        wproc = _webrtcvad.process
    else:
        silero = _SileroFrames()
    hang = _HANGOVER_MS * RATE // 1000 // frame_len
    return _dsp.VadCore(
        _KIND_CODE[kind],
        frame_len,
        wproc,
        whandle,
        silero,
        _T_ON_DB,
        _T_LOW_DB,
        _T_STAY_DB,
        _T_STAY_LOW_DB,
        hang,
    )


class Vad:
    """Per-frame speech decision on 16 kHz int16 frames of 10, 20 or 30 ms.

    ``process(frame)`` returns ``speaking`` (decision with a 240 ms hangover); ``raw`` is the frame's own
    decision and ``snr_db`` our band-energy feature."""

    __slots__ = ("kind", "frame_len", "_core")

    def __init__(self, kind: str = "hybrid", frame_ms: int = 20) -> None:
        self.frame_len = _check_frame_ms(frame_ms) * RATE // 1000
        self.kind = kind
        self._core = _vad_core(kind, self.frame_len)

    def process(self, frame: np.ndarray) -> bool:
        frame = _check_pcm(frame, "frame")
        if frame.dtype != np.int16:
            raise ValueError(f"frame dtype must be int16, got {frame.dtype}")
        return self._core.process(frame)

    @property
    def raw(self) -> bool:
        return self._core.raw

    @property
    def speaking(self) -> bool:
        return self._core.speaking

    @property
    def snr_db(self) -> float:
        return self._core.feat.snr_db


def _seg_core(
    frame_len: int, pre_roll_ms: int, end_silence_ms: int, min_speech_ms: int, max_utterance_s: float
) -> Any:
    for name, v in (
        ("pre_roll_ms", pre_roll_ms),
        ("end_silence_ms", end_silence_ms),
        ("min_speech_ms", min_speech_ms),
    ):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if end_silence_ms <= 0:
        raise ValueError("end_silence_ms must be positive")
    if not isinstance(max_utterance_s, int | float) or not math.isfinite(max_utterance_s):
        raise ValueError(f"max_utterance_s must be a finite number, got {max_utterance_s!r}")
    max_len = int(round(max_utterance_s * RATE))
    if max_len < 4 * frame_len or max_len < end_silence_ms * RATE // 1000:
        raise ValueError(
            f"max_utterance_s={max_utterance_s} is too short for the frame and end-silence settings"
        )
    return _dsp.SegCore(
        frame_len,
        pre_roll_ms * RATE // 1000,
        end_silence_ms * RATE // 1000,
        min_speech_ms * RATE // 1000,
        max_len,
    )


def _utterances(tuples: list[tuple[int, int, int, int, np.ndarray]] | None) -> list[Utterance]:
    if not tuples:
        return []
    return [Utterance(s, e, a, ss, se) for (s, e, ss, se, a) in tuples]


class Segmenter:
    """Utterance endpointer over 16 kHz int16 frames and their speech flags (from a :class:`Vad`'s ``raw``).

    An utterance opens at the first speech frame with up to ``pre_roll_ms`` of audio before it, closes after
    ``end_silence_ms`` without speech (the trailing silence is part of it), is dropped if it holds less than
    ``min_speech_ms`` of speech frames, and is cut at the quietest frame of the last 2 s when it reaches
    ``max_utterance_s`` (the rest continues as the next utterance). Every sample pushed ends up in exactly
    one utterance or in ``discarded_samples``."""

    __slots__ = ("frame_len", "_core", "_done")

    def __init__(
        self,
        frame_ms: int = 20,
        *,
        pre_roll_ms: int = 300,
        end_silence_ms: int = 500,
        min_speech_ms: int = 200,
        max_utterance_s: float = 20.0,
    ) -> None:
        self.frame_len = _check_frame_ms(frame_ms) * RATE // 1000
        self._core = _seg_core(self.frame_len, pre_roll_ms, end_silence_ms, min_speech_ms, max_utterance_s)
        self._done = False

    def push(self, frame: np.ndarray, speech: bool, energy: float | None = None) -> list[Utterance]:
        """One frame of exactly frame_len samples and its speech flag; energy (mean square) picks long-utterance
        cuts and is computed when not given."""
        if self._done:
            raise ValueError("segmenter already flushed; create a new one for a new stream")
        frame = _check_pcm(frame, "frame")
        if frame.dtype != np.int16:
            raise ValueError(f"frame dtype must be int16, got {frame.dtype}")
        if frame.size != self.frame_len:
            raise ValueError(f"a frame holds exactly {self.frame_len} samples, got {frame.size}")
        if energy is None:
            energy = _dsp.level_stats(frame)[0] / frame.size
        self._core.push(frame, bool(speech), float(energy))
        out, self._core.ready = self._core.ready, []
        return _utterances(out)

    def flush(self, tail: np.ndarray | None = None) -> list[Utterance]:
        """End of stream; ``tail`` (shorter than a frame) is appended as non-speech."""
        if self._done:
            return []
        t = np.zeros(0, np.int16) if tail is None else np.ascontiguousarray(tail, dtype=np.int16)
        if t.size >= self.frame_len:
            raise ValueError(f"tail must be shorter than a frame ({self.frame_len}), got {t.size}")
        self._done = True
        self._core.finish(t)
        out, self._core.ready = self._core.ready, []
        return _utterances(out)

    @property
    def in_progress(self) -> bool:
        return bool(self._core.in_utt)

    def partial_audio(self) -> tuple[int, np.ndarray] | None:
        return self._core.partial()

    @property
    def samples_in(self) -> int:
        return self._core.samples_in

    @property
    def discarded_samples(self) -> int:
        return self._core.discarded

    @property
    def speech_samples(self) -> int:
        return self._core.speech_samples


class FrontEnd:
    """Everything from a participant's raw PCM to utterances: downmix, resample to 16 kHz, VAD, level meter,
    segmenter. ``push`` takes int16 interleaved audio at ``in_rate`` of any length (partial frames are kept
    for the next call) and costs one Cython call; Silero mode adds an ONNX run per 32 ms.

    ``level`` describes the latest complete 20 ms frame (RMS/peak of the 16 kHz mono signal; ``clipped`` counts
    full-scale input samples, per channel, received since the previous frame). ``speaking`` is the VAD's
    decision with hangover for that frame. ``samples_in``/``speech_samples`` are 16 kHz samples (speech =
    frames the VAD itself marked, before hangover)."""

    def __init__(
        self,
        in_rate: int = 48000,
        channels: int = 2,
        *,
        vad: str = "hybrid",
        frame_ms: int = 20,
        pre_roll_ms: int = 300,
        end_silence_ms: int = 500,
        min_speech_ms: int = 200,
        max_utterance_s: float = 20.0,
    ) -> None:
        self.in_rate = _check_rate("in_rate", in_rate)
        if channels not in (1, 2) or isinstance(channels, bool):
            raise ValueError(f"channels must be 1 or 2, got {channels!r}")
        self.channels = int(channels)
        self.frame_len = _check_frame_ms(frame_ms) * RATE // 1000
        self.vad_kind = vad
        bank, L, M, D = design_bank(self.in_rate, RATE)
        self._rs = _dsp.Polyphase(bank, L, M, D)
        self._vad = _vad_core(vad, self.frame_len)
        self._seg = _seg_core(self.frame_len, pre_roll_ms, end_silence_ms, min_speech_ms, max_utterance_s)
        self._core = _dsp.FrontCore(self._rs, self.channels == 2, self._vad, self._seg)
        self._flushed = False

    def push(self, pcm: np.ndarray) -> list[Utterance]:
        if self._flushed:
            raise ValueError("FrontEnd already flushed (end of stream); create a new one")
        if (
            not isinstance(pcm, np.ndarray)
            or pcm.dtype != np.int16
            or pcm.ndim != 1
            or not pcm.flags.c_contiguous
        ):
            _check_pcm(pcm, "pcm")
            raise ValueError(f"pcm dtype must be int16, got {pcm.dtype}")
        if pcm.size == 0:
            raise ValueError("pcm is empty")
        if pcm.size % self.channels:
            raise ValueError(
                f"interleaved {self.channels}-channel pcm needs a multiple of {self.channels} samples, got {pcm.size}"
            )
        return _utterances(self._core.push(pcm))

    def flush(self) -> list[Utterance]:
        if self._flushed:
            return []
        self._flushed = True
        return _utterances(self._core.finish())

    @property
    def in_progress(self) -> bool:
        return bool(self._seg.in_utt)

    def partial_audio(self) -> tuple[int, np.ndarray] | None:
        return self._seg.partial()

    @property
    def speech_end(self) -> int | None:
        """Stream index (16 kHz samples) one past the last frame the VAD itself marked as speech in the
        utterance in progress; None when no utterance is open."""
        return int(self._seg.speech_end) if self._seg.in_utt else None

    @property
    def utterance_start(self) -> int | None:
        """Stream index (16 kHz samples) of the first sample of the utterance in progress; None when none is open."""
        return int(self._seg.utt_start) if self._seg.in_utt else None

    @property
    def end_silence_samples(self) -> int:
        """The silence that closes the utterance in progress, in 16 kHz samples: settable between pushes (the
        stream shortens it after a complete sentence and lengthens it after a trailing "and"); a value the
        trailing silence already reached closes the utterance on the next frame."""
        return int(self._seg.end_silence)

    @end_silence_samples.setter
    def end_silence_samples(self, samples: int) -> None:
        if samples <= 0:
            raise ValueError(f"end silence must be positive, got {samples}")
        self._seg.end_silence = int(samples)

    @property
    def trailing_silence_samples(self) -> int:
        """16 kHz samples since the last raw speech frame of the utterance in progress (0 when none is open).
        The utterance closes when this reaches ``end_silence_ms``; unlike ``speaking`` it has no hangover."""
        seg = self._seg
        return int(seg.samples_in - seg.speech_end) if seg.in_utt else 0

    @property
    def level(self) -> Level:
        c = self._core
        return _dbfs(c.last_sumsq, c.last_peak, c.last_n, c.last_clipped)

    @property
    def speaking(self) -> bool:
        return bool(self._vad.speaking)

    @property
    def samples_in(self) -> int:
        return self._seg.samples_in

    @property
    def speech_samples(self) -> int:
        return self._seg.speech_samples

    @property
    def discarded_samples(self) -> int:
        return self._seg.discarded

    @property
    def delay_samples(self) -> float:
        """Resampler look-ahead in 16 kHz samples (stream time itself is delay-compensated)."""
        return self._rs.D / self._rs.M
