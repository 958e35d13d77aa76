"""The guards: what a decode's text and statistics say about whether anyone said it.

Every engine's transcript goes through `apply_guards`, which turns Whisper's decode statistics into "no text"
(silence, noise) or `hallucination=True` (repetition loops, low-confidence stock phrases), and keeps one copy of a
sentence repeated beyond what the audio holds (`collapse_repeats`), so nothing invented reaches the analysers. The other checks are for the stream and the engines: `trim_after_speech` (an invented
closing phrase in the trailing silence), `cut_short` (the words stop well before the audio does),
`too_many_words` (more words than anyone says in the audio), `after_prefix` (where a decode forced to continue
the conversation's text starts on the utterance's own words) and `word_confidence`; `hint_only` and
`doubtful_hint` for a decode told the interview's vocabulary (`pipeline.vocabulary`): words that may come from
the hint rather than the audio.

The cross-talk guard compares finals of different participants: `bleed_of(a, b)` says which of two overlapping
finals repeats the other's words at a lower level (one microphone picking up the other participant's voice), from
their `Heard` summaries (conversation time, normalised words, `speech_level_db` of the utterance's audio).
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.transcript import Transcript

# Whisper's own thresholds (openai/whisper transcribe.py): a window is silence when no_speech_prob is high
# and the decode is not confident; gzip compression ratio above 2.4 means the text repeats itself.
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
# A final whose last word ends this long before its audio does was cut short by the decoder (an utterance
# closes after 0.5 s of silence, so speech runs to within about that of the end).
EARLY_END_S = 1.5
LONGEST_WORD_S = 1.5  # no spoken word lasts this long; an aligned "word" that does is covering missing text
# More words than this for the audio is text the decoder invented (fast speech is ~4 words/s): seen on a 1.5 s
# question prompted with the conversation: "How would you feel now? Thank you so much for watching, and I'll
# see you next time."
MAX_WORDS_PER_S = 5.0
MAX_WORDS_SLACK = 3
# A sentence the decoder repeats back to back is only believed when the audio has room for every copy: each
# repeated word needs at least this long (fast speech is ~6 words/s). Seen on real 1-3 s commands decoded in a
# shortened window: "Go forward 10 meters. Go forward 10 meters. Go forward 10 meters. Go forward 10", the
# aligner squeezing the copies after the first into 1.74-2.76 s.
MIN_REPEAT_WORD_S = 0.15
MAX_REPEAT_WORDS = 30  # longest sentence looked for as a repeat
# A whole transcript this unlikely is noise decoded into words.
MIN_AVG_LOGPROB = -1.2
MIN_WORD_PROBABILITY = 0.3

# Stock phrases Whisper emits on silence/noise (learnt from subtitle credits). Only flagged when the decode is
# also unsure, so a candidate who really says "thank you" confidently is kept.
STOCK_PHRASES = {
    "thank you",
    "thanks for watching",
    "thank you for watching",
    "thank you so much for watching",
    "please subscribe",
    "subscribe to my channel",
    "you",
    "bye",
    "so",
    "oh",
    "okay",
    "the end",
    "subtitles by the amara org community",
    "transcription by castingwords",
}
_NORM_RE = re.compile(r"[^a-z0-9' ]+")


def normalise(text: str) -> str:
    """Lower case, letters, digits and apostrophes only, single spaces: texts that differ only in
    punctuation, case or spacing compare equal."""
    return " ".join(_NORM_RE.sub(" ", text.lower()).split())


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def repetition_loop(text: str, *, min_repeats: int = 4, max_ngram: int = 6) -> bool:
    """True when some n-gram (n <= max_ngram) repeats back to back at least `min_repeats` times."""
    words = normalise(text).split()
    for n in range(1, max_ngram + 1):
        if len(words) < n * min_repeats:
            break
        for phase in range(n):  # consecutive copies of an n-gram line up on one phase of stride n
            run = 1
            for i in range(phase + n, len(words) - n + 1, n):
                run = run + 1 if words[i : i + n] == words[i - n : i] else 1
                if run >= min_repeats:
                    return True
    return False


def collapse_repeats(t: Transcript) -> Transcript:
    """Keep one copy of a sentence (>= 2 words) the decoder repeated back to back beyond what the audio allows.

    The copies after the first are dropped (with a cut-off copy at the end) when their words have less than
    `MIN_REPEAT_WORD_S` each between the first copy's end and the last copy's end (word timings), or, without
    word timings, when the transcript has more than `MAX_WORDS_PER_S` words per second of `t.audio_s`. A sentence
    really said twice has its own time and is kept. Mutates and returns `t`; `reason` becomes "repeated".
    """
    tokens = [w.word for w in t.words] if t.words else t.text.split()
    norm = [normalise(tok) for tok in tokens]
    timed = bool(t.words)
    if not timed and (t.audio_s <= 0 or len(tokens) <= MAX_WORDS_PER_S * t.audio_s):
        return t
    keep = list(range(len(tokens)))
    i = 0
    while i < len(keep):
        words = [norm[k] for k in keep]
        found = None
        for n in range(2, min(MAX_REPEAT_WORDS, (len(words) - i) // 2) + 1):
            if words[i : i + n] == words[i + n : i + 2 * n]:
                found = n
                break
        if found is None:
            i += 1
            continue
        n = found
        end = i + 2 * n
        while words[end : end + n] == words[i : i + n]:
            end += n
        tail = len(words) - end  # a copy the decoder was stopped in (the token limit) is a copy too
        if 0 < tail < n and words[end:] == words[i : i + tail]:
            end = len(words)
        extra = end - (i + n)
        if timed:
            room = t.words[keep[end - 1]].end_s - t.words[keep[i + n - 1]].end_s
            # and the copies' words must take time themselves: words of no length stacked at the end of the audio
            # are invented ("5, 5, 5, 5," for a real "five five" sent over WebRTC: the last two copies 0 s long at
            # 2.04 s of 2.06 s, yet 0.7 s after the first copy)
            spoken = sum(max(0.0, t.words[keep[k]].end_s - t.words[keep[k]].start_s) for k in range(i + n, end))
            beyond = room < extra * MIN_REPEAT_WORD_S or spoken < extra * MIN_REPEAT_WORD_S / 2
        else:
            beyond = True  # already more words than the audio holds
        if not beyond:
            i += 1
            continue
        del keep[i + n : end]
        t.reason = t.reason or "repeated"
        i += n
    if len(keep) == len(tokens):
        return t
    if timed:
        t.words = [t.words[k] for k in keep]
        t.text = " ".join(w.word for w in t.words)
    else:
        t.text = " ".join(tokens[k] for k in keep)
    t.compression_ratio = compression_ratio(t.text)
    return t


_PUNCT_TAIL_RE = re.compile(r"(?:\s*[.,!?…-]){2,}\s*$")


def trim_after_speech(
    t: Transcript, speech_end_s: float, *, slack_s: float = 0.15, max_p: float = 0.5
) -> Transcript:
    """Drop trailing words that start after the segmenter saw speech end and that the decoder doubts.

    Whisper likes to close an utterance with an invented "Thank you." in the trailing silence; real last words
    are confident even when their timestamps drift. `speech_end_s` is relative to the transcribed audio.
    Mutates and returns `t`; the text is rebuilt from the kept words.
    """
    if not t.words:
        return t
    keep = len(t.words)
    while (
        keep and t.words[keep - 1].start_s > speech_end_s + slack_s and t.words[keep - 1].probability < max_p
    ):
        keep -= 1
    # a stock closing phrase ("Thank you.") starting near the end, with a doubtful word in it
    for k in range(keep - 1, max(-1, keep - 7), -1):
        tail = t.words[k:keep]
        if (
            normalise(" ".join(w.word for w in tail)) in STOCK_PHRASES
            and min(w.probability for w in tail) < max_p
            and tail[0].start_s > speech_end_s - 0.5
        ):
            keep = k
            break
    if keep == len(t.words):
        return t
    dropped = " ".join(w.word for w in t.words[keep:])
    t.words = t.words[:keep]
    t.text = " ".join(w.word for w in t.words)
    t.reason = t.reason or f"trimmed tail {dropped!r}"
    return apply_guards(t)


def apply_guards(t: Transcript) -> Transcript:
    """Gate silence/noise to empty text and flag likely hallucinations. Mutates and returns `t`."""
    if not any(ch.isalnum() for ch in t.text):
        t.text, t.words = "", []
        t.reason = t.reason or "empty"
        return t
    # a run of bare punctuation (". . . .") after the words is a decoding loop in trailing silence: cut it
    trimmed = _PUNCT_TAIL_RE.sub(lambda m: m.group(0).strip()[:1], t.text).strip()
    if trimmed != t.text:
        t.text, t.compression_ratio = trimmed, compression_ratio(trimmed)
    t.words = [w for w in t.words if any(ch.isalnum() for ch in w.word)]
    words_p = [w.probability for w in t.words]
    mean_p = float(np.mean(words_p)) if words_p else t.confidence
    if t.no_speech_prob > NO_SPEECH_THRESHOLD and t.avg_logprob < LOGPROB_THRESHOLD:
        t.text, t.words, t.reason = "", [], "no_speech"
        return t
    if t.avg_logprob < MIN_AVG_LOGPROB or (words_p and mean_p < MIN_WORD_PROBABILITY):
        t.text, t.words, t.reason = "", [], "low_confidence"
        return t
    collapse_repeats(t)
    if t.compression_ratio > COMPRESSION_RATIO_THRESHOLD or repetition_loop(t.text):
        t.hallucination, t.reason = True, "repetition"
    elif normalise(t.text) in STOCK_PHRASES and (t.no_speech_prob > 0.3 or mean_p < 0.6):
        t.hallucination, t.reason = True, "stock_phrase"
    return t


# A decode told the interview's vocabulary can write a term where nobody said it: the whole decode of silence or
# noise ("Kubernetes, Terraform."), or a term over an ordinary word ("Have you used" -> "Helm, you used"). Decoded
# without a prompt, those inserted terms got probability 0.002 and below, the hint alone pulling them through the
# beam; terms really said got 0.0037 (Postgres) to 0.96. The bar is thin: it catches the clearest cases only.
HINT_MIN_PROBABILITY = 0.002
_LIST_WORDS = frozenset({"and", "or", "also"})  # what joins terms in a list the decoder writes out of the hint


def hint_words(terms: tuple[str, ...]) -> frozenset[str]:
    """The `normalise`d words of the vocabulary's terms ("scikit-learn" -> "scikit", "learn")."""
    return frozenset(w for t in terms for w in normalise(t).split())


def hint_only(text: str, terms: tuple[str, ...]) -> bool:
    """Whether `text` is nothing but the vocabulary's terms (joined by commas, "and", "or"): what a decoder told the
    vocabulary writes for silence or noise. Never true without terms or text."""
    words = normalise(text).split()
    vocab = hint_words(terms)
    return bool(words) and bool(vocab) and all(w in vocab or w in _LIST_WORDS for w in words) and any(
        w in vocab for w in words)


def hint_echo(t: Transcript, terms: tuple[str, ...]) -> bool:
    """Whether `t` is nothing but the vocabulary's terms, one of them repeated back to back: 4 s of white noise
    decoded as "Istio, Istio, Istio," (no_speech_prob 0.94 and avg_logprob -0.95, just above the no-speech gate's
    -1.0). Not `no_speech_prob` alone: with the vocabulary in the prompt, real answers got 0.87-0.89."""
    return hint_only(t.text, terms) and len(words_of(t.text)) < len(normalise(t.text).split())


def doubtful_hint(t: Transcript, terms: tuple[str, ...], min_probability: float = HINT_MIN_PROBABILITY) -> bool:
    """Whether `t` has a word of the vocabulary that got less than `min_probability` (a term the hint pushed
    through the beam over what the audio says; needs word probabilities), or says a vocabulary word twice back to
    back (the hint looping: "Istio, Istio, Istio. You" from white noise, "... a Helm chart. Istio, Istio" in the
    silence after speech), or has a vocabulary word in a decode that is itself doubted: flagged a hallucination or
    one copy kept of words it repeated ("TensorFlow, Cloud, Cloud," from white noise)."""
    vocab = hint_words(terms)
    words = normalise(t.text).split()
    if any(a == b and a in vocab for a, b in itertools.pairwise(words)):
        return True
    doubted = t.hallucination or t.reason == "repeated"
    if doubted and any(w in vocab for w in words):
        return True
    return any(w.probability < min_probability and set(normalise(w.word).split()) & vocab for w in t.words)


def cut_short(t: Transcript, audio_s: float) -> bool:
    """Whether the words fail to cover the audio: the last word ends long before the audio does (an utterance
    closes after 0.5 s of silence), or the aligner stretched a word over seconds to reach the end (seen when the
    text stops mid-sentence: "and" 5.24-8.14 s, then "I am really" squeezed at 8.14 s)."""
    if not t.words:
        return False
    return t.words[-1].end_s < audio_s - EARLY_END_S or max(w.end_s - w.start_s for w in t.words) > LONGEST_WORD_S


def word_confidence(t: Transcript) -> float:
    """Geometric mean of the words' probabilities (0 without words): one measure for a live final and its
    revision (`confidence` is per token for one and per word for the other)."""
    if not t.words:
        return 0.0
    return math.exp(sum(math.log(max(w.probability, 1e-6)) for w in t.words) / len(t.words))


_DIGIT_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
}  # fmt: skip
_NUMBER_WORDS = {"hundred", "thousand", "million", "double", "triple", "point"}
_ZERO_WORDS = {"oh", "o"}  # zero when spoken among digits ("nine oh two")


def words_besides_numbers(text: str) -> list[str]:
    """The words of `text` that are not numbers, in order ("2 or 3" -> ["or"]): a revision of a numeric utterance
    that says the same digits may still drop the words between them ("2-3")."""
    words = normalise(text).replace("'", " ").split()
    numberish = {i for i, w in enumerate(words) if w.isdigit() or w in _DIGIT_WORDS or w in _NUMBER_WORDS}
    zero = {i for i, w in enumerate(words) if w in _ZERO_WORDS and ({i - 1, i + 1} & numberish)}
    return [w for i, w in enumerate(words) if i not in numberish | zero]


def spoken_digits(text: str) -> tuple[str, float]:
    """The digits `text` says, in order, numerals and number words alike ("nine oh two 1" -> "9021"), and the share
    of its words that are numbers. "oh" counts as 0 next to another number; "twenty one" gives "201" where a
    decoder writes "21": the digits compare two transcripts of the same audio, and a mismatch only means "not sure"."""
    words = normalise(text).replace("'", " ").split()
    if not words:
        return "", 0.0

    def number(i: int) -> bool:
        return 0 <= i < len(words) and (words[i].isdigit() or words[i] in _DIGIT_WORDS)

    digits, numeric = [], 0
    for i, w in enumerate(words):
        if w.isdigit():
            digits.append(w)
        elif w in _DIGIT_WORDS:
            digits.append(_DIGIT_WORDS[w])
        elif w in _ZERO_WORDS and (number(i - 1) or number(i + 1)):
            digits.append("0")
        elif w not in _NUMBER_WORDS:
            continue
        numeric += 1
    return "".join(digits), numeric / len(words)


def too_many_words(t: Transcript, audio_s: float) -> bool:
    """Whether the transcript holds more words than anyone says in `audio_s` of audio."""
    return len(t.text.split()) > MAX_WORDS_PER_S * audio_s + MAX_WORDS_SLACK


_ALNUM_RE = re.compile(r"[^0-9a-z]+")


def after_prefix(words: list[Any], prefix: str) -> int | None:
    """Index of the first word after `prefix` in a decode forced to start with it (None: it does not).

    Compared on lower-case letters and digits only: the decoder's word split ("short -lived") and spacing
    need not match the prefix's."""
    target = _ALNUM_RE.sub("", prefix.lower())
    if not target:
        return 0
    got = ""
    for i, w in enumerate(words):
        got += _ALNUM_RE.sub("", w.word.lower())
        if len(got) >= len(target):
            return i + 1 if got == target else None
    return None


# ------------------------------------------------------------------------------------------------ cross-talk

# A microphone that picks up the other participant (speakers without echo cancellation, two people in one room)
# hears them 10-30 dB lower and a few tens of ms later; capture chains and network arrival add up to ~300 ms.
CROSSTALK_MAX_DELAY_S = 0.3
# share of the quieter final's words found, in order, in the louder one: a copy decoded from 10-30 dB less
# signal loses or changes a few words, a different sentence shares a few stop words at most
CROSSTALK_MIN_OVERLAP = 0.6
# the copy's level gap that settles which final is the copy; below it only a long exact-enough match does (two
# people do not say the same several words at once) and a single shared word ("yes" under a question) never does
CROSSTALK_MIN_GAP_DB = 6.0
CROSSTALK_ONE_WORD_GAP_DB = 10.0
CROSSTALK_SURE_WORDS = 4
CROSSTALK_SURE_OVERLAP = 0.8


@dataclass(slots=True, eq=False)
class Heard:
    """What the cross-talk guard knows of one final: its speech span in conversation time (a time axis the
    streams of one conversation share), its normalised words and its speech level (None: unknown)."""

    start_s: float
    end_s: float
    words: tuple[str, ...]
    level_db: float | None = None

    @classmethod
    def of(cls, text: str, start_s: float, end_s: float, level_db: float | None = None) -> Heard:
        return cls(start_s, end_s, words_of(text), level_db)


def words_of(text: str) -> tuple[str, ...]:
    """The words the cross-talk guard compares: `normalise`d, a word repeated back to back once (a decoding loop,
    "handled. And, and, and, and.", would otherwise outweigh the words it shares with its source)."""
    words = normalise(text).split()
    return tuple(w for i, w in enumerate(words) if i == 0 or w != words[i - 1])


def speech_level_db(audio: np.ndarray, frame: int = 320) -> float:
    """Active speech level of int16 audio in dBFS: the mean power of its louder half of `frame`-sample frames
    (the pauses and pre-roll of an utterance would otherwise pull a short reply below a long one's level)."""
    n = audio.size // frame
    if n == 0:
        power = float(np.mean(audio.astype(np.float64) ** 2)) if audio.size else 0.0
    else:
        frames = audio[: n * frame].astype(np.float64).reshape(n, frame)
        powers = np.sort(np.mean(frames * frames, axis=1))
        power = float(np.mean(powers[n // 2 :]))
    return 10.0 * math.log10(power / 32768.0**2) if power > 0 else -120.0


def matched_words(copy: tuple[str, ...], source: tuple[str, ...]) -> int:
    """How many of `copy`'s words appear in `source` in the same order (longest matching blocks)."""
    if not copy or not source:
        return 0
    blocks = difflib.SequenceMatcher(None, copy, source, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks)


def bleed_of(a: Heard, b: Heard, *, max_delay_s: float = CROSSTALK_MAX_DELAY_S) -> Heard | None:
    """`a` or `b` when that final is the other's voice picked up by a second microphone, else None.

    The copy is the quieter one (the later one without levels); it must overlap the source in time, give or
    take `max_delay_s`, for at least half its length, and CROSSTALK_MIN_OVERLAP of its words must be the
    source's. Then a level gap of CROSSTALK_MIN_GAP_DB (CROSSTALK_ONE_WORD_GAP_DB for a one-word match) decides,
    or, without one, a match of CROSSTALK_SURE_WORDS words and CROSSTALK_SURE_OVERLAP of the copy."""
    gap: float | None = None
    if a.level_db is not None and b.level_db is not None and a.level_db != b.level_db:
        copy, source = (a, b) if a.level_db < b.level_db else (b, a)
        gap = abs(a.level_db - b.level_db)
    else:
        copy, source = (a, b) if a.start_s >= b.start_s else (b, a)
    if not copy.words:
        return None
    shared = min(copy.end_s, source.end_s + max_delay_s) - max(copy.start_s, source.start_s - max_delay_s)
    if shared < 0.5 * (copy.end_s - copy.start_s):
        return None
    matched = matched_words(copy.words, source.words)
    overlap = matched / len(copy.words)
    if overlap < CROSSTALK_MIN_OVERLAP:
        return None
    if gap is not None and gap >= (CROSSTALK_ONE_WORD_GAP_DB if matched == 1 else CROSSTALK_MIN_GAP_DB):
        return copy
    if matched >= CROSSTALK_SURE_WORDS and overlap >= CROSSTALK_SURE_OVERLAP:
        return copy
    return None
