"""End-of-turn decision benchmark: at each pause of the dialogues, has the turn ended?

    python -m benchmarks.turns [--json PATH]

The labelled pause set: every pause (raw VAD silence of at least `MIN_PAUSE_MS` inside or after speech) of
each participant's channel of the eight dialogues (testing/dialogues.py; clean: the 10 dB copies are mono mixes),
labelled "turn end" when it starts at the end of one of that speaker's ground-truth turns (within 0.3 s) and
"mid-turn" when it starts inside one (a comma or sentence break of a multi-sentence answer). The turn-end gap
(0.9-1.6 s before the other speaker starts, and this channel stays silent) is longer than any rule's wait.

Rules compared on the same pauses:
* fixed silence: "turn ended" once the silence reaches the threshold (END_SILENCE_MS = 500 today);
* text (pipeline.turns): the speculative decode's text at the pause (tiny.en, final quality, no prompt, the
  audio since the utterance the rule itself last closed, padded as the stream pads it) sets the threshold:
  complete sentence -> `turn_complete_ms`, trailing conjunction/filler/comma -> `turn_incomplete_ms`, else
  fixed. A mid-turn pause the rule closes starts a new utterance, as in the stream.

Table 1, per silence length s: over the pauses that lasted at least s, precision and recall of "turn ended
after s ms of silence" (fixed: yes iff s >= threshold, so one row per s is the fixed rule with that threshold).
Table 2, per rule: mid-turn pauses it closes (splits before the `continues` join), how long turn ends wait.
Smart Turn (audio) is not built yet: its rows are absent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapters.stt_whisper import LocalWhisper
from benchmarks.report import environment, format_environment, print_table, progress_printer
from pipeline.audio_file import read_audio
from pipeline.dsp import Vad
from pipeline.transcript import SAMPLE_RATE
from pipeline.turns import TurnRule, text_verdict
from testing.dialogues import dialogue_set

FRAME = SAMPLE_RATE // 50  # 20 ms, as the stream
MIN_PAUSE_MS = 140  # the stream's speculative decode starts here: shorter pauses get no text decision
PRE_ROLL = int(0.3 * SAMPLE_RATE)
LABEL_TOLERANCE_S = 0.3
SILENCES_MS = (140, 200, 220, 250, 300, 400, 500, 600, 800)

progress = progress_printer("turns")


@dataclass(slots=True)
class Pause:
    dialogue: str
    speaker: str
    start_s: float  # the end of the speech before it
    duration_ms: int  # until speech resumes on this channel (or the file ends)
    turn_end: bool
    text: str = ""
    verdict: str = "unsure"
    threshold_ms: int = 0  # the text rule's


def pauses_of(channel: np.ndarray) -> list[tuple[int, int]]:
    """(start sample, end sample) of each raw-VAD silence of at least MIN_PAUSE_MS after speech."""
    vad = Vad("hybrid")
    flags = [vad.process(channel[i : i + FRAME]) and vad.raw for i in range(0, channel.size - FRAME + 1, FRAME)]
    out, last_speech, silent_from = [], None, None
    for k, speech in enumerate(flags):
        if speech:
            if silent_from is not None and last_speech is not None and (k - silent_from) * 20 >= MIN_PAUSE_MS:
                out.append((silent_from * FRAME, k * FRAME))
            last_speech, silent_from = k, None
        elif last_speech is not None and silent_from is None:
            silent_from = k
    if silent_from is not None and (len(flags) - silent_from) * 20 >= MIN_PAUSE_MS:
        out.append((silent_from * FRAME, len(flags) * FRAME))
    return out


def labelled_pauses() -> list[tuple[Pause, np.ndarray, int, int]]:
    """(pause, its channel at 16 kHz up to the pause's end, pause start sample, its turn's start sample minus the
    pre-roll) for every labelled pause of the dialogues."""
    out = []
    for name, folder in dialogue_set():
        suffix = ""
        gt = json.loads((folder / f"{name}{suffix}.json").read_text())["turns"]
        audio = read_audio(folder / f"{name}{suffix}.stereo.wav", rate=SAMPLE_RATE)
        for ch, speaker in enumerate(("interviewer", "candidate")):
            pcm = audio.channel(ch)
            turns = [t for t in gt if t["speaker"] == speaker]
            for a, b in pauses_of(pcm):
                t0 = a / SAMPLE_RATE
                turn = next((t for t in turns if t["start_s"] < t0 < t["end_s"] + LABEL_TOLERANCE_S), None)
                if turn is None:
                    continue  # not this speaker's turn
                end = abs(t0 - turn["end_s"]) <= LABEL_TOLERANCE_S
                start = max(0, int(turn["start_s"] * SAMPLE_RATE) - PRE_ROLL)
                out.append((Pause(f"{name}{suffix}", speaker, round(t0, 3), (b - a) * 1000 // SAMPLE_RATE, end),
                            pcm[: b], a, start))
    return out


def decide(stt: LocalWhisper, pauses: list[tuple[Pause, np.ndarray, int, int]], rule: TurnRule) -> None:
    """The text rule's threshold at each pause, walking each channel in order: a pause the rule closes starts a
    new utterance at the next speech (minus the pre-roll), as in the stream."""
    utt_start: dict[tuple[str, str], int] = {}
    fixed_pad = rule.fixed_ms * SAMPLE_RATE // 1000
    for k, (p, pcm, a, turn_start) in enumerate(pauses):
        key = (p.dialogue, p.speaker)
        start = max(utt_start.get(key, 0), turn_start)  # a turn end closed the last utterance in any rule
        clip = np.concatenate([pcm[start : a + MIN_PAUSE_MS * SAMPLE_RATE // 1000], np.zeros(fixed_pad, np.int16)])
        tr = stt.transcribe(clip)
        p.text = tr.text
        if tr.text and not tr.hallucination:
            p.verdict = text_verdict(tr.text, tr.words[-1].probability if tr.words else None,
                                     min_probability=rule.min_probability)  # fmt: skip
        p.threshold_ms = rule.end_silence_ms(p.verdict)  # type: ignore[arg-type]
        if p.duration_ms >= p.threshold_ms:  # closed: the next utterance starts with the next speech
            nxt = a + p.duration_ms * SAMPLE_RATE // 1000
            utt_start[key] = max(a, nxt - PRE_ROLL)
        else:
            utt_start[key] = start
        progress(f"{k + 1}/{len(pauses)} {p.dialogue} {p.speaker} {p.start_s:.2f}s {p.duration_ms} ms "
                 f"{'END' if p.turn_end else 'mid'} {p.verdict}: {p.text[-60:]!r}")  # fmt: skip


def pr(pauses: list[Pause], s: int, says_ended: Any) -> tuple[float | None, float | None]:
    reached = [p for p in pauses if p.duration_ms >= s]
    yes = [p for p in reached if says_ended(p)]
    ends = [p for p in reached if p.turn_end]
    tp = sum(p.turn_end for p in yes)
    return (tp / len(yes) if yes else None, tp / len(ends) if ends else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixed-ms", type=int, default=500)
    ap.add_argument("--complete-ms", type=int, default=220)
    ap.add_argument("--incomplete-ms", type=int, default=800)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rule = TurnRule(args.fixed_ms, args.complete_ms, args.incomplete_ms)
    env = environment()
    print(format_environment(env))
    labelled = labelled_pauses()
    stt = LocalWhisper()
    decide(stt, labelled, rule)
    pauses = [p for p, _, _, _ in labelled]
    mid, ends = [p for p in pauses if not p.turn_end], [p for p in pauses if p.turn_end]
    print(f"\n{len(pauses)} pauses >= {MIN_PAUSE_MS} ms: {len(ends)} turn ends, {len(mid)} mid-turn "
          f"(mid-turn pause ms p50/max {statistics.median(p.duration_ms for p in mid) if mid else '-'}/"
          f"{max((p.duration_ms for p in mid), default='-')}); text verdicts at turn ends "
          f"{ {v: sum(p.verdict == v for p in ends) for v in ('complete', 'incomplete', 'unsure')} }, "
          f"mid-turn { {v: sum(p.verdict == v for p in mid) for v in ('complete', 'incomplete', 'unsure')} }\n")

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    rows = []
    for s in SILENCES_MS:
        reached = [p for p in pauses if p.duration_ms >= s]
        fp, fr = pr(pauses, s, lambda p: True)
        tp_, tr_ = pr(pauses, s, lambda p, s=s: p.threshold_ms <= s)
        rows.append([s, len(reached), sum(p.turn_end for p in reached), f(fp), f(fr), f(tp_), f(tr_)])
    print_table(rows, ["silence ms", "pauses reaching it", "turn ends", "fixed P", "fixed R", "text P", "text R"])

    summary = []
    for name, threshold in ((f"fixed {args.fixed_ms} ms", lambda p: args.fixed_ms),
                            (f"fixed {args.complete_ms} ms", lambda p: args.complete_ms),
                            (f"text ({args.complete_ms}/{args.fixed_ms}/{args.incomplete_ms} ms)",
                             lambda p: p.threshold_ms)):  # fmt: skip
        closed_mid = [p for p in mid if p.duration_ms >= threshold(p)]
        waits = [threshold(p) for p in ends if p.duration_ms >= threshold(p)]
        summary.append([name, f"{len(closed_mid)}/{len(mid)} ({100 * len(closed_mid) / max(1, len(mid)):.0f} %)",
                        f"{len(waits)}/{len(ends)}", statistics.median(waits) if waits else "-",
                        f"{statistics.mean(waits):.0f}" if waits else "-"])  # fmt: skip
    print()
    print_table(summary, ["rule", "mid-turn pauses closed (split)", "turn ends closed", "turn-end wait p50 ms",
                          "mean ms"])  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rule": asdict(rule), "table": rows,
                                         "summary": summary, "pauses": [asdict(p) for p in pauses]}, indent=1))
        print(f"JSON written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
