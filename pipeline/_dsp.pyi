# Type stub for the Cython extension built from csrc/_dsp.pyx.
from collections.abc import Callable
from typing import Any

import numpy as np

HYBRID: int
WEBRTC: int
SILERO: int
STATUS_NONFINITE: int

class Polyphase:
    L: int
    M: int
    K: int
    D: int
    base: int
    n_in: int
    n_out: int
    clipped: int
    def __init__(self, bank: np.ndarray, L: int, M: int, D: int) -> None: ...
    def reset(self) -> None: ...
    def process_i16(self, x: np.ndarray, stereo: bool) -> np.ndarray: ...
    def process_f32(self, x: np.ndarray) -> np.ndarray | int: ...
    def flush_f32(self) -> np.ndarray: ...
    def flush_i16(self) -> np.ndarray: ...
    @property
    def held_back(self) -> float: ...

class BandEnergy:
    snr_db: float
    energy: float
    band_energy: float
    peak: int
    def __init__(self, rate: float = ..., frame_s: float = ...) -> None: ...
    def reset(self) -> None: ...
    def process(self, x: np.ndarray) -> float: ...

def level_stats(x: np.ndarray) -> tuple[float, int, int]: ...

_Ready = list[tuple[int, int, int, int, np.ndarray]]

class SegCore:
    end_silence: int
    bstart: int
    samples_in: int
    discarded: int
    speech_samples: int
    frame_len: int
    in_utt: bool
    utt_start: int
    speech_start: int
    speech_end: int
    ready: _Ready
    def __init__(
        self, frame_len: int, pre_roll: int, end_silence: int, min_speech: int, max_len: int
    ) -> None: ...
    def push(self, x: np.ndarray, speech: bool, energy: float) -> None: ...
    def finish(self, tail: np.ndarray) -> None: ...
    def partial(self) -> tuple[int, np.ndarray] | None: ...

class VadCore:
    feat: BandEnergy
    t_on: float
    t_low: float
    t_stay: float
    t_stay_low: float
    speaking: bool
    raw: bool
    def __init__(
        self,
        kind: int,
        frame_len: int,
        wproc: Callable[..., Any] | None,
        whandle: Any,
        silero: Callable[[np.ndarray], bool] | None,
        t_on: float,
        t_low: float,
        t_stay: float,
        t_stay_low: float,
        hang_frames: int,
    ) -> None: ...
    def process(self, frame: np.ndarray) -> bool: ...

class FrontCore:
    vad: VadCore
    seg: SegCore
    last_sumsq: float
    last_peak: int
    last_n: int
    last_clipped: int
    def __init__(self, rs: Polyphase, stereo: bool, vad: VadCore, seg: SegCore) -> None: ...
    def push(self, pcm: np.ndarray) -> _Ready | None: ...
    def finish(self) -> _Ready: ...
