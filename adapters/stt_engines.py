"""Which speech-to-text engine to run: the one place that turns settings into an engine.

The server (`server.py`, settings from the environment) and the command line (`cli.py`, settings from its
arguments) both call `build_stt`. The engines are imported only when chosen: a local model costs seconds to load
and the OpenAI engine needs the `openai` package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pipeline.transcript import SpeechToText


class SttSettings(Protocol):
    """The settings `build_stt` reads, by their names in `server.Settings`."""

    @property
    def stt_engine(self) -> str: ...
    @property
    def stt_model(self) -> str | None: ...
    @property
    def revision_model(self) -> str | None: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def stt_workers(self) -> int: ...
    @property
    def stt_cpu_threads(self) -> int: ...
    @property
    def stt_beam_size(self) -> int: ...
    @property
    def stt_subprocess(self) -> bool: ...
    @property
    def openai_base_url(self) -> str | None: ...
    @property
    def openai_api_key(self) -> str | None: ...
    @property
    def openai_stt_model(self) -> str: ...
    @property
    def nats_url(self) -> str | None: ...
    @property
    def malloc_arenas(self) -> int: ...
    @property
    def malloc_trim(self) -> bool: ...


def build_stt(settings: SttSettings, **whisper_options: Any) -> SpeechToText:
    """The engine `settings` choose, ready to decode (blocking: loading a local model takes seconds).

    Reads from `settings`:

    * `stt_engine`: "local" (faster-whisper on this machine's CPU), "openai" (an OpenAI-compatible server) or
      "nats" (the `server.py stt-worker` processes on `nats_url`, `adapters.stt_nats`);
    * `stt_model`: local: CTranslate2 Whisper model directory (None: the bundled tiny.en);
    * `revision_model`: local: the model revisions decode with ("base", "live", "tiny.en", a directory; None:
      base when its packages are installed, else the live model; see `adapters.stt_whisper.revision_model_dir`),
      Whisper base joined once into `data_dir`/models;
    * `stt_subprocess`: local: decode in `stt_workers` child processes (`WhisperProcesses`), else in this
      process (`LocalWhisper`);
    * `stt_workers`: local with `stt_subprocess`: how many child processes;
    * `stt_cpu_threads`: local: CPU threads per decode;
    * `stt_beam_size`: local: the beam of finals and speculative decodes (revisions keep their own);
    * `openai_base_url` (None: api.openai.com), `openai_api_key`, `openai_stt_model`: the OpenAI engine's server,
      key and model name.

    `whisper_options` are more `LocalWhisper` options for the local engine (the command line's `window_s`,
    `num_workers`); the server leaves them at their defaults. A `stt_model` that is no CTranslate2
    model directory raises ValueError.
    """
    if settings.stt_engine == "openai":
        from adapters.stt_openai import OpenAITranscriber

        return OpenAITranscriber(base_url=settings.openai_base_url, api_key=settings.openai_api_key,
                                 model=settings.openai_stt_model)
    if settings.stt_engine == "nats":
        from adapters.stt_nats import NatsWhisper

        if not settings.nats_url:
            raise ValueError("STT_ENGINE=nats needs NATS_URL")
        return NatsWhisper(settings.nats_url, model=Path(settings.stt_model).name if settings.stt_model else "tiny.en")
    from adapters.stt_whisper import LocalWhisper, revision_model_dir

    revision_model = revision_model_dir(settings.revision_model, settings.data_dir / "models", settings.stt_model)
    if settings.stt_subprocess:
        from adapters.stt_process import STT_TRIM_IDLE_S, WhisperProcesses

        return WhisperProcesses(settings.stt_model, processes=settings.stt_workers,
                                cpu_threads=settings.stt_cpu_threads, revision_model=revision_model,
                                beam_size=settings.stt_beam_size, malloc_arenas=settings.malloc_arenas,
                                trim_idle_s=STT_TRIM_IDLE_S if settings.malloc_trim else None,
                                **whisper_options)  # fmt: skip
    return LocalWhisper(settings.stt_model, cpu_threads=settings.stt_cpu_threads, revision_model=revision_model,
                        beam_size=settings.stt_beam_size, **whisper_options)
