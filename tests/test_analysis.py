"""Text analysers: sentiment from transcript words only, keywords with counts, relevance and traceability."""

from __future__ import annotations

import json

import pytest

from pipeline.analysis import KeywordTracker, SentimentTracker, text_sentiment, tokenize
from testing.data import SHARED_DATA

DATA = SHARED_DATA


@pytest.mark.parametrize(
    ("text", "sign"),
    [
        ("I am really proud of how smooth it feels.", 1),
        ("The first release had an awful crash and our ratings dropped badly.", -1),
        (
            "A leaked credential was found within minutes and nobody was harmed. The response was excellent.",
            1,
        ),
        ("No one was hurt.", 1),
        ("What about data at rest?", 0),
    ],
)
def test_sentiment_sign(text: str, sign: int) -> None:
    score = text_sentiment(text)
    assert -1.0 <= score <= 1.0
    if sign == 0:
        assert abs(score) < 0.3
    else:
        assert score * sign > 0.3


def test_sentiment_sign_on_the_dialogue_turns() -> None:
    """Every turn labelled positive/negative in the shared dialogues' ground truth gets the right sign."""
    checked = 0
    for name in ("mobile_mixed", "security_positive"):
        for turn in json.loads((DATA / f"{name}.json").read_text())["turns"]:
            if turn["sentiment"] in ("positive", "negative"):
                sign = 1 if turn["sentiment"] == "positive" else -1
                assert text_sentiment(turn["text"]) * sign > 0.05, turn["text"]
                checked += 1
    assert checked >= 3


def test_rolling_sentiment_is_smoothed_and_length_weighted() -> None:
    t = SentimentTracker()
    s1, r1 = t.update("This was a wonderful, excellent project and I loved it.")
    assert r1 == s1 > 0.5
    s2, r2 = t.update("awful")
    assert s2 < 0
    assert s2 < r2 < r1  # moved towards the new score, not replaced by it
    t2 = SentimentTracker()
    t2.update("This was a wonderful, excellent project and I loved it.")
    _, r_long = t2.update("It was an awful, terrible, horrible failure that hurt everyone on the team badly.")
    assert r_long < r2  # a long negative answer moves the rolling value further than one word
    assert text_sentiment("") == 0.0


def test_keywords_exclude_stop_words_and_filler_and_fold_plurals() -> None:
    k = KeywordTracker()
    k.update("Um, so, like, we basically moved every service to tokens with key rotation.", seq=0)
    k.update("Our audits became simpler; the audit log records every token.", seq=3)
    top = {kw.term: kw for kw in k.top(20)}
    for word in ("um", "so", "like", "basically", "we", "the", "every"):
        assert word not in top
    audit = next(kw for kw in k.top(20) if kw.term.startswith("audit"))
    assert audit.count == 2 and audit.seqs == (3,)
    token = next(kw for kw in k.top(20) if kw.term.startswith("token"))
    assert token.count == 2 and token.seqs == (0, 3)  # traceable to the segments it came from
    ranked = k.top(20)
    assert [kw.relevance for kw in ranked] == sorted((kw.relevance for kw in ranked), reverse=True)


def test_skills_are_boosted() -> None:
    plain, boosted = KeywordTracker(), KeywordTracker(skills=("Kotlin",))
    text = "I wrote the backend in Kotlin and the dashboards in Grafana with Prometheus alerting."
    plain.update(text, 0)
    boosted.update(text, 0)
    assert plain.top(1)[0].term != "kotlin"
    assert boosted.top(1)[0].term == "kotlin"


def test_vocabulary_is_bounded() -> None:
    k = KeywordTracker(max_terms=50)
    for i in range(40):
        k.update(" ".join(f"term{i}x{j}" for j in range(10)) + " kubernetes", seq=i)
    assert len(k._terms) <= 50
    assert k.top(1)[0].term == "kubernetes" and k.top(1)[0].count == 40


def test_tokenize_keeps_technical_terms() -> None:
    assert tokenize("C++ and node.js, not x-ray's.") == ["c++", "and", "node.js", "not", "x-ray's"]


def test_a_revised_segment_replaces_its_sentiment_and_the_smoothing_after_it() -> None:
    texts = ["I am delighted with the result.", "It was an awful outage.", "We fixed it within two days."]
    live, fresh = SentimentTracker(), SentimentTracker()
    for seq, text in enumerate(texts):
        live.update("It was a okay outage." if seq == 1 else text, seq)  # misheard
        fresh.update(text, seq)
    score, at_seq = live.revise(1, texts[1])
    assert score < 0 and score == fresh._recent[1][0]
    assert at_seq == pytest.approx(fresh._recent[2][2])  # the smoothed value right after seq 1
    assert live.rolling == pytest.approx(fresh.rolling)  # and everything after it redone
    assert live.revise(99, "unknown segment") is None
    old = SentimentTracker(recent=2)
    for seq, text in enumerate(texts):
        old.update(text, seq)
    assert old.revise(0, "great") is None  # older than the last `recent` segments: left alone


def test_a_revised_segment_replaces_its_keywords() -> None:
    kw = KeywordTracker()
    kw.update("We moved the sink queue to Kafka.", 0)
    kw.update("The sink queue is fast now.", 1)
    kw.update("Kafka stores every event.", 2)
    kw.remove("The sink queue is fast now.", 1)
    kw.update("The sync queue is fast now.", 1)
    top = {k.term: k for k in kw.top(20)}
    assert top["sink"].count == 1 and top["sink"].seqs == (0,)
    assert top["sync"].count == 1 and top["sync"].seqs == (1,)
    assert top["queue"].count == 2 and top["queue"].seqs == (0, 1)  # seqs stay in order
    kw.remove("We moved the sink queue to Kafka.", 0)
    assert "sink" not in {k.term for k in kw.top(20)}
    assert {k.term: k.count for k in kw.top(20)}["kafka"] == 1
