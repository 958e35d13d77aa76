"""Speech-to-text benchmark: decode cost, streaming latency, throughput, accuracy — each against offline
whole-file faster-whisper on the same model and audio.

    python -m benchmarks.stt [--quick] [--json PATH]

Sections (tables on stdout, progress on stderr):
1. decode: one utterance of 2/5/10 s, per engine configuration (Whisper's fixed 30 s window vs our shortened
   windows; beam 1 vs 5): median/p95 decode time and real-time factor; "offline" = faster-whisper defaults.
2. latency: the shared dialogues streamed in real time, one stream per channel (`--channels-as-speakers`):
   end of speech -> segment.final (vs the segmenter's speech end and vs the ground-truth turn end), and
   onset -> first segment.partial.
3. throughput: 1/2/4 concurrent streams of a dialogue pushed as fast as possible through one scheduler, vs
   offline whole-file decoding of the same audio.
4. accuracy: WER of the streamed transcript (live finals, and with their revisions) vs offline whole-file
   decoding (Whisper normaliser + jiwer), on eight dialogues (testing/dialogues.py; needs espeak-ng): the mono
   mix as one stream, and each participant's channel as its own stream of one conversation (as the server runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from adapters.stt_whisper import LocalWhisper, revision_model_dir
from benchmarks.report import environment, format_environment, percentile, print_table, progress_printer
from domain.events import SegmentEvent, Speaker, StreamEvent
from pipeline.audio_file import read_audio
from pipeline.scheduler import SttScheduler
from testing.data import JFK_AUDIO, SHARED_DATA
from testing.data import SHARED_DIALOGUES as DIALOGUES
from testing.dialogues import dialogue_set
from testing.text import transcript_of, wer

DATA = SHARED_DATA
log = logging.getLogger("benchmarks.stt")


progress = progress_printer("stt")


# ----------------------------------------------------------------------------------------------- 1. decode


def bench_decode(reps: int) -> list[dict[str, Any]]:
    jfk = read_audio(JFK_AUDIO, rate=16000, mono=True).pcm
    dlg = read_audio(DATA / "mobile_mixed.wav", rate=16000, mono=True).pcm
    clips = {2: dlg[int(15.1 * 16000) : int(17.3 * 16000)], 5: jfk[: 5 * 16000], 10: jfk[: 10 * 16000]}
    configs: list[tuple[str, dict[str, Any]]] = [
        ("offline faster-whisper defaults (30 s window, beam 5)", {}),
        ("ours: 30 s window, beam 5", {"window_s": None, "beam_size": 5}),
        ("ours: 10 s window, beam 5", {"window_s": 10.0, "beam_size": 5}),
        ("ours: 5 s window, beam 5 (default)", {"window_s": 5.0, "beam_size": 5}),
        ("ours: 5 s window, beam 1", {"window_s": 5.0, "beam_size": 1}),
    ]
    rows = []
    base = LocalWhisper()
    for name, cfg in configs:
        stt = LocalWhisper(**cfg) if cfg else base
        for seconds, clip in clips.items():
            times = []
            text = ""
            for _ in range(reps + 1):
                t0 = time.perf_counter()
                if cfg:
                    text = stt.transcribe(clip).text
                else:
                    segs, _ = base._whisper.transcribe(clip.astype(np.float32) / 32768, language="en")
                    text = " ".join(s.text for s in segs).strip()
                times.append(time.perf_counter() - t0)
            times = times[1:]  # the first call warms caches
            rows.append({"config": name, "utterance_s": seconds, "p50_s": statistics.median(times),
                         "p95_s": percentile(times, 95), "rtf": statistics.median(times) / seconds, "text": text})  # fmt: skip
            progress(f"decode {name} {seconds}s: {statistics.median(times):.3f}s")
    return rows


# ----------------------------------------------------------------------------------------- stream drivers


async def stream_file(
    stt: Any, pcms: list[np.ndarray], rate: int, *, realtime: bool, workers: int = 1, partials: bool = True,
    one_conversation: bool = True, revise: bool = True,
) -> tuple[list[list[StreamEvent]], float, dict[str, Any]]:
    """Push each mono pcm as its own participant stream; return per-stream events, wall time, scheduler stats.
    `one_conversation`: the streams are the participants of one room (they share the prompt and revision
    context); else independent rooms."""
    from pipeline.stream import Conversation, ParticipantStream, StreamConfig

    sched = SttScheduler(stt, workers=workers, revision_max_load=0.4 if realtime else math.inf)
    shared = Conversation() if one_conversation else None
    t_start = time.perf_counter()
    clock = (lambda: time.perf_counter() - t_start) if realtime else None
    events: list[list[StreamEvent]] = [[] for _ in pcms]
    cfg = StreamConfig(emit_levels_every_s=0, partial_interval_s=1.0 if partials else 0, revise=revise)
    streams = [
        ParticipantStream(
            Speaker("candidate", f"s{i}", f"s{i}"),
            sched,
            events[i].append,
            in_rate=rate,
            channels=1,
            config=cfg,
            clock=clock,
            conversation=shared,
        )  # fmt: skip
        for i in range(len(pcms))
    ]
    frame = rate // 50
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    n = max(p.size for p in pcms)
    for k, i in enumerate(range(0, n, frame)):
        for s, p in zip(streams, pcms, strict=True):
            if i < p.size:
                s.push(p[i : i + frame])
        if realtime:
            await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - loop.time()))
        else:
            await asyncio.sleep(0)
    for s in streams:
        await s.aclose()
    await sched.aclose()
    metrics = sched.metrics() | {"revision_busy_s": sched.stats.busy_by_kind["revision"],
                                 "revision_decodes": sched.stats.jobs_by_kind["revision"]}
    return events, time.perf_counter() - t_start, metrics


# ---------------------------------------------------------------------------------------------- 2. latency


def bench_latency(stt: Any, names: tuple[str, ...], workers: int = 1) -> dict[str, Any]:
    to_final: list[float] = []
    to_final_gt: list[float] = []
    to_partial: list[float] = []
    to_revision: list[float] = []
    finals_seen = 0
    per_turn = []
    for name in names:
        gt = json.loads((DATA / f"{name}.json").read_text())
        audio = read_audio(DATA / f"{name}.stereo.wav")
        progress(f"latency: streaming {name} in real time ({audio.duration_s:.0f} s)")
        events, _, _ = asyncio.run(
            stream_file(stt, [audio.channel(0), audio.channel(1)], audio.rate, realtime=True, workers=workers)
        )
        for ch, role in enumerate(("interviewer", "candidate")):
            segs = [e for e in events[ch] if isinstance(e, SegmentEvent) and not e.revision]
            emitted = {e.seq: e.emitted_at_s for e in segs if e.final}
            finals_seen += len(emitted)
            for e in events[ch]:  # final -> its revision (the next turn is waited for: it is context)
                if isinstance(e, SegmentEvent) and e.revision and e.emitted_at_s is not None:
                    to_revision.append(e.emitted_at_s - (emitted.get(e.seq) or e.emitted_at_s))
            for turn in (t for t in gt["turns"] if t["speaker"] == role):
                fin = [s for s in segs if s.final and s.start_s < turn["end_s"] and s.end_s > turn["start_s"]]
                part = [
                    s for s in segs if not s.final and s.end_s > turn["start_s"] and s.start_s < turn["end_s"]
                ]
                if not fin:
                    continue
                last = max(fin, key=lambda s: s.end_s)
                assert last.emitted_at_s is not None
                to_final.append(last.emitted_at_s - last.end_s)
                to_final_gt.append(last.emitted_at_s - turn["end_s"])
                first = min((s.emitted_at_s for s in part if s.emitted_at_s is not None), default=None)
                if first is not None:
                    to_partial.append(first - turn["start_s"])
                per_turn.append({"dialogue": name, "speaker": role, "turn_s": turn["end_s"] - turn["start_s"],
                                 "final_after_speech_end_s": to_final[-1], "final_after_gt_end_s": to_final_gt[-1],
                                 "first_partial_after_onset_s": None if first is None else first - turn["start_s"]})  # fmt: skip
    return {
        "final_p50_s": percentile(to_final, 50), "final_p95_s": percentile(to_final, 95),
        "final_gt_p50_s": percentile(to_final_gt, 50), "final_gt_p95_s": percentile(to_final_gt, 95),
        "partial_p50_s": percentile(to_partial, 50), "partial_p95_s": percentile(to_partial, 95),
        "turns": len(to_final), "turns_with_partial": len(to_partial), "per_turn": per_turn,
        "revised": len(to_revision), "finals": finals_seen,
        "revision_p50_s": percentile(to_revision, 50) if to_revision else None,
        "revision_p95_s": percentile(to_revision, 95) if to_revision else None,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------- 3. throughput


def bench_throughput(
    stt: LocalWhisper, counts: tuple[int, ...], workers: tuple[int, ...]
) -> list[dict[str, Any]]:
    audio = read_audio(DATA / "mobile_mixed.wav", rate=16000, mono=True)
    rows = []
    t0 = time.perf_counter()
    segs, _ = stt._whisper.transcribe(audio.pcm.astype(np.float32) / 32768, language="en")
    list(segs)
    offline_s = time.perf_counter() - t0
    for n in counts:
        rows.append({"streams": n, "mode": "offline whole-file, sequential", "workers": 1, "wall_s": offline_s * n,
                     "audio_s": audio.duration_s * n, "x_realtime": audio.duration_s / offline_s, "finals": None})  # fmt: skip
        for w, revise in [(w, False) for w in workers] + [(max(workers), True)]:
            progress(f"throughput: {n} stream(s), {w} worker(s){', with revisions' if revise else ''}")
            events, wall, metrics = asyncio.run(
                stream_file(stt, [audio.pcm] * n, audio.rate, realtime=False, workers=w, partials=False,
                            one_conversation=False, revise=revise)
            )
            finals = sum(1 for ev in events for e in ev if isinstance(e, SegmentEvent) and e.final and not e.revision)
            mode = "streaming + revisions (waited for)" if revise else "streaming, live finals"
            rows.append({"streams": n, "mode": mode, "workers": w, "wall_s": wall,
                         "audio_s": audio.duration_s * n, "x_realtime": audio.duration_s * n / wall,
                         "finals": finals})  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------- 4. accuracy


def bench_accuracy(stt: LocalWhisper, quick: bool) -> list[dict[str, Any]]:
    rows = []
    dialogues = dialogue_set()
    if quick:
        dialogues = dialogues[:2]
    cases = [(name, folder, mode) for name, folder in dialogues for mode in ("mixed", "per participant")]
    cases += [(f"{d}.snr10", DATA, "mixed") for d in DIALOGUES]
    for name, folder, mode in cases:
        gt = json.loads((folder / f"{name}.json").read_text())
        ref = " ".join(t["text"] for t in gt["turns"])
        mono = read_audio(folder / f"{name}.wav", rate=16000, mono=True)
        segs, _ = stt._whisper.transcribe(mono.pcm.astype(np.float32) / 32768, language="en")
        offline = " ".join(s.text for s in segs)
        if mode == "mixed":
            pcms, rate = [mono.pcm], mono.rate
        else:
            stereo = read_audio(folder / f"{name}.stereo.wav")
            pcms, rate = [stereo.channel(0), stereo.channel(1)], stereo.rate
        events, _, metrics = asyncio.run(stream_file(stt, pcms, rate, realtime=False, partials=False))
        wire = [e.to_dict() for evs in events for e in evs if isinstance(e, SegmentEvent) and e.final]
        live, revised = transcript_of(wire, revised=False), transcript_of(wire)
        fin = [e for evs in events for e in evs if isinstance(e, SegmentEvent) and e.final and not e.revision]
        n_final, n_halluc = len(fin), sum(e.hallucination for e in fin)
        n_rev = sum(1 for evs in events for e in evs if isinstance(e, SegmentEvent) and e.revision)
        rows.append({"audio": name, "streams": mode, "offline_wer": wer(ref, offline),
                     "live_wer": wer(ref, live), "revised_wer": wer(ref, revised),
                     "segments": n_final, "revised": n_rev, "hallucinations": n_halluc,
                     "revision_decodes": metrics["revision_decodes"],
                     "revision_busy_s": round(metrics["revision_busy_s"], 3)})  # fmt: skip
        progress(f"accuracy {name} ({mode}): live {rows[-1]['live_wer']:.3f} revised {rows[-1]['revised_wer']:.3f}"
                 f" offline {rows[-1]['offline_wer']:.3f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write all results to this JSON file")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, one dialogue for latency")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--revision-model", default="auto",
                    help="model of the revisions, as REVISION_MODEL: base, live, tiny.en or a CTranslate2 directory "
                    "(auto: base when installed, else the live model); Whisper base is joined into --models-dir")
    ap.add_argument("--models-dir", type=Path, default=Path("data") / "models",
                    help="where Whisper base is joined on first use (data/models, as DATA_DIR)")
    ap.add_argument("--beam", type=int, default=5, choices=range(1, 11), metavar="1-10",
                    help="beam of the live finals and speculative decodes in the latency, throughput and accuracy "
                    "sections, as STT_BEAM_SIZE (5); revisions keep 5, the decode section compares its own")
    ap.add_argument("--only", choices=("decode", "latency", "throughput", "accuracy"), action="append",
                    help="run only these sections (repeatable; default all)")
    args = ap.parse_args()
    sections = set(args.only or ("decode", "latency", "throughput", "accuracy"))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if not DATA.is_dir():
        sys.exit(f"test audio missing: {DATA}")
    env = environment(("openai", "vaderSentiment", "jiwer"))
    print(format_environment(env))
    print("Note: timings on a shared 2-core machine are noisy; compare rows of one run, not runs.\n")
    reps = 2 if args.quick else args.reps
    revision_model = revision_model_dir(args.revision_model, args.models_dir)
    stt = LocalWhisper(revision_model=revision_model, beam_size=args.beam)
    print(f"Revisions decode with {stt.revision_model or stt.model} (beam {stt.revision_beam_size}); live finals with"
          f" {stt.model} (beam {stt.beam_size}).\n")
    decode: list[dict[str, Any]] = []
    latency: dict[str, Any] = {}
    throughput: list[dict[str, Any]] = []
    accuracy: list[dict[str, Any]] = []
    if "decode" in sections:
        decode = bench_decode(reps)
        _print_decode(decode)
    if "latency" in sections:
        latency = _run_latency(args.quick, revision_model, args.beam)
        _print_latency(latency)
    if "throughput" in sections:
        throughput = bench_throughput(stt, (1, 2, 4), (1, 2))
        _print_throughput(throughput)
    if "accuracy" in sections:
        if stt.revision_model:  # load (and join) the revision model now, not inside the first revision's cost
            silence = np.zeros(16000, np.int16)
            stt.revise(silence, context=silence, context_text="Hello.")
        accuracy = bench_accuracy(stt, args.quick)
        _print_accuracy(accuracy)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "revision_model": stt.revision_model or stt.model,
                                         "beam": stt.beam_size, "revision_beam": stt.revision_beam_size,
                                         "decode": decode, "latency": latency, "throughput": throughput,
                                         "accuracy": accuracy}, indent=2))  # fmt: skip
        progress(f"wrote {args.json}")


def _print_decode(decode: list[dict[str, Any]]) -> None:
    print("## Decode one utterance (local tiny.en int8, 1 thread)\n")
    print_table([[r["config"], r["utterance_s"], r["p50_s"], r["p95_s"], r["rtf"]] for r in decode],
                ["engine configuration", "utterance s", "p50 s", "p95 s", "RTF"])  # fmt: skip



def _run_latency(quick: bool, revision_model: Any, beam: int) -> dict[str, Any]:
    # the server's defaults: STT_WORKERS=2 child processes (STT_SUBPROCESS), STT_CPU_THREADS=1
    from adapters.stt_process import WhisperProcesses

    procs = WhisperProcesses(processes=2, cpu_threads=1, revision_model=revision_model, beam_size=beam)
    try:
        return bench_latency(procs, DIALOGUES[:1] if quick else DIALOGUES, workers=2)
    finally:
        procs.close()


def _print_latency(latency: dict[str, Any]) -> None:
    print(
        f"\n## Streaming latency, real time, 2 streams (--channels-as-speakers), {latency['turns']} turns,"
        " server defaults (2 STT worker processes, 1 thread each)\n"
    )
    print_table(
        [
            ["end of speech (segmenter) -> segment.final", latency["final_p50_s"], latency["final_p95_s"], "0.6 / 0.9"],
            ["end of speech (ground truth) -> segment.final", latency["final_gt_p50_s"], latency["final_gt_p95_s"],
             "0.6 / 0.9"],
            ["onset (ground truth) -> first segment.partial", latency["partial_p50_s"], latency["partial_p95_s"],
             "1.0 / -"],
            [f"segment.final -> segment.revised ({latency['revised']} of {latency['finals']} finals revised)",
             latency["revision_p50_s"], latency["revision_p95_s"], "-"],
        ],
        ["latency", "p50 s", "p95 s", "target p50 / p95"],
    )  # fmt: skip


def _print_throughput(throughput: list[dict[str, Any]]) -> None:
    print("\n## Throughput (mobile_mixed.wav, 37 s per stream, pushed as fast as possible)\n")
    print_table([[r["streams"], r["mode"], r["workers"], r["wall_s"], r["x_realtime"], r["finals"]] for r in throughput],
                ["streams", "mode", "workers", "wall s", "x real time", "finals"])  # fmt: skip


def _print_accuracy(accuracy: list[dict[str, Any]]) -> None:
    print("\n## Accuracy: streamed transcript vs offline whole-file decoding of the mono mix (same model)\n")
    print_table([[r["audio"], r["streams"], r["offline_wer"], r["live_wer"], r["revised_wer"], r["segments"],
                  r["revised"], r["hallucinations"]] for r in accuracy],
                ["audio", "streams", "offline WER", "live finals WER", "with revisions WER", "segments", "revised",
                 "hallucinated"])  # fmt: skip
    clean = [r for r in accuracy if not r["audio"].endswith(".snr10")]
    summary = []
    for mode in ("mixed", "per participant"):
        rs = [r for r in clean if r["streams"] == mode]
        off = statistics.fmean(r["offline_wer"] for r in rs)
        live = statistics.fmean(r["live_wer"] for r in rs)
        rev = statistics.fmean(r["revised_wer"] for r in rs)
        summary.append([mode, len(rs), off, live, f"{live - off:+.4f}", rev, f"{rev - off:+.4f}", "+0.02"])
    print("\nMean over the clean dialogues (target: streamed <= offline + 0.02):\n")
    print_table(summary, ["streams", "dialogues", "offline WER", "live WER", "live gap", "revised WER", "revised gap",
                          "target gap"])  # fmt: skip
    ratio = []
    for label, rs in (("clean", clean), ("10 dB", [r for r in accuracy if r["audio"].endswith(".snr10")])):
        if not rs:
            continue
        off = statistics.fmean(r["offline_wer"] for r in rs)
        rev = statistics.fmean(r["revised_wer"] for r in rs)
        decodes = sum(r["revision_decodes"] for r in rs)
        cost = sum(r["revision_busy_s"] for r in rs) / decodes if decodes else None
        ratio.append([label, len(rs), off, rev, "n/a" if off == 0 else f"{rev / off:.2f}", "0.60",
                      f"{decodes} of {sum(r['segments'] for r in rs)}", sum(r["revised"] for r in rs),
                      "n/a" if cost is None else round(cost, 3)])
    print("\nTranscript with revisions against the live model's offline WER (issue 17 target: <= 0.6x):\n")
    print_table(ratio, ["audio", "cases", "offline WER (live model)", "with revisions WER", "ratio", "target",
                        "finals revision-decoded", "changed", "s per revision"])  # fmt: skip


if __name__ == "__main__":
    main()
