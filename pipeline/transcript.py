"""Speech-to-text as the pipeline sees it: the transcript types, the errors and the engine ports.

* `SpeechToText` is the port the pipeline decodes through; its implementations are the adapters'
  `LocalWhisper` (default, in-process faster-whisper on CPU), `WhisperProcesses` (the same in child
  processes) and `OpenAITranscriber` (any OpenAI-compatible server). `transcribe` is blocking and is only
  ever called from the scheduler's worker threads (`pipeline.scheduler`).
* `RevisingSpeechToText` is an engine that can also decode an utterance again with the conversation around it.
* Engines raise `SttError` (with a code the stream reports as an `error` event); `as_float_audio` is the one
  validation of the audio every engine and the scheduler apply at their edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from domain.events import Word

SAMPLE_RATE = 16000


class SttError(Exception):
    """A speech-to-text engine failed on one request (the stream turns it into an `error` event)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SttOverloaded(SttError):
    def __init__(self, message: str) -> None:
        super().__init__("stt_overloaded", message)


@dataclass(slots=True)
class Transcript:
    """The result of decoding one piece of audio. Word times are relative to the start of that audio.

    `text == ""` means the guards found no speech (silence, noise); `hallucination=True` means there is text
    but it is likely invented (shown, never analysed); `reason` says which guard fired.
    """

    text: str
    words: list[Word] = field(default_factory=list)
    confidence: float = 0.0
    no_speech_prob: float = 0.0
    language: str = "en"
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    hallucination: bool = False
    reason: str = ""
    audio_s: float = 0.0
    decode_s: float = 0.0
    redecoded: bool = False  # decoded a second time because the first result stopped short of the audio
    # set by the scheduler (pipeline.scheduler): seconds the request waited for a worker, and the worker's wall time
    queue_s: float = 0.0
    run_s: float = 0.0


class SpeechToText(Protocol):
    """`transcribe(audio, prompt=)`. An engine that can be told an interview's vocabulary (`pipeline.vocabulary`)
    also takes `vocabulary: tuple[str, ...]` (and `revise` too); the scheduler passes it only when there is one."""

    engine: str
    model: str

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcript: ...


class RevisingSpeechToText(SpeechToText, Protocol):
    """An engine that can decode an utterance again after the conversation's preceding audio (`revise`)."""

    def revise(
        self, audio: np.ndarray, *, context: np.ndarray, context_text: str, after: np.ndarray | None = None
    ) -> Transcript: ...


def as_float_audio(audio: np.ndarray) -> np.ndarray:
    """Validate 16 kHz mono audio (int16 or float32) and return float32 in [-1, 1]."""
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"audio must be a numpy array, got {type(audio).__name__}")
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono 16 kHz, got shape {audio.shape}")
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    if audio.dtype == np.float32:
        if audio.size and not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or infinity")
        return audio
    raise ValueError(f"audio must be int16 or float32, got {audio.dtype}")
