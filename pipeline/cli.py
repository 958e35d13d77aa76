"""`python -m pipeline transcribe AUDIO`: run the live pipeline over an audio file, one JSON event per line.

    python -m pipeline transcribe interview.wav --channels-as-speakers --skills swift,kotlin --realtime
    python -m pipeline classify-questions --jurisdiction us < questions.txt

Events go to stdout (the same JSON the data channel carries); progress and logs go to stderr.
Undecodable input: a one-line error on stderr and exit status 2. `classify-questions` reads one question per line
and writes one `{"text", "topic", "score", "rephrase"}` object per non-empty line.

The argument parser, the run loop and `main` live here; the speech-to-text engine and the sentence embedder come
from the caller (`main(argv, make_stt, make_embedder)`): the top-level `cli` module builds them with the server's
adapters, so the pipeline imports no adapter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from domain.events import Speaker, StreamEvent, to_json
from pipeline.audio_file import DecodedAudio, read_audio
from pipeline.embeddings import SentenceEmbedder
from pipeline.guidance import JURISDICTIONS, default_detector
from pipeline.scheduler import SttScheduler
from pipeline.transcript import SpeechToText

log = logging.getLogger("pipeline")

FRAME_S = 0.02  # feed 20 ms chunks, the size WebRTC delivers


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline", description="Interview speech pipeline tools.")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("transcribe", help="stream an audio file through the pipeline; JSON events on stdout")
    t.add_argument("audio", help="any file PyAV decodes (wav, flac, mp3, ogg; any rate; mono or stereo)")
    t.add_argument(
        "--realtime", action="store_true", help="feed at real-time pace; add emitted_at_s to events"
    )
    t.add_argument("--stt", choices=("local", "openai"), default="local")
    t.add_argument("--model", help="local: CTranslate2 model directory (default: bundled tiny.en); "
                   "openai: model name (default whisper-1)")  # fmt: skip
    t.add_argument("--revision-model", help="local: model of the revisions: base, live, tiny.en or a directory "
                   "(default: base when installed, else live)")
    t.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"),
                   help="OpenAI-compatible server (env OPENAI_BASE_URL); the key comes from env OPENAI_API_KEY")  # fmt: skip
    t.add_argument("--skills", default="", help="comma-separated job skills: boosted in keyword relevance")
    t.add_argument("--vocabulary", default="", help="comma-separated terms of the interview (products, libraries, "
                   "acronyms: 'Kubernetes,PyTorch,gRPC'): every decode is told them, so they are spelt as given")
    t.add_argument("--channels-as-speakers", action="store_true",
                   help="stereo file: left = interviewer, right = candidate, two streams in parallel")  # fmt: skip
    t.add_argument("--role", default="candidate", help="speaker role of a single-stream file")
    t.add_argument("--vad", default="hybrid", choices=("hybrid", "webrtc", "silero"))
    t.add_argument("--partial-interval", type=float, default=1.0, help="seconds between partials (0 = none)")
    t.add_argument("--levels", action="store_true", help="also emit level events (10 per second per stream)")
    t.add_argument("--workers", type=int, default=1, help="speech-to-text worker threads")
    t.add_argument("--cpu-threads", type=int, default=1, help="local: threads per decode (1 is fastest on 2 cores)")
    t.add_argument("--window", type=float, default=5.0,
                   help="local: encoder window granularity in seconds (30 = Whisper's fixed 30 s window)")  # fmt: skip
    t.add_argument(
        "--beam-size", type=int, default=5, choices=range(1, 11), metavar="1-10",
        help="local: beam size of final decodes, as STT_BEAM_SIZE (partials use 1, revisions keep 5)"
    )
    t.add_argument("--no-prompt", dest="prompt", action="store_false",
                   help="do not prompt each decode with the speaker's recent confident finals")  # fmt: skip
    t.add_argument("--no-revise", dest="revise", action="store_false",
                   help="do not decode finals again with the conversation around them (no segment.revised)")
    t.add_argument("--no-crosstalk-guard", dest="crosstalk_guard", action="store_false",
                   help="do not mark finals that repeat another channel's overlapping, louder final")
    t.add_argument("--no-bleed-suppression", dest="bleed_suppression", action="store_false",
                   help="do not subtract the other channels' voices from each channel before decoding")
    t.add_argument("-v", "--verbose", action="store_true")
    c = sub.add_parser("classify-questions", help="protected-topic detector: one question per line on stdin, "
                       "one JSON object per line on stdout")  # fmt: skip
    c.add_argument("--jurisdiction", choices=JURISDICTIONS, default="none",
                   help="us: salary history is flagged too (banned in many US states); eu / none: it is not")  # fmt: skip
    c.add_argument("--batch", type=int, default=32, help="questions embedded per batch")
    c.add_argument("-v", "--verbose", action="store_true")
    return ap


def classify_questions(args: argparse.Namespace, embedder: SentenceEmbedder, lines: TextIO, out: TextIO) -> int:
    detector = default_detector(embedder, args.jurisdiction)
    batch: list[str] = []

    def flush() -> None:
        for verdict in detector.classify(batch):
            out.write(json.dumps(verdict.to_dict(), ensure_ascii=False) + "\n")
        out.flush()
        batch.clear()

    for line in lines:
        if line.strip():
            batch.append(line.strip())
        if len(batch) >= max(1, args.batch):
            flush()
    flush()
    return 0


@dataclass(slots=True)
class _Feed:
    speaker: Speaker
    pcm: np.ndarray  # interleaved int16
    channels: int


def plan_feeds(audio: DecodedAudio, args: argparse.Namespace, name: str) -> list[_Feed]:
    if args.channels_as_speakers:
        if audio.channels != 2:
            raise ValueError(
                f"--channels-as-speakers needs a stereo file; {name} has {audio.channels} channel(s)"
            )
        return [
            _Feed(Speaker("interviewer", "left channel", "left"), audio.channel(0), 1),
            _Feed(Speaker("candidate", "right channel", "right"), audio.channel(1), 1),
        ]
    return [_Feed(Speaker(args.role, name, "file"), audio.pcm, audio.channels)]


async def run(
    audio: DecodedAudio, args: argparse.Namespace, stt: SpeechToText, out: TextIO, name: str
) -> int:
    from pipeline.stream import Conversation, ParticipantStream, StreamConfig
    from pipeline.vocabulary import parse_terms

    feeds = plan_feeds(audio, args, name)
    # revisions wait for spare capacity in real time (live finals first); a file is not live: whenever a worker is free
    scheduler = SttScheduler(stt, workers=args.workers, revision_max_load=0.4 if args.realtime else math.inf)
    skills = tuple(s.strip() for s in args.skills.split(",") if s.strip())
    # not in real time, the file is fed in stream order (`settle()` after each chunk) and a revision waits for the
    # next turn however long its decode takes: the transcript does not depend on the machine's speed or load
    cfg = StreamConfig(vad=args.vad, partial_interval_s=args.partial_interval, skills=skills,
                       prompt_previous=args.prompt, revise=args.revise, crosstalk_guard=args.crosstalk_guard,
                       bleed_suppression=args.bleed_suppression,
                       revise_wait_s=StreamConfig.revise_wait_s if args.realtime else None,
                       emit_levels_every_s=0.1 if args.levels else 0.0)  # fmt: skip
    t_start = time.perf_counter()
    clock = (lambda: time.perf_counter() - t_start) if args.realtime else None
    counts: dict[str, int] = {}

    def emit(ev: StreamEvent) -> None:
        counts[ev.type] = counts.get(ev.type, 0) + 1
        out.write(to_json(ev) + "\n")
        out.flush()

    # the file is one conversation: its streams share the prompt and the context of revisions
    conversation = Conversation(cfg.prompt_max_chars, prompt_min_confidence=cfg.prompt_min_confidence,
                                vocabulary=parse_terms(args.vocabulary))
    streams = [
        ParticipantStream(f.speaker, scheduler, emit, in_rate=audio.rate, channels=f.channels, config=cfg,
                          clock=clock, conversation=conversation)  # fmt: skip
        for f in feeds
    ]
    frame = max(1, int(round(audio.rate * FRAME_S)))
    n_frames = -(-audio.frames // frame)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(n_frames):
        for f, s in zip(feeds, streams, strict=True):
            s.push(f.pcm[i * frame * f.channels : (i + 1) * frame * f.channels])
        if args.realtime:
            delay = t0 + (i + 1) * frame / audio.rate - loop.time()
            await asyncio.sleep(max(0.0, delay))
        else:
            await asyncio.sleep(0)  # let finished decodes be emitted while feeding
            for s in streams:
                await s.settle()
        if i % int(10 / FRAME_S) == 0 and i:
            lag = max(s.lag_s for s in streams)
            log.info("fed %.0f/%.0f s, lag %.1f s, stt queue %d", i * frame / audio.rate, audio.duration_s, lag,
                     scheduler.queue_depth)  # fmt: skip
    for s in streams:
        await s.aclose(drain=True)
    await scheduler.aclose()
    log.info("done in %.1f s: %s; scheduler %s; streams %s", time.perf_counter() - t_start, counts,
             scheduler.metrics(), [s.stats for s in streams])  # fmt: skip
    return 0


def main(argv: list[str] | None, make_stt: Callable[[argparse.Namespace], SpeechToText],
         make_embedder: Callable[[], SentenceEmbedder] | None = None) -> int:  # fmt: skip
    """Parse `argv` (None: the process's arguments), build the engine with `make_stt(args)` once the audio
    decoded, and run; the exit status. `classify-questions` builds its embedder with `make_embedder()`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "classify-questions":
        if make_embedder is None:
            print("error: no sentence embedder configured", file=sys.stderr)
            return 2
        try:
            return classify_questions(args, make_embedder(), sys.stdin, sys.stdout)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    log.setLevel(logging.INFO)  # progress lines (every 10 s of audio) and the summary always go to stderr
    name = Path(args.audio).name
    try:
        audio = read_audio(args.audio)
        if audio.rate < 4000:
            raise ValueError(f"{name}: sample rate {audio.rate} Hz is too low for speech")
        stt = make_stt(args)
        return asyncio.run(run(audio, args, stt, sys.stdout, name))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
