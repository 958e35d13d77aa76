"""Semantic end of turn: how long a pause closes an utterance, from the words said so far.

A fixed end-of-speech silence (`END_SILENCE_MS`, 500 ms) is the floor of every final's latency, and it is a
compromise: long for "Thank you." and short for "I moved the service to Postgres and ... ". The stream decodes what
was said as soon as the speaker pauses (the speculative final); `end_silence_ms` reads that text:

* a complete sentence or question (final punctuation, not ending in a conjunction, filler or unfinished clause,
  confident last words) closes after `complete_ms` of silence (~200-250 ms);
* a trailing "and", "so", "um", "because" or comma waits `incomplete_ms` (>= 800 ms);
* anything else (no punctuation, doubted words, no decode yet) keeps the fixed silence.

With the audio model (`pipeline.smart_turn`, `TURN_AUDIO_MODEL`) the pause has a second opinion, P(turn ended)
from how it was said: `audio_verdict` reads it as complete (P >= `audio_end`), incomplete (P < `audio_hold`) or
unsure, and `combine` closes early only when both the words and the audio say complete, waits long when either
says incomplete, and keeps the fixed silence otherwise (a sentence break inside an answer reads as complete text,
but its intonation usually does not fall as at the end of a turn).

Turn-taking only: the decision reads the transcript text, nothing is inferred or stored about the speaker.
`python -m benchmarks.turns` measures it on the dialogues' pauses (mid-turn pauses vs turn ends).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["complete", "incomplete", "unsure"]

# A last word after which the sentence is rarely over: conjunctions, prepositions, articles, auxiliaries, subject
# pronouns, fillers. Whisper sometimes ends a decode cut mid-clause with a full stop ("... because."), so these win
# over the punctuation. Words that often end a sentence are left out ("Thank you.", "I love it.", "I think that's
# it.", "Come on."): a wrong "incomplete" costs only a longer wait, but a common one costs it on every turn.
CONTINUATIONS = frozenset("""
and or but so because if when while although though since unless until whereas whether than which who whom whose
where as like with without to of for in at from by into onto under between through during against
a an the my our your their his her its some any every each
is are was were be been being am have has had do does did will would could should can may might must shall
i we they he she not very really just also such
um uh er erm ah hmm mm
""".split())
_FINAL = re.compile(r"[.?!][\"')\]]*$")
_OPEN = re.compile(r"([,;:\-–—]|\.\.\.|…)[\"')\]]*$")
_WORD = re.compile(r"[a-z']+")


def text_verdict(text: str, last_word_probability: float | None = None, *, min_probability: float = 0.5) -> Verdict:
    """Whether `text` (what the speaker said so far) reads as a finished turn.

    `last_word_probability`: the decoder's probability of the last word (None: not known); below
    `min_probability` the words are too doubtful to close early on ("complete" becomes "unsure")."""
    t = text.strip()
    if not t:
        return "unsure"
    if _OPEN.search(t):
        return "incomplete"
    words = _WORD.findall(t.lower())
    if words and words[-1] in CONTINUATIONS:
        return "incomplete"
    if not _FINAL.search(t):
        return "unsure"
    if last_word_probability is not None and last_word_probability < min_probability:
        return "unsure"
    return "complete"


def audio_verdict(p_end: float | None, *, end: float, hold: float) -> Verdict:
    """The audio model's P(turn ended) as a verdict: complete at or above `end`, incomplete below `hold`."""
    if p_end is None:
        return "unsure"
    if p_end >= end:
        return "complete"
    if p_end < hold:
        return "incomplete"
    return "unsure"


def combine(text: Verdict, audio: Verdict) -> Verdict:
    """Both must say complete to close early; either saying incomplete waits long; else the fixed silence."""
    if text == "incomplete" or audio == "incomplete":
        return "incomplete"
    if text == "complete" and audio == "complete":
        return "complete"
    return "unsure"


@dataclass(frozen=True, slots=True)
class TurnRule:
    """Silence (ms) that closes an utterance for each verdict; `fixed_ms` is `END_SILENCE_MS`. `audio_end` /
    `audio_hold`: the audio model's P(turn ended) at or above which it says complete / below which incomplete."""

    fixed_ms: int = 500
    complete_ms: int = 220
    incomplete_ms: int = 800
    min_probability: float = 0.5
    audio_end: float = 0.3
    audio_hold: float = 0.0

    def __post_init__(self) -> None:
        if min(self.fixed_ms, self.complete_ms, self.incomplete_ms) <= 0:
            raise ValueError("turn silences must be positive")
        if not 0.0 <= self.audio_hold <= self.audio_end <= 1.0:
            raise ValueError("turn audio thresholds must satisfy 0 <= audio_hold <= audio_end <= 1")

    def verdict(self, text: Verdict, p_end: float | None = None) -> Verdict:
        """The text verdict, or with the audio model's P(turn ended) both combined (`combine`)."""
        if p_end is None:
            return text
        return combine(text, audio_verdict(p_end, end=self.audio_end, hold=self.audio_hold))

    def end_silence_ms(self, verdict: Verdict) -> int:
        if verdict == "complete":
            return self.complete_ms
        if verdict == "incomplete":
            return self.incomplete_ms
        return self.fixed_ms
