"""End-of-turn decision benchmark: at each pause of the dialogues, has the turn ended?

    python -m benchmarks.turns [--json PATH]

The labelled pause set: every pause (raw VAD silence of at least `MIN_PAUSE_MS` inside or after speech) of
each participant's channel of the eight dialogues (testing/dialogues.py; clean: the 10 dB copies are mono mixes),
labelled "turn end" when it starts at the end of one of that speaker's ground-truth turns (within 0.3 s) and
"mid-turn" when it starts inside one (a comma or sentence break of a multi-sentence answer). The turn-end gap
(0.9-1.6 s before the other speaker starts, and this channel stays silent) is longer than any rule's wait.

Rules compared on the same pauses, each walking each channel in order (a pause the rule closes starts a new
utterance at the next speech, minus the pre-roll, as in the stream):
* fixed silence: "turn ended" once the silence reaches the threshold (END_SILENCE_MS = 500 today);
* text (pipeline.turns): the speculative decode's text at the pause (tiny.en, final quality, no prompt, the
  audio since the utterance the rule itself last closed, padded as the stream pads it) sets the threshold:
  complete sentence -> `turn_complete_ms`, trailing conjunction/filler/comma -> `turn_incomplete_ms`, else fixed;
* smart turn (pipeline.smart_turn, audio alone): P(turn ended) of the same utterance audio up to the moment the
  stream asks (`--speculate-ms` of silence, the stream's `speculate_after_ms`), last 8 s: P >= audio_end ->
  complete, P < audio_hold -> incomplete;
* combined (pipeline.turns.combine): complete only when both say complete, incomplete when either says so.

Table 1, per silence length s: over the pauses that lasted at least s, precision and recall of "turn ended
after s ms of silence" (fixed: yes iff s >= threshold, so one row per s is the fixed rule with that threshold).
Table 2, per rule: mid-turn pauses it closes and ground-truth turns split by them (before the `continues` join),
how long turn ends wait. Table 3: the combined rule's audio thresholds swept. Table 4: smart turn ms per query.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from adapters.stt_whisper import LocalWhisper
from benchmarks.report import environment, format_environment, percentile, print_table, progress_printer
from pipeline.audio_file import read_audio
from pipeline.dsp import Vad
from pipeline.smart_turn import MODEL_PATH, SmartTurn
from pipeline.stream import StreamConfig
from pipeline.transcript import SAMPLE_RATE
from pipeline.turns import TurnRule, Verdict, audio_verdict, combine, text_verdict
from testing.dialogues import dialogue_set, digit_dialogue_set, guidance_dialogue, vocabulary_dialogue_set

FRAME = SAMPLE_RATE // 50  # 20 ms, as the stream
MIN_PAUSE_MS = 140  # pauses listed: shorter ones cannot reach any rule's threshold (>= 220 ms)
SPECULATE_MS = StreamConfig.speculate_after_ms  # the stream's speculative decode (and Smart Turn) hears this much pause
PRE_ROLL = int(0.3 * SAMPLE_RATE)
LABEL_TOLERANCE_S = 0.3
SILENCES_MS = (140, 200, 220, 250, 300, 400, 500, 600, 800)
SWEEP_END = (0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9, 0.95)
SWEEP_HOLD = (0.0, 0.02, 0.05, 0.1)

progress = progress_printer("turns")


@dataclass(slots=True)
class Pause:
    dialogue: str
    speaker: str
    turn: int  # index of its ground-truth turn in the dialogue
    start_s: float  # the end of the speech before it
    duration_ms: int  # until speech resumes on this channel (or the file ends)
    turn_end: bool
    # per rule: the silence (ms) that rule lets this pause last, and what it heard (text, P(turn ended))
    threshold_ms: dict[str, int] = field(default_factory=dict)
    heard: dict[str, tuple[str, str, float]] = field(default_factory=dict)


@dataclass(slots=True)
class Labelled:
    pause: Pause
    pcm: np.ndarray  # its channel at 16 kHz, up to the pause's end
    a: int  # pause start sample
    turn_start: int  # its turn's start sample minus the pre-roll


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


def held_out_set() -> list[tuple[str, Path]]:
    """Dialogues the turn thresholds were never tuned on: the vocabulary, digit and live-guidance sets."""
    return [*vocabulary_dialogue_set(), *digit_dialogue_set(), ("guidance_protected", guidance_dialogue())]


DIALOGUE_SETS = {"tuning": dialogue_set, "held-out": held_out_set}


def labelled_pauses(dialogues: str = "tuning") -> tuple[list[Labelled], int]:
    """Every labelled pause of the dialogues, and how many ground-truth turns the dialogues have."""
    out, n_turns = [], 0
    for name, folder in DIALOGUE_SETS[dialogues]():
        gt = json.loads((folder / f"{name}.json").read_text())["turns"]
        n_turns += len(gt)
        audio = read_audio(folder / f"{name}.stereo.wav", rate=SAMPLE_RATE)
        for ch, speaker in enumerate(("interviewer", "candidate")):
            pcm = audio.channel(ch)
            turns = [(i, t) for i, t in enumerate(gt) if t["speaker"] == speaker]
            for a, b in pauses_of(pcm):
                t0 = a / SAMPLE_RATE
                i, turn = next(((i, t) for i, t in turns if t["start_s"] < t0 < t["end_s"] + LABEL_TOLERANCE_S),
                               (-1, None))  # fmt: skip
                if turn is None:
                    continue  # not this speaker's turn
                end = abs(t0 - turn["end_s"]) <= LABEL_TOLERANCE_S
                start = max(0, int(turn["start_s"] * SAMPLE_RATE) - PRE_ROLL)
                out.append(Labelled(Pause(name, speaker, i, round(t0, 3), (b - a) * 1000 // SAMPLE_RATE, end),
                                    pcm[:b], a, start))
    return out, n_turns


class Evidence:
    """The text verdict and P(turn ended) of one utterance audio at one pause, computed once whichever rule asks."""

    def __init__(self, stt: LocalWhisper, smart: SmartTurn, rule: TurnRule,
                 speculate_ms: int = SPECULATE_MS) -> None:
        self.stt, self.smart, self.rule = stt, smart, rule
        self.heard = speculate_ms * SAMPLE_RATE // 1000  # the pause's samples the decode and the model hear
        self._text: dict[tuple[str, str, int, int], tuple[str, Verdict]] = {}
        self._p: dict[tuple[str, str, int, int], float] = {}
        self.smart_ms: list[float] = []

    def text(self, x: Labelled, start: int) -> tuple[str, Verdict]:
        key = (x.pause.dialogue, x.pause.speaker, start, x.a)
        if key not in self._text:
            fixed_pad = self.rule.fixed_ms * SAMPLE_RATE // 1000
            clip = np.concatenate([x.pcm[start : x.a + self.heard],
                                   np.zeros(fixed_pad, np.int16)])  # fmt: skip
            tr = self.stt.transcribe(clip)
            verdict: Verdict = "unsure"
            if tr.text and not tr.hallucination:
                verdict = text_verdict(tr.text, tr.words[-1].probability if tr.words else None,
                                       min_probability=self.rule.min_probability)  # fmt: skip
            self._text[key] = (tr.text, verdict)
        return self._text[key]

    def p_end(self, x: Labelled, start: int) -> float:
        """What the stream hands the model at the pause: the utterance so far and `speculate_ms` of its silence."""
        key = (x.pause.dialogue, x.pause.speaker, start, x.a)
        if key not in self._p:
            t0 = time.perf_counter()
            self._p[key] = self.smart.probability(x.pcm[start : x.a + self.heard])
            self.smart_ms.append((time.perf_counter() - t0) * 1000)
        return self._p[key]


# a rule: (evidence, pause, utterance start) -> (text verdict, audio verdict, P) it read and the verdict it takes
Rule = Callable[[Evidence, Labelled, int], tuple[str, Verdict, float]]


def fixed_rule(ev: Evidence, x: Labelled, start: int) -> tuple[str, Verdict, float]:
    return "", "unsure", float("nan")


def text_rule(ev: Evidence, x: Labelled, start: int) -> tuple[str, Verdict, float]:
    text, verdict = ev.text(x, start)
    return text, verdict, float("nan")


def audio_rule(end: float, hold: float) -> Rule:
    def rule(ev: Evidence, x: Labelled, start: int) -> tuple[str, Verdict, float]:
        p = ev.p_end(x, start)
        return "", audio_verdict(p, end=end, hold=hold), p

    return rule


def combined_rule(end: float, hold: float) -> Rule:
    def rule(ev: Evidence, x: Labelled, start: int) -> tuple[str, Verdict, float]:
        text, verdict = ev.text(x, start)
        p = ev.p_end(x, start)
        return text, combine(verdict, audio_verdict(p, end=end, hold=hold)), p

    return rule


def walk(name: str, rule: Rule, ev: Evidence, labelled: list[Labelled], silences: TurnRule) -> None:
    """Each pause's threshold under `rule`, walking each channel in order: a pause the rule closes starts a new
    utterance at the next speech (minus the pre-roll), as in the stream."""
    utt_start: dict[tuple[str, str], int] = {}
    for x in labelled:
        p = x.pause
        key = (p.dialogue, p.speaker)
        start = max(utt_start.get(key, 0), x.turn_start)  # a turn end closed the last utterance in any rule
        text, verdict, p_end = rule(ev, x, start)
        p.threshold_ms[name] = silences.end_silence_ms(verdict)
        p.heard[name] = (text, verdict, round(p_end, 4))
        if p.duration_ms >= p.threshold_ms[name]:  # closed: the next utterance starts with the next speech
            nxt = x.a + p.duration_ms * SAMPLE_RATE // 1000
            utt_start[key] = max(x.a, nxt - PRE_ROLL)
        else:
            utt_start[key] = start


def pr(pauses: list[Pause], s: int, name: str) -> tuple[float | None, float | None]:
    reached = [p for p in pauses if p.duration_ms >= s]
    yes = [p for p in reached if p.threshold_ms[name] <= s]
    ends = [p for p in reached if p.turn_end]
    tp = sum(p.turn_end for p in yes)
    return (tp / len(yes) if yes else None, tp / len(ends) if ends else None)


def summary_row(name: str, pauses: list[Pause], n_turns: int) -> list[object]:
    mid, ends = [p for p in pauses if not p.turn_end], [p for p in pauses if p.turn_end]
    closed_mid = [p for p in mid if p.duration_ms >= p.threshold_ms[name]]
    split = {(p.dialogue, p.turn) for p in closed_mid}
    waits = [p.threshold_ms[name] for p in ends if p.duration_ms >= p.threshold_ms[name]]
    return [name, f"{len(closed_mid)}/{len(mid)} ({100 * len(closed_mid) / max(1, len(mid)):.0f} %)",
            f"{len(split)}/{n_turns} ({100 * len(split) / max(1, n_turns):.1f} %)", f"{len(waits)}/{len(ends)}",
            statistics.median(waits) if waits else "-", f"{statistics.mean(waits):.0f}" if waits else "-"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixed-ms", type=int, default=500)
    ap.add_argument("--complete-ms", type=int, default=220)
    ap.add_argument("--incomplete-ms", type=int, default=800)
    defaults = TurnRule()
    ap.add_argument("--audio-end", type=float, default=defaults.audio_end)
    ap.add_argument("--audio-hold", type=float, default=defaults.audio_hold)
    ap.add_argument("--model", type=Path, default=MODEL_PATH, help="the Smart Turn ONNX file")
    ap.add_argument("--speculate-ms", type=int, default=SPECULATE_MS,
                    help="pause (ms) the decode and Smart Turn hear, as SPECULATE_AFTER_MS")
    ap.add_argument("--dialogues", choices=sorted(DIALOGUE_SETS), default="tuning",
                    help="tuning: the eight dialogues the thresholds were chosen on (default); held-out: the "
                    "vocabulary, digit and live-guidance dialogues, never used to choose them")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rule = TurnRule(args.fixed_ms, args.complete_ms, args.incomplete_ms, audio_end=args.audio_end,
                    audio_hold=args.audio_hold)  # fmt: skip
    env = environment(["onnxruntime"])
    print(format_environment(env))
    labelled, n_turns = labelled_pauses(args.dialogues)
    ev = Evidence(LocalWhisper(), SmartTurn(args.model), rule, args.speculate_ms)
    ms = args.complete_ms, args.fixed_ms, args.incomplete_ms
    fixed_long, fixed_short = f"fixed {args.fixed_ms} ms", f"fixed {args.complete_ms} ms"
    text = f"text ({ms[0]}/{ms[1]}/{ms[2]} ms)"
    audio = f"smart turn (P>={args.audio_end:g} / P<{args.audio_hold:g})"
    both = f"text + smart turn (P>={args.audio_end:g} / P<{args.audio_hold:g})"
    rules: list[tuple[str, Rule, TurnRule]] = [
        (fixed_long, fixed_rule, rule), (fixed_short, fixed_rule, TurnRule(args.complete_ms, args.complete_ms)),
        (text, text_rule, rule), (audio, audio_rule(args.audio_end, args.audio_hold), rule),
        (both, combined_rule(args.audio_end, args.audio_hold), rule)]  # fmt: skip
    for name, fn, silences in rules:
        walk(name, fn, ev, labelled, silences)
        progress(f"{name}: done ({len(ev.smart_ms)} smart turn queries so far)")
    pauses = [x.pause for x in labelled]
    mid, ends = [p for p in pauses if not p.turn_end], [p for p in pauses if p.turn_end]

    def verdicts(ps: list[Pause], name: str) -> dict[str, int]:
        return {v: sum(p.heard[name][1] == v for p in ps) for v in ("complete", "incomplete", "unsure")}

    def p_of(ps: list[Pause]) -> str:
        values = [p.heard[audio][2] for p in ps]
        return f"P(turn ended) p10/p50/p90 {percentile(values, 10):.2f}/{percentile(values, 50):.2f}/" \
               f"{percentile(values, 90):.2f}"

    def auc() -> float:
        """How often a turn end's P is above a mid-turn pause's (0.5: no better than chance)."""
        pos, neg = np.array([p.heard[audio][2] for p in ends]), np.array([p.heard[audio][2] for p in mid])
        wins = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
        return float(wins / max(1, pos.size * neg.size))
    print(f"\n{args.dialogues} dialogues ({len({p.dialogue for p in pauses})}), heard at {args.speculate_ms} ms of pause; {len(pauses)} pauses >= {MIN_PAUSE_MS} ms "
          f"({n_turns} ground-truth turns): {len(ends)} turn ends, "
          f"{len(mid)} mid-turn (mid-turn pause ms p50/max {statistics.median(p.duration_ms for p in mid) if mid else '-'}/"
          f"{max((p.duration_ms for p in mid), default='-')})\n"
          f"text verdicts at turn ends {verdicts(ends, text)}, mid-turn {verdicts(mid, text)}\n"
          f"smart turn at turn ends: {p_of(ends)}; mid-turn: {p_of(mid)}; AUC {auc():.2f}\n")  # fmt: skip

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    rows = []
    for s in SILENCES_MS:
        reached = [p for p in pauses if p.duration_ms >= s]
        fp = sum(p.turn_end for p in reached) / len(reached) if reached else None  # fixed at s: every pause
        fr = 1.0 if any(p.turn_end for p in reached) else None
        cells = [f(fp), f(fr)]
        for name in (text, audio, both):
            cells += [f(v) for v in pr(pauses, s, name)]
        rows.append([s, len(reached), sum(p.turn_end for p in reached), *cells])
    print_table(rows, ["silence ms", "pauses reaching it", "turn ends", "fixed P", "fixed R", "text P", "text R",
                       "audio P", "audio R", "text+audio P", "text+audio R"])  # fmt: skip

    summary = [summary_row(name, pauses, n_turns) for name, _, _ in rules]
    print()
    print_table(summary, ["rule", "mid-turn pauses closed", "turns split", "turn ends closed",
                          "turn-end wait p50 ms", "mean ms"])  # fmt: skip

    sweep = []
    for end in SWEEP_END:
        for hold in SWEEP_HOLD:
            if hold > end:
                continue
            for kind, make in (("smart turn", audio_rule), ("text + smart turn", combined_rule)):
                name = f"{kind} (P>={end:g} / P<{hold:g})"
                if name not in pauses[0].threshold_ms:
                    walk(name, make(end, hold), ev, labelled, rule)
                sweep.append(summary_row(name, pauses, n_turns))
    print()
    print_table(sweep, ["rule", "mid-turn pauses closed", "turns split", "turn ends closed",
                        "turn-end wait p50 ms", "mean ms"])  # fmt: skip

    q = ev.smart_ms
    print(f"\nsmart turn per query (features + ONNX, 1 thread, {len(q)} queries): p50 {percentile(q, 50):.1f} ms, "
          f"p90 {percentile(q, 90):.1f} ms, min {min(q):.1f} ms (pipecat quotes ~12 ms)")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rule": asdict(rule), "table": rows,
                                         "summary": summary, "sweep": sweep, "smart_turn_ms": q,
                                         "pauses": [asdict(p) for p in pauses]}, indent=1))
        print(f"JSON written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
