"""Cross-talk benchmark: dialogues whose channels bleed into each other, transcribed one stream per channel
(`python -m pipeline transcribe X --channels-as-speakers`, run in this process) with three settings: nothing
(`off`), the cross-talk guard alone (`guard`), the guard and bleed suppression (`guard+suppression`, the default).

    python -m benchmarks.crosstalk [--quick] [--levels -10,-20,-30] [--settings off,guard,guard+suppression]
                                   [--json PATH]
    python -m benchmarks.crosstalk --cost     # what bleed suppression costs per decode, beside the decode

The dialogues are `testing.dialogues.dialogue_set()` (two shared, six synthesized; `--quick`: the two shared) and
their bleed versions from `testing.bleed` (the other channel added 10/20/30 dB lower, 20-80 ms later). Per bleed
level and guard setting, over all dialogues (`testing.bleed.score_crosstalk`):

* duplicates: pairs of unmarked finals of the two speakers, overlapping in time, one repeating >= 60 % of the
  other's words (target 0);
* lost turns: ground-truth turns without an unmarked final of their speaker (target 0);
* marked / corrected: finals sent marked `crosstalk`, and finals marked afterwards by a `segment.revised`;
* WER per participant of the unmarked finals (with their revisions), and its difference from the clean files'
  with the same setting (target: within 0.01).

`--cost`: `pipeline.bleed.suppress_bleed` on 1, 3 and 10 s of the shared dialogue's speech with the other voice
under it at -20 dB, and a tiny.en decode of the same audio, repeated (median and range).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import environment, format_environment, print_table, progress_printer
from cli import make_stt
from pipeline import cli as pipeline_cli
from pipeline.audio_file import read_audio
from pipeline.bleed import MAX_DELAY_S, RATE, suppress_bleed
from pipeline.dsp import Resampler
from pipeline.transcript import SpeechToText
from testing.bleed import LEVELS_DB, bleed_name, make_bleed, read_stereo, score_crosstalk
from testing.data import SHARED_DATA, SHARED_DIALOGUES
from testing.dialogues import dialogue_set
from testing.text import corpus_wer

progress = progress_printer("crosstalk")
ROLES = ("interviewer", "candidate")


# setting name -> (cross-talk guard, bleed suppression)
SETTINGS = {"off": (False, False), "guard": (True, False), "guard+suppression": (True, True)}


def transcribe(path: Path, stt: SpeechToText, guard: bool, suppression: bool = True) -> list[dict[str, Any]]:
    """The events `python -m pipeline transcribe PATH --channels-as-speakers` prints, as dicts."""
    argv = ["transcribe", str(path), "--channels-as-speakers"]
    if not guard:
        argv.append("--no-crosstalk-guard")
    if not suppression:
        argv.append("--no-bleed-suppression")
    args = pipeline_cli.build_parser().parse_args(argv)
    out = io.StringIO()
    asyncio.run(pipeline_cli.run(read_audio(path), args, stt, out, path.name))
    return [json.loads(line) for line in out.getvalue().splitlines()]


def run_condition(files: list[tuple[str, Path, Path]], stt: SpeechToText, setting: str) -> dict[str, Any]:
    """Transcribe and score every (name, audio, truth) file; totals over them."""
    dup, lost, marked, corrected = 0, 0, 0, 0
    pairs: dict[str, list[tuple[str, str]]] = {role: [] for role in ROLES}
    examples: list[Any] = []
    t0 = time.perf_counter()
    for name, audio, truth_path in files:
        score = score_crosstalk(transcribe(audio, stt, *SETTINGS[setting]), json.loads(truth_path.read_text()))
        dup += len(score["duplicates"])
        lost += len(score["lost_turns"])
        marked += score["marked"]
        corrected += score["corrected"]
        for role in ROLES:
            pairs[role].append(score["pairs"][role])
        examples += [{"file": name, "duplicate": d} for d in score["duplicates"][:2]]
        examples += [{"file": name, "lost": t} for t in score["lost_turns"]]
        progress(f"{name} {setting}: {len(score['duplicates'])} duplicates, "
                 f"{len(score['lost_turns'])} lost, {score['marked']}+{score['corrected']} marked")  # fmt: skip
    return {"files": len(files), "duplicates": dup, "lost_turns": lost, "marked": marked, "corrected": corrected,
            "wer": {role: corpus_wer(pairs[role]) for role in ROLES}, "wall_s": time.perf_counter() - t0,
            "examples": examples[:20]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write all results to this JSON file")
    ap.add_argument("--quick", action="store_true", help="the two shared dialogues only")
    ap.add_argument("--levels", default=",".join(str(v) for v in LEVELS_DB), help="bleed levels in dB")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"settings to compare, of {', '.join(SETTINGS)}")
    ap.add_argument("--cost", action="store_true", help="only the cost of bleed suppression per decode")
    args = ap.parse_args()
    settings = [v for v in args.settings.split(",") if v]
    if unknown := [v for v in settings if v not in SETTINGS]:
        ap.error(f"--settings: unknown {', '.join(unknown)}")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    levels = tuple(int(v) for v in args.levels.split(","))
    if not SHARED_DATA.is_dir():
        sys.exit(f"test audio missing: {SHARED_DATA}")
    sources = [(n, d) for n, d in dialogue_set() if not args.quick or n in SHARED_DIALOGUES]
    bleed_dir = make_bleed()
    env = environment(("jiwer",))
    print(format_environment(env))
    print("Note: a shared 2-core machine; wall times are noisy, the counts and WERs are not.\n")
    stt = make_stt(pipeline_cli.build_parser().parse_args(["transcribe", "-"]))
    if args.cost:
        cost(stt, args.json, env)
        return

    results: list[dict[str, Any]] = []
    for level in (None, *levels):
        files = [(n if level is None else bleed_name(n, level),
                  d / f"{n}.stereo.wav" if level is None else bleed_dir / f"{bleed_name(n, level)}.stereo.wav",
                  d / f"{n}.json") for n, d in sources]  # fmt: skip
        for setting in settings:
            r = run_condition(files, stt, setting)
            results.append({"level_db": level, "setting": setting, **r})

    def clean(setting: str) -> dict[str, Any]:
        return next(r for r in results if r["level_db"] is None and r["setting"] == setting)

    rows = []
    for r in results:
        base = clean(r["setting"])["wer"]
        delta = [f"{r['wer'][role] - base[role]:+.4f}" for role in ROLES]
        rows.append(["clean" if r["level_db"] is None else f"{r['level_db']} dB", r["setting"],
                     r["files"], r["duplicates"], r["lost_turns"], r["marked"], r["corrected"],
                     r["wer"]["interviewer"], r["wer"]["candidate"], " / ".join(delta), round(r["wall_s"], 1)])  # fmt: skip
    print(f"## Cross-talk: {len(sources)} dialogues, each channel's partner added at the level shown, 20-80 ms later\n")
    print_table(rows, ["bleed", "setting", "dialogues", "duplicates", "lost turns", "marked", "corrected",
                       "WER interviewer", "WER candidate", "ΔWER vs clean (int. / cand.)", "wall s"])  # fmt: skip
    print("\ntargets (guard+suppression): 0 duplicates, 0 lost turns, |ΔWER| <= 0.01 per participant")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": results}, indent=2))
        progress(f"wrote {args.json}")


def cost(stt: SpeechToText, json_path: Path | None, env: dict[str, Any], repeats: int = 7) -> None:
    """Time `suppress_bleed` and a decode of the same audio: 1, 3 and 10 s of the candidate's speech with the
    interviewer's under it at -20 dB, 60 ms later (the shared dialogue), `repeats` times each."""
    rate, pcm = read_stereo(SHARED_DATA / "mobile_mixed.stereo.wav")
    channels = []
    for ch in (0, 1):
        resampler = Resampler(rate, RATE)
        channels.append(np.concatenate([resampler.process(np.ascontiguousarray(pcm[:, ch])), resampler.flush()]))
    lead = int(round(MAX_DELAY_S * RATE))
    rows, results = [], []
    question = channels[0][int(0.7 * RATE) : int(5.3 * RATE)].astype(np.float64)  # the interviewer's first turn
    for seconds in (1, 3, 10):
        at = int(6.7 * RATE)  # the candidate's first answer, with the question (repeated) under it
        ref = np.concatenate([np.zeros(lead), np.tile(question, 3)[: seconds * RATE]])
        bleed = 0.1 * np.concatenate([np.zeros(960), ref])[lead : lead + seconds * RATE]
        mic = np.clip(channels[1][at : at + seconds * RATE] + bleed, -32768, 32767).astype(np.int16)
        ref16 = ref.astype(np.int16)
        timings: dict[str, list[float]] = {"suppression": [], "decode": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            suppress_bleed(mic, ref16, lead)
            timings["suppression"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            stt.transcribe(mic)
            timings["decode"].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1000 for k, v in timings.items()}
        rows.append([f"{seconds} s", *(f"{med[k]:.1f} ({min(v) * 1000:.1f}-{max(v) * 1000:.1f})"
                                       for k, v in timings.items()), f"{med['suppression'] / med['decode']:.1%}"])  # fmt: skip
        results.append({"seconds": seconds, **{k: v for k, v in timings.items()}})
        progress(f"{seconds} s done")
    load = os.getloadavg()
    print(f"## Bleed suppression per decode, ms: median (min-max) of {repeats}; load average {load[0]:.1f}\n")
    print_table(rows, ["utterance", "suppress_bleed", "tiny.en decode", "suppression / decode"])
    if json_path:
        json_path.write_text(json.dumps({"environment": env, "load": load, "cost": results}, indent=2))


if __name__ == "__main__":
    main()
