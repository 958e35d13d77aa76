"""Live guidance: the protected-topic detector on its held-out questions, `python -m pipeline classify-questions`,
guide-coverage matching on reworded guide questions, and the per-room `Guidance` component over scripted finals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapters.embeddings_onnx import OnnxSentenceEmbedder
from domain.events import GuideCoverageEvent, ProtectedTopicAlert, QaPairEvent, TalkBalanceEvent
from pipeline.guidance import (
    REFERENCE_EXAMPLES,
    TOPICS,
    Guidance,
    GuidanceFinal,
    GuideItem,
    GuideMatcher,
    LabelledQuestion,
    ProtectedTopicDetector,
    coverage_accuracy,
    default_detector,
    detector_scores,
    load_guide_rewordings,
    load_question_set,
)

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = ROOT / "tests" / "data" / "protected_questions.jsonl"  # test data only: the detector never sees it


def question_set() -> list[LabelledQuestion]:  # the whole curated set: the shipped reference examples, then the held-out part
    return load_question_set(REFERENCE_EXAMPLES) + load_question_set(HELD_OUT)


@pytest.fixture(scope="module")
def embedder() -> OnnxSentenceEmbedder:
    return OnnxSentenceEmbedder(threads=1)


def test_embeddings_are_unit_vectors_and_batch_invariant(embedder: OnnxSentenceEmbedder) -> None:
    texts = ["How old are you?", "What is your age?", "Tell me about a time you led a project.", "Can you work weekends?"]
    batch = embedder.embed(texts)
    assert batch.shape == (4, embedder.dim) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    one_by_one = np.vstack([embedder.embed([t]) for t in texts])  # padding to the batch's longest must not matter
    assert np.allclose(batch, one_by_one, atol=1e-3)
    sims = batch @ batch.T
    assert sims[0, 1] > 0.6 and sims[0, 1] > sims[0, 2] + 0.3  # paraphrases close, unrelated questions far
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_token_states_are_what_the_sentence_vector_pools(embedder: OnnxSentenceEmbedder) -> None:
    """Token-level matching (benchmarks.guide_methods) reads the same ONNX run: the attention-masked mean of the
    token states, normalised, is the sentence vector; padding in a batch adds no states."""
    texts = ["How old are you?", "Tell me about a distributed system you designed for payments."]
    states = embedder.token_states(texts)
    assert [s.tokens[0] for s in states] == ["[CLS]", "[CLS]"] and [s.tokens[-1] for s in states] == ["[SEP]"] * 2
    assert states[0].tokens == ("[CLS]", "how", "old", "are", "you", "?", "[SEP]")  # unpadded in a longer batch
    assert all(s.states.shape == (len(s.tokens), embedder.dim) == (len(s.ids), embedder.dim) for s in states)
    pooled = np.array([s.states.mean(axis=0) for s in states])
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    assert np.allclose(pooled, embedder.embed(texts), atol=1e-5)
    assert embedder.token_states([]) == []


def test_question_set_is_curated_as_documented() -> None:
    questions = question_set()
    for topic in TOPICS:
        assert sum(q.topic == topic for q in questions) >= 20, topic
        assert any(q.topic == topic and q.split == "heldout" for q in questions), topic
    assert sum(q.topic is None for q in questions) >= 60
    assert {q.split for q in questions} == {"tune", "heldout"}
    assert {q.split for q in load_question_set(REFERENCE_EXAMPLES)} == {"tune"}
    texts = [q.text.lower() for q in questions]
    assert len(texts) == len(set(texts)), "a question in both parts would leak the held-out figures"


def test_runtime_data_ships_in_the_package() -> None:
    """The running service reads nothing under tests/: the detector's examples and the tokenizer are package data
    (pyproject `package-data`), which a wheel carries."""
    import tomllib

    from adapters.embeddings_onnx import TOKENIZER_PATH

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for path in (REFERENCE_EXAMPLES, TOKENIZER_PATH):
        assert path.is_file() and path.parent == ROOT / "pipeline" / "data"
        assert any(path.match(f"pipeline/{pattern}") for pattern in package_data["pipeline"]), path


@pytest.mark.parametrize("jurisdiction", ["us", "eu"])
def test_detector_meets_targets_on_held_out_questions(embedder: OnnxSentenceEmbedder, jurisdiction: str) -> None:
    scores = detector_scores(embedder, question_set(), split="heldout", jurisdiction=jurisdiction)  # type: ignore[arg-type]
    assert scores["precision"] >= 0.9, scores
    assert scores["recall"] >= 0.9, scores


def test_salary_history_is_flagged_only_where_banned(embedder: OnnxSentenceEmbedder) -> None:
    q = ["What were you paid at your last job?", "What salary are you expecting for this role?"]
    us = default_detector(embedder, "us").classify(q)
    eu = default_detector(embedder, "eu").classify(q)
    assert [v.topic for v in us] == ["salary_history", None]
    assert [v.topic for v in eu] == [None, None]
    assert us[0].rephrase and "expecting" in us[0].rephrase


def test_every_flag_names_a_lawful_rephrasing(embedder: OnnxSentenceEmbedder) -> None:
    det = default_detector(embedder, "us")
    verdicts = det.classify(["Where are you from?", "Are you authorised to work in Spain?", "Are you married?",
                             "Tell me about a time you disagreed with a colleague.", "Can you work weekends?"])  # fmt: skip
    assert [v.topic for v in verdicts] == ["origin", None, "family", None, None]
    assert all((v.rephrase is not None) == (v.topic is not None) for v in verdicts)
    assert "authorised to work" in (verdicts[0].rephrase or "")


def test_unknown_jurisdiction_is_a_value_error(embedder: OnnxSentenceEmbedder) -> None:
    with pytest.raises(ValueError, match="jurisdiction"):
        ProtectedTopicDetector(embedder, load_question_set(REFERENCE_EXAMPLES), "fr")  # type: ignore[arg-type]


def test_classify_questions_command() -> None:
    stdin = "How old are you?\n\nCan you work weekends?\nWhat is your current salary?\n"
    out = subprocess.run([sys.executable, "-m", "pipeline", "classify-questions", "--jurisdiction", "us"],
                         input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)  # fmt: skip
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["How old are you?", "Can you work weekends?", "What is your current salary?"]
    assert [r["topic"] for r in rows] == ["age", None, "salary_history"]
    assert all(set(r) == {"text", "topic", "score", "rephrase"} for r in rows)
    assert rows[1]["rephrase"] is None and isinstance(rows[1]["score"], float)
    bad = subprocess.run([sys.executable, "-m", "pipeline", "classify-questions", "--jurisdiction", "mars"],
                         input="", capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "jurisdiction" in bad.stderr and "Traceback" not in bad.stderr


REWORDINGS = ROOT / "tests" / "data" / "guide_rewordings.jsonl"


GUIDE = [GuideItem("q1", "Tell me about a distributed system you designed.", "system design"),
         GuideItem("q2", "Describe a production incident you led and what you learned.", "operations"),
         GuideItem("q3", "How do you review a teammate's code?", "collaboration")]  # fmt: skip


def test_guide_rewordings_are_curated_as_documented() -> None:
    """Every reworded question names a question of its own guide; no asked question is in two parts (a leak would
    make a held-out figure a tuning one); the parts have the documented sizes."""
    guides, asked = load_guide_rewordings(REWORDINGS)
    for a in asked:
        assert a["guide"] in guides, a
        assert a["expected"] is None or a["expected"] in {i.question_id for i in guides[a["guide"]]}, a
    parts: dict[str, set[str]] = {}
    for a in asked:
        parts.setdefault(a["split"], set()).add(f"{a['guide']}: {a['asked'].lower()}")
    assert set(parts) == {"tune", "heldout", "heldout2"}
    assert not parts["tune"] & parts["heldout"] and not parts["tune"] & parts["heldout2"]
    tune_guides = {a["guide"] for a in asked if a["split"] == "tune"}
    assert not tune_guides & {a["guide"] for a in asked if a["split"] == "heldout2"}  # part 2: guides never tuned on
    assert (len(tune_guides), len(parts["tune"]), len(parts["heldout"]), len(parts["heldout2"])) == (11, 229, 24, 88)


@pytest.mark.parametrize("split", ["heldout", "heldout2"])
def test_coverage_matching_on_reworded_guide_questions(embedder: OnnxSentenceEmbedder, split: str) -> None:
    scores = coverage_accuracy(embedder, REWORDINGS, split=split)
    assert scores["n"] >= 20
    # measured once: 0.875 (24 questions) and 0.841 (88); the cosine + key-terms matcher it replaced: 0.792 / 0.807
    assert scores["accuracy"] >= 0.8, scores


@pytest.mark.xfail(strict=True, reason="held-out coverage accuracy is 0.875 / 0.841 (parts 1 / 2) with MiniLM and "
                   "the generic-question penalty; target 0.9; none of the methods compared by "
                   "benchmarks.guide_methods reaches it (README: Live guidance)")  # fmt: skip
def test_coverage_matching_meets_the_issue_target(embedder: OnnxSentenceEmbedder) -> None:
    for split in ("heldout", "heldout2"):
        assert coverage_accuracy(embedder, REWORDINGS, split=split)["accuracy"] >= 0.9, split


def test_guide_matcher_refuses_unknown_settings(embedder: OnnxSentenceEmbedder) -> None:
    reference = default_detector(embedder).reference_vectors
    with pytest.raises(ValueError, match="treshold"):
        GuideMatcher(embedder, GUIDE, reference, treshold=0.2)
    with pytest.raises(ValueError, match="reference"):
        GuideMatcher(embedder, GUIDE, reference[:0])


def test_generic_interview_questions_match_no_guide_question(embedder: OnnxSentenceEmbedder) -> None:
    """Questions of the interview register that no guide asks are extra, while a reworded guide question that
    shares no content word with it still covers it."""
    reference = default_detector(embedder).reference_vectors
    m = GuideMatcher(embedder, GUIDE, reference)
    asked = ["Why do you want to work here?", "When could you start?",
             "What's the largest service you've architected across several machines?"]  # fmt: skip
    got = [m.match(t, v)[0] for t, v in zip(asked, embedder.embed(asked), strict=True)]
    assert got == [None, None, 0]


def _final(pid: str, role: str, seq: int, text: str, start: float, end: float) -> GuidanceFinal:
    return GuidanceFinal(pid, role, seq, text, start, end)


def test_guidance_over_a_scripted_interview(embedder: OnnxSentenceEmbedder) -> None:
    g = Guidance(embedder, default_detector(embedder, "us"), GUIDE)
    script = [
        _final("int", "interviewer", 0, "Thanks for joining. Can you walk me through a distributed system you've built?", 0, 5),
        _final("cand", "candidate", 0, "Sure, I built a payments ledger on Kafka with three services.", 6, 16),
        _final("int", "interviewer", 1, "Why did you choose Kafka?", 17, 19),
        _final("cand", "candidate", 1, "Because we needed replayable ordered events.", 20, 24),
        _final("int", "interviewer", 2, "How old are you, by the way?", 25, 27),
        _final("cand", "candidate", 2, "I'd rather not say.", 28, 29),
        _final("int", "interviewer", 3, "Can you work weekends?", 30, 32),
        _final("cand", "candidate", 3, "Yes, occasionally.", 31, 33),  # starts while the question is open
        _final("int", "interviewer", 4, "What do you look for when you do a code review?", 34, 37),
    ]
    events = [e for f in script for e in g.observe(f)]
    alerts = [e for e in events if isinstance(e, ProtectedTopicAlert)]
    assert [(a.seq, a.topic) for a in alerts] == [(2, "age")]
    assert alerts[0].participant_id == "int" and "18" in alerts[0].rephrase

    coverage = [e for e in events if isinstance(e, GuideCoverageEvent)][-1].to_dict()
    covered = {i["questionId"]: i["coveredBy"]["seq"] if i["coveredBy"] else None for i in coverage["items"]}
    assert covered == {"q1": 0, "q2": None, "q3": 4}
    assert coverage["left"] == ["q2"]
    assert [x["seq"] for x in coverage["extra"]] == [2, 3]  # not in the guide; "why Kafka?" is a follow-up
    design = next(s for s in coverage["sections"] if s["category"] == "system design")
    # answer time 10 + 4 s; the question's time runs from its final (0 s) to the next question not a follow-up (25 s)
    assert design == {"category": "system design", "questions": 1, "covered": 1, "seconds": 14.0, "spentS": 25.0,
                      "budgetS": None, "remainingS": None, "over": False}  # fmt: skip

    first = [e for e in events if isinstance(e, QaPairEvent) and e.question.seq == 0][-1].to_dict()
    assert first["guideItem"] == "q1" and [a["seq"] for a in first["answer"]] == [0]
    assert first["answerWords"] == 11 and first["answerSeconds"] == 10.0
    assert [(f["question"]["seq"], [a["seq"] for a in f["answer"]]) for f in first["followUps"]] == [(1, [1])]

    balance = [e for e in events if isinstance(e, TalkBalanceEvent)][-1].to_dict()
    rows = {r["participantId"]: r for r in balance["participants"]}
    assert rows["int"]["speakingSeconds"] == 14.0 and rows["cand"]["speakingSeconds"] == 17.0
    assert rows["cand"]["interruptions"] == 1 and rows["int"]["interruptions"] == 0
    assert abs(rows["int"]["share"] + rows["cand"]["share"] - 1.0) < 1e-6
    assert balance["longestCandidateAnswer"] == {"questionSeq": 0, "questionParticipantId": "int", "seconds": 10.0,
                                                 "words": 11}  # fmt: skip


BUDGETED = [GuideItem("q1", "Tell me about a distributed system you designed.", "engineering", 10),
            GuideItem("q2", "Describe a production incident you led and what you learned.", "engineering", 10.5),
            GuideItem("q3", "How do you review a teammate's code?", "collaboration")]  # fmt: skip


def test_time_budgets_per_question_and_section(embedder: OnnxSentenceEmbedder) -> None:
    """A guide question's time runs from its question final to the next interviewer question that is not a
    follow-up (segment times only); a section's budget is the sum of its questions' budgets. With budgets, the
    coverage is sent again on each final while a guide question is open, so the time used is live."""
    g = Guidance(embedder, default_detector(embedder, "us"), BUDGETED)
    script = [
        _final("int", "interviewer", 0, "Can you walk me through a distributed system you've built?", 0, 5),
        _final("cand", "candidate", 0, "Sure, I built a payments ledger on Kafka with three services.", 6, 16),
        _final("int", "interviewer", 1, "Why did you choose Kafka?", 17, 19),
        _final("cand", "candidate", 1, "Because we needed replayable ordered events.", 20, 24),
        _final("int", "interviewer", 2, "Can you work weekends?", 25, 27),
        _final("cand", "candidate", 2, "Yes, occasionally.", 28, 29),
        _final("int", "interviewer", 3, "What do you look for when you do a code review?", 30, 34),
        _final("cand", "candidate", 3, "Readable names, tests, and small changes.", 35, 45),
    ]
    per_final = [[e.to_dict() for e in g.observe(f) if isinstance(e, GuideCoverageEvent)] for f in script]

    def section(coverage: dict, category: str) -> dict:
        return next(s for s in coverage["sections"] if s["category"] == category)

    def item(coverage: dict, qid: str) -> dict:
        return next(i for i in coverage["items"] if i["questionId"] == qid)

    # the candidate's first answer: q1 open for 16 s of its 10; its section has 20.5 s
    after_answer = per_final[1][-1]
    assert {k: item(after_answer, "q1")[k] for k in ("budgetS", "spentS", "over")} == {
        "budgetS": 10, "spentS": 16.0, "over": True}
    assert {k: section(after_answer, "engineering")[k] for k in ("budgetS", "spentS", "remainingS", "over")} == {
        "budgetS": 20.5, "spentS": 16.0, "remainingS": 4.5, "over": False}
    # the follow-up's answer is still q1's time
    assert section(per_final[3][-1], "engineering")["spentS"] == 24.0
    # an off-guide question ends q1 at its start (25 s); answering it sends no coverage: no guide time runs
    assert item(per_final[4][-1], "q1")["spentS"] == 25.0
    assert per_final[5] == []
    last = per_final[-1][-1]
    assert section(last, "engineering") == {"category": "engineering", "questions": 2, "covered": 1,
                                            "seconds": 14.0, "spentS": 25.0, "budgetS": 20.5, "remainingS": 0.0,
                                            "over": True}  # fmt: skip
    assert {k: item(last, "q2")[k] for k in ("budgetS", "spentS", "over")} == {
        "budgetS": 10.5, "spentS": 0.0, "over": False}
    # no budget in the section: none reported, the time used still is
    assert section(last, "collaboration") == {"category": "collaboration", "questions": 1, "covered": 1,
                                              "seconds": 10.0, "spentS": 15.0, "budgetS": None, "remainingS": None,
                                              "over": False}  # fmt: skip
    assert item(last, "q3")["budgetS"] is None and item(last, "q3")["spentS"] == 15.0


def test_a_change_of_the_times_alone_is_marked_time_only_until_30_s_have_passed(
        embedder: OnnxSentenceEmbedder) -> None:
    """With budgets a coverage follows every final while a guide question is open. One whose only change since the
    last unmarked coverage is its times (spent, remaining, over, answer seconds) is marked `time_only` (the room
    sends it and does not store it) unless that one is 30 s of room time old; any other change is never marked."""
    g = Guidance(embedder, default_detector(embedder, "us"), BUDGETED)
    script = [_final("int", "interviewer", 0, "Can you walk me through a distributed system you've built?", 0, 5)]
    script += [_final("cand", "candidate", k, f"Then part {k} of the ledger went live.", 6 + 5 * k, 10 + 5 * k)
               for k in range(18)]  # answers ending at 10, 15, ... 95 s: q1 over its 10 s from 15 s on
    script += [_final("int", "interviewer", 1, "What do you look for when you do a code review?", 100, 104),
               _final("cand", "candidate", 18, "Readable names, tests, and small changes.", 105, 115)]
    sent = [(f.end_s, e) for f in script for e in g.observe(f) if isinstance(e, GuideCoverageEvent)]
    assert len(sent) == len(script)
    # q1 asked; then its times every 30 s (room time); q3 asked, 9 s after the last unmarked one
    assert [at for at, e in sent if not e.time_only] == [5, 35, 65, 95, 104]
    assert sent[1][1].to_dict()["items"][0]["over"] is False and sent[2][1].to_dict()["items"][0]["over"] is True
    assert sent[2][1].time_only  # going over the budget is a change of the times
    assert "timeOnly" not in sent[-1][1].to_dict() and "time_only" not in sent[-1][1].to_dict()


@pytest.mark.parametrize("budget", [0, -30, float("nan"), float("inf"), "60", True])
def test_a_bad_time_budget_is_a_value_error(budget: object) -> None:
    with pytest.raises(ValueError, match="q1.*budget_s"):
        GuideItem("q1", "Tell me about a distributed system you designed.", "engineering", budget)  # type: ignore[arg-type]
