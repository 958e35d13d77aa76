"""Audio evidence of the end of a turn: Pipecat's Smart Turn v3.2 (BSD-2-Clause) run with our own features.

The model (`models/smart-turn-v3.2-cpu.onnx`, int8, 8.7 MB; SHA-256 in `models/manifest.json`, licence in
`models/LICENSE-smart-turn`) is a Whisper-tiny encoder with a classifier head: it hears the last <= 8 s of a
speaker's audio at 16 kHz ending in a short silence and says how probable it is that the turn is over, from the
intonation and rhythm of what was said. Its input contract, read from pipecat's `local_smart_turn_v3.py` and
`_whisper_features.py` (pipecat-ai 1.14.0), which we do not depend on:

* the audio since the turn started (pipecat: since the VAD's speech start minus 500 ms, kept across pauses it
  judged incomplete), float in [-1, 1), cut to its last 8 s or padded with zeros *in front* to exactly 8 s;
* the waveform normalised to zero mean and unit variance (over the padded 8 s, epsilon 1e-7);
* Whisper's log-mel spectrogram of it: 400-point periodic-Hann STFT every 160 samples, centred with reflection
  padding, power spectrum, 80 Slaney-normalised Slaney-scale mel filters over 0-8 kHz, log10 floored at 1e-10, the
  last frame dropped (800 frames), clamped to 8 below its maximum, then (x + 4) / 4;
* input `input_features` float32 (1, 80, 800); output (1, 1): the probability the turn ended (a sigmoid already,
  despite the output's name `logits`).

`log_mel` below computes those features (tests/test_smart_turn.py checks it against values computed once with
pipecat's extractor). Turn-taking only: the probability is used for the silence that closes an utterance, and
nothing about the speaker is inferred from it or stored.

Pipecat quotes ~12 ms per inference on a CPU; `python -m benchmarks.turns` measures it here. At most one inference
per pause (`pipeline.stream` asks only when the pause's words would close the turn early), on `SmartTurn`'s own
thread (one, shared by every stream of the process): never on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.transcript import SAMPLE_RATE

MODEL_PATH = Path(__file__).resolve().parents[1] / "models" / "smart-turn-v3.2-cpu.onnx"
WINDOW_S = 8
WINDOW = WINDOW_S * SAMPLE_RATE
N_FFT = 400  # Whisper's 25 ms window
HOP = 160  # and 10 ms hop
N_MELS = 80  # Smart Turn is built on Whisper tiny: 80 bins (large-v3 uses 128)
FRAMES = WINDOW // HOP  # 800
_NORM_EPS = 1e-7  # transformers' zero-mean unit-variance normalisation
_LOG_FLOOR = 1e-10
_DYNAMIC_RANGE = 8.0  # log10 units below the maximum kept (openai/whisper audio.py log_mel_spectrogram)


def _slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz (3 per 200 Hz), logarithmic above
    (27 mels per factor 6.4)."""
    hz = np.asarray(hz, np.float64)
    return np.where(hz < 1000.0, hz * 3.0 / 200.0, 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * 27.0 / np.log(6.4))


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0))


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) triangular filters, equally spaced on the Slaney mel scale over 0..8 kHz, each
    scaled to unit area (Slaney normalisation: 2 / bandwidth), as Whisper's `mel_filters.npz` / librosa."""
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _slaney_hz(np.linspace(_slaney_mel(np.array(0.0)), _slaney_mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2))
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lo) / (centre - lo)
    falling = (hi - bins[None, :]) / (hi - centre)
    return np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (hi - lo))


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)  # periodic (torch.hann_window's default)


def window(audio: np.ndarray) -> np.ndarray:
    """The model's 8 s of input from 16 kHz mono audio (int16 or float in [-1, 1)): its last 8 s, or all of it
    with zeros in front; float32 in [-1, 1)."""
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"smart turn wants mono audio, got shape {a.shape}")
    x = a.astype(np.float32) / 32768.0 if a.dtype == np.int16 else a.astype(np.float32)
    if x.size >= WINDOW:
        return np.ascontiguousarray(x[-WINDOW:])
    return np.concatenate([np.zeros(WINDOW - x.size, np.float32), x])


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper's normalised log-mel features of `window(audio)`: float32 (N_MELS, FRAMES)."""
    x = window(audio)
    x = (x - x.mean()) / np.sqrt(x.var() + _NORM_EPS)  # float32, as the reference normalises before the STFT
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:FRAMES]  # the 801st frame is dropped
    power = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2  # (FRAMES, N_FFT // 2 + 1)
    mel = np.log10(np.maximum(mel_filters() @ power.T, _LOG_FLOOR))
    mel = np.maximum(mel, mel.max() - _DYNAMIC_RANGE)
    return ((mel + 4.0) / 4.0).astype(np.float32)


class SmartTurn:
    """The Smart Turn model on onnxruntime (one thread) with a thread of its own for `end_probability`.

    `probability` blocks (tens of ms of CPU); `end_probability` runs it on the model's thread. One instance serves
    every stream of a process: inferences queue on its one thread, so they cost at most one core at a time."""

    def __init__(self, path: str | Path = MODEL_PATH, *, threads: int = 1) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"smart turn model not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # onnxruntime's CPU arena keeps every block it grew for the largest input seen and never frees it: off,
        # buffers come from malloc, which server.py trims when rooms close
        opts.enable_cpu_mem_arena = False
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.path = path
        self._session: Any = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.pending = 0  # `end_probability` calls queued or running

    def probability(self, audio: np.ndarray) -> float:
        """P(the turn is over) for 16 kHz mono audio ending at a pause (the last 8 s are heard)."""
        features = log_mel(audio)[None]
        out = self._session.run(None, {"input_features": features})
        return float(np.asarray(out[0]).reshape(-1)[0])

    async def end_probability(self, audio: np.ndarray) -> float:
        """`probability` on the model's thread; cancelling before it starts skips it."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn")
            executor = self._executor
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, self.probability, audio)
        finally:
            self.pending -= 1

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def load(setting: str | None) -> SmartTurn | None:
    """The model `TURN_AUDIO_MODEL` names: unset = the bundled file when present, `off` = none, else a path."""
    if setting is not None and setting.strip().lower() in {"off", "false", "0", "none", ""}:
        return None
    if setting is None:
        return SmartTurn() if MODEL_PATH.is_file() else None
    return SmartTurn(setting)
