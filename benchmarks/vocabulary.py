"""The interview's vocabulary: recall of its terms with and without it, terms inserted where nobody said them, WER.

    python -m benchmarks.vocabulary [--repeats 2] [--no-revise] [--json PATH]

Each dialogue of `testing.dialogues.VOCABULARY` (rare products, libraries, acronyms: Kubernetes, PyTorch, gRPC,
FastAPI, ...; synthesized with espeak-ng into a cache directory on first use) is transcribed like
`python -m pipeline transcribe X.stereo.wav --channels-as-speakers --vocabulary TERMS`, in this process, with its
interview's vocabulary (the dialogue's `keywords`: some of its terms are never said) and without. Where the terms
are not said at all, the two shared dialogues are transcribed with every dialogue's terms as their vocabulary, and
20 s of white noise and of silence with them too. Per setting:

* term recall: occurrences of the vocabulary's terms in the ground truth that the transcript has (case and
  punctuation aside; `testing.text.term_scores`), live finals with their revisions;
* insertions: occurrences of a vocabulary term beyond the ground truth's (a term written where it was not said),
  over all files (target: none more than without the vocabulary);
* WER of the vocabulary dialogues and of the shared ones.

Settings: `off` (no vocabulary), `on` (the default: vocabulary and the hint guards of `pipeline.guards`), and
`on, no guard` (the vocabulary without the guards, to show what they catch). Files are fed in stream order
(`settle()`), so a run's counts do not depend on the machine's load; `--repeats` runs it all again to show that.

Then what a vocabulary costs a live final: every turn of the vocabulary dialogues decoded as a final (tiny.en,
beam 5, prompted with the turns before it) without a vocabulary, with its dialogue's 8-9 terms and with 30 terms
(the default maximum), in turn, `--cost-repeats` times; p50 and p95 of the decode time (`--cost-only`: just this).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from adapters.stt_engines import build_stt
from adapters.stt_whisper import LocalWhisper
from benchmarks.report import environment, format_environment, percentile, print_table, progress_printer
from cli import EngineSettings
from pipeline import cli as pipeline_cli
from pipeline.audio_file import read_audio
from pipeline.transcript import SpeechToText
from testing.data import SHARED_DATA, SHARED_DIALOGUES
from testing.dialogues import VOCABULARY, vocabulary_dialogue_set
from testing.text import corpus_wer, term_scores, transcript_of

progress = progress_printer("vocabulary")
ALL_TERMS = tuple(dict.fromkeys(t for keywords, _ in VOCABULARY.values() for t in keywords))
SETTINGS = ("off", "on", "on, no guard")


def transcribe(path: Path, stt: SpeechToText, terms: tuple[str, ...], *, revise: bool, stereo: bool = True,
               ) -> list[dict[str, Any]]:
    """The events `python -m pipeline transcribe PATH [--channels-as-speakers] --vocabulary TERMS` prints."""
    argv = ["transcribe", str(path), "--vocabulary", ",".join(terms)]
    if stereo:
        argv.append("--channels-as-speakers")
    if not revise:
        argv.append("--no-revise")
    args = pipeline_cli.build_parser().parse_args(argv)
    out = io.StringIO()
    asyncio.run(pipeline_cli.run(read_audio(path), args, stt, out, path.name))
    return [json.loads(line) for line in out.getvalue().splitlines()]


def noise_files(folder: Path, seconds: float = 20.0) -> list[tuple[str, Path]]:
    """White noise (about -30 dBFS, what a poor microphone hisses) and digital silence, 16 kHz mono WAVs."""
    rng = np.random.default_rng(7)
    files = []
    for name, x in (("white_noise", rng.normal(0, 1000, int(seconds * 16000))),
                    ("silence", np.zeros(int(seconds * 16000)))):
        path = folder / f"{name}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(np.clip(x, -32768, 32767).astype("<i2").tobytes())
        files.append((name, path))
    return files


def run_setting(stt: SpeechToText, vocab: bool, files: list[dict[str, Any]], revise: bool) -> dict[str, Any]:
    said = found = inserted = inserted_unsaid = 0
    pairs: dict[str, list[tuple[str, str]]] = {"vocabulary": [], "shared": []}
    examples: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for f in files:
        terms = f["terms"] if vocab else ()
        events = transcribe(f["path"], stt, terms, revise=revise, stereo=f["stereo"])
        hyp = transcript_of(events)
        score = term_scores(f["reference"], hyp, f["terms"])
        said += score["said"]
        found += score["found"]
        inserted += score["inserted"]
        if f["group"] != "vocabulary":
            inserted_unsaid += score["inserted"]
        if f["group"] in pairs:
            pairs[f["group"]].append((f["reference"], hyp))
        if score["inserted"] or score["found"] < score["said"]:
            examples.append({"file": f["name"], "transcript": hyp, **score})
        progress(f"{f['name']} vocabulary={'on' if vocab else 'off'}: {score}")
    return {"said": said, "found": found, "recall": found / said if said else None, "inserted": inserted,
            "inserted_where_unsaid": inserted_unsaid,
            "wer_vocabulary": corpus_wer(pairs["vocabulary"]), "wer_shared": corpus_wer(pairs["shared"]),
            "wall_s": time.perf_counter() - t0, "examples": examples}  # fmt: skip


def decode_cost(repeats: int) -> list[list[Any]]:
    """p50 / p95 decode time of the vocabulary dialogues' turns as finals, per vocabulary size (one row each)."""
    stt = LocalWhisper()
    many = tuple(dict.fromkeys([*ALL_TERMS, "Terragrunt", "Pulumi", "Nomad"]))[:30]
    turns: list[tuple[np.ndarray, str | None, tuple[str, ...]]] = []
    for name, folder in vocabulary_dialogue_set():
        truth = json.loads((folder / f"{name}.json").read_text())
        pcm = read_audio(folder / f"{name}.wav", rate=16000, mono=True).pcm
        before: list[str] = []
        for t in truth["turns"]:
            audio = pcm[int((t["start_s"] - 0.3) * 16000): int((t["end_s"] + 0.5) * 16000)]
            turns.append((audio, " ".join(before)[-200:] or None, tuple(VOCABULARY[name][0])))
            before.append(t["text"])
    times: dict[str, list[float]] = {"none": [], "dialogue's 8-9 terms": [], "30 terms": []}
    for _ in range(repeats):
        for audio, prompt, terms in turns:  # the settings in turn, so load drifts hit them alike
            for label, vocab in (("none", ()), ("dialogue's 8-9 terms", terms), ("30 terms", many)):
                times[label].append(stt.transcribe(audio, prompt=prompt, vocabulary=vocab).decode_s)
    return [[label, len(ts), round(percentile(ts, 50) * 1000), round(percentile(ts, 95) * 1000)]
            for label, ts in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1, help="run everything this many times")
    ap.add_argument("--no-revise", dest="revise", action="store_false", help="live finals only (no revisions)")
    ap.add_argument("--json", type=Path, help="write all results to this JSON file")
    ap.add_argument("--cost-repeats", type=int, default=3, help="decodes of each turn per vocabulary size")
    ap.add_argument("--cost-only", action="store_true", help="only the decode cost")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    if not SHARED_DATA.is_dir():
        sys.exit(f"test audio missing: {SHARED_DATA}")
    files: list[dict[str, Any]] = []
    for name, folder in vocabulary_dialogue_set():
        truth = json.loads((folder / f"{name}.json").read_text())
        files.append({"name": name, "path": folder / f"{name}.stereo.wav", "terms": tuple(VOCABULARY[name][0]),
                      "reference": " ".join(t["text"] for t in truth["turns"]), "group": "vocabulary",
                      "stereo": True})  # fmt: skip
    for name in SHARED_DIALOGUES:
        truth = json.loads((SHARED_DATA / f"{name}.json").read_text())
        files.append({"name": name, "path": SHARED_DATA / f"{name}.stereo.wav", "terms": ALL_TERMS,
                      "reference": " ".join(t["text"] for t in truth["turns"]), "group": "shared", "stereo": True})
    tmp = Path(tempfile.mkdtemp(prefix="vocabulary-bench-"))
    for name, path in noise_files(tmp):
        files.append({"name": name, "path": path, "terms": ALL_TERMS, "reference": "", "group": "noise",
                      "stereo": False})

    env = environment(("faster-whisper", "ctranslate2", "jiwer"))
    print(format_environment(env))
    if args.cost_only:
        print("\n## Decode time of a final (tiny.en, beam 5, 1 thread) by vocabulary\n")
        print_table(decode_cost(args.cost_repeats), ["vocabulary", "decodes", "p50 ms", "p95 ms"])
        return
    parser = pipeline_cli.build_parser()
    engine_args = parser.parse_args(["transcribe", "-"])
    options = {"num_workers": 1, "window_s": engine_args.window}  # the beam: engine_args.beam_size, in the settings
    engines = {guard: build_stt(EngineSettings.from_args(engine_args), hint_guard=guard, **options)
               for guard in (True, False)}  # fmt: skip
    results: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for setting in SETTINGS:
            r = run_setting(engines[setting != "on, no guard"], setting != "off", files, args.revise)
            results.append({"repeat": repeat + 1, "setting": setting, **r})

    rows = [[r["repeat"], r["setting"], f"{r['found']}/{r['said']}", r["recall"], r["inserted"],
             r["inserted_where_unsaid"], r["wer_vocabulary"], r["wer_shared"], round(r["wall_s"], 1)]
            for r in results]  # fmt: skip
    said_files = sum(f["group"] == "vocabulary" for f in files)
    print(f"\n## Vocabulary: {said_files} dialogues of rare terms (their interview's vocabulary), "
          f"{len(SHARED_DIALOGUES)} shared dialogues + white noise + silence (every term, none said); "
          f"{'live finals with revisions' if args.revise else 'live finals'}\n")
    print_table(rows, ["run", "vocabulary", "terms found", "term recall", "terms inserted", "… where none said",
                       "WER vocab dialogues", "WER shared", "wall s"])  # fmt: skip
    print("\ntargets: recall +0.20 with the vocabulary; no more insertions than without it")
    print("\n## Decode time of a final (tiny.en, beam 5, 1 thread) by vocabulary\n")
    cost = decode_cost(args.cost_repeats)
    print_table(cost, ["vocabulary", "decodes", "p50 ms", "p95 ms"])
    for r in results:
        if r["repeat"] == 1:
            for ex in r["examples"]:
                if ex["inserted"]:
                    print(f"inserted ({r['setting']}): {ex['file']}: {ex['transcript']}")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": results, "decode_cost": cost}, indent=2,
                                        default=str))
        progress(f"wrote {args.json}")


if __name__ == "__main__":
    main()
