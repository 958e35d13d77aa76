"""The composition root of `python -m pipeline` (`server.py` is the service's): `pipeline.cli`'s command line with
the speech-to-text engine its arguments choose, built by the server's `adapters.stt_engines.build_stt`, and the
sentence embedder of `classify-questions` (`adapters.embeddings_onnx`)."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from adapters.stt_engines import build_stt
from pipeline import cli as pipeline_cli
from pipeline.embeddings import SentenceEmbedder
from pipeline.transcript import SpeechToText


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The speech-to-text settings `build_stt` reads (named as in `server.Settings`), from the command line."""

    stt_engine: str
    stt_model: str | None
    revision_model: str | None
    data_dir: Path
    stt_workers: int
    stt_cpu_threads: int
    stt_beam_size: int
    stt_subprocess: bool
    openai_base_url: str | None
    openai_api_key: str | None = field(repr=False)
    openai_stt_model: str
    nats_url: str | None = None  # STT_ENGINE=nats is the server's; the command line decodes here
    malloc_arenas: int = 2  # the server's defaults (read only with worker processes, which the CLI does not use)
    malloc_trim: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EngineSettings:
        return cls(
            stt_engine=args.stt,
            stt_model=args.model,
            revision_model=args.revision_model,
            data_dir=Path(os.environ.get("DATA_DIR", "./data")).expanduser(),  # where Whisper base is joined once
            stt_workers=args.workers,
            stt_cpu_threads=args.cpu_threads,
            stt_beam_size=args.beam_size,
            stt_subprocess=False,  # a file is decoded in this process, by `--workers` threads
            openai_base_url=args.base_url,
            openai_api_key=os.environ.get("OPENAI_API_KEY"),
            openai_stt_model=args.model or "whisper-1",
        )


def make_stt(args: argparse.Namespace) -> SpeechToText:
    """The engine of `python -m pipeline transcribe`'s arguments; the local one also takes its decode options."""
    return build_stt(EngineSettings.from_args(args), num_workers=args.workers,
                     window_s=None if args.window >= 30 else args.window)  # fmt: skip


def make_embedder() -> SentenceEmbedder:
    """The sentence embedder of `python -m pipeline classify-questions`: all-MiniLM-L6-v2 on one thread."""
    from adapters.embeddings_onnx import OnnxSentenceEmbedder

    return OnnxSentenceEmbedder(threads=1)


def main(argv: list[str] | None = None) -> int:
    # the local engine's model-load line is progress, shown without -v like `pipeline.cli`'s own lines
    logging.getLogger("adapters.stt_whisper").setLevel(logging.INFO)
    return pipeline_cli.main(argv, make_stt, make_embedder)
