"""domain/analysis.py: interview structure from a stored transcript, pseudonymisation, evidence verification and
aggregation (pure functions; no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from domain.analysis import (
    COMPLETED,
    Citation,
    ClaimedCompetency,
    ClaimedScorecard,
    Competency,
    CompetencyScore,
    Evidence,
    GuideQuestion,
    ProviderRun,
    Scorecard,
    aggregate,
    conversation,
    input_hash,
    job_status,
    quote_in,
    rubric_for,
    structure,
    transcript_text,
    verify,
)

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def seg(pid: str, role: str, name: str, seq: int, start: float, end: float, text: str, *,
        stream_offset: float = 0.0, **extra: Any) -> dict[str, Any]:
    """A transcript entry; `stream_offset` is when this participant's stream started (wall seconds after T0)."""
    return {"participantId": pid, "speaker": {"role": role, "name": name, "participantId": pid}, "seq": seq,
            "start_s": start, "end_s": end, "text": text,
            "recordedAt": T0 + timedelta(seconds=stream_offset + end + 0.6), **extra}


def interview() -> list[dict[str, Any]]:
    # The interviewer's stream started 10 s after the candidate's: stream times differ, the timeline must not.
    # Listed in recording order (as the store returns them), which is not strictly the spoken order.
    iv = dict(pid="p_ivy", role="interviewer", name="Ivy Stone", stream_offset=10.0)
    ca = dict(pid="p_ada", role="candidate", name="Ada Lovelace", stream_offset=0.0)
    return [
        seg(**iv, seq=0, start=0.0, end=3.0, text="Hello Ada, tell me about authentication in your team."),
        seg(**ca, seq=0, start=14.0, end=22.0,
            text="We moved every service to short lived tokens with key rotation. Mail me at ada@example.com."),
        seg(**iv, seq=1, start=13.0, end=15.0, text="And how did the audits go?"),
        seg(**ca, seq=1, start=26.0, end=30.0, text="The audits became much simpler, Ivy."),
        seg(**iv, seq=2, start=21.0, end=23.0, text="Tell me about an incident you handled."),
        seg(**ca, seq=2, start=33.5, end=40.0, text="A leaked credential was rotated within minutes."),
        seg(**ca, seq=3, start=41.0, end=42.0, text="Thank you for watching!", hallucination=True),
    ]


GUIDE = [GuideQuestion("q-auth", "How does your team handle authentication?", "security",
                       ("authentication", "rotation")),
         GuideQuestion("q-incident", "Tell me about an incident you handled.", "operations", ("incident",)),
         GuideQuestion("q-never", "What is your favourite database?", "", ("postgres",))]


def test_turns_are_on_one_timeline_pseudonymised_without_flagged_segments() -> None:
    turns = conversation(interview(), personal=["Ada Lovelace", "ada@example.com", "+44 20 7946 0000"])
    assert [(t.label, t.seq) for t in turns] == [("Interviewer 1", 0), ("Candidate", 0), ("Interviewer 1", 1),
                                                 ("Candidate", 1), ("Interviewer 1", 2), ("Candidate", 2)]
    assert turns[0].start_s == 0.0 and abs(turns[1].start_s - 4.0) < 1e-6  # 14 s on a stream 10 s earlier
    text = transcript_text(turns)
    for personal in ("Ada", "Lovelace", "Ivy", "ada@example.com"):
        assert personal not in text
    assert "Hello Candidate," in text and "simpler, Interviewer 1." in text and "[email]" in text
    assert "watching" not in text


def test_question_answer_pairs_group_follow_ups_and_match_the_guide() -> None:
    turns = conversation(interview())
    s = structure(turns, GUIDE)
    assert len(s.pairs) == 2
    first, second = s.pairs
    assert first.guide_question_id == "q-auth" and len(first.exchanges) == 2  # "And how did…" is a follow-up
    assert first.exchanges[1].question == [2] and first.exchanges[1].answer == [3]
    assert second.guide_question_id == "q-incident" and second.exchanges[0].answer == [5]
    assert [g["asked"] for g in s.guide] == [True, True, False]
    assert s.guide[1]["turn"] == 4
    # answer lengths, response delays (question end -> answer start, on the common clock) and talk time
    assert first.exchanges[0].answer_words == 15
    assert abs(first.exchanges[0].response_delay_s - 1.0) < 1e-6  # type: ignore[operator]
    assert abs(s.talk_s_by_role["candidate"] - 18.5) < 1e-6 and abs(s.talk_s_by_role["interviewer"] - 7.0) < 1e-6
    assert abs(s.candidate_share - 18.5 / 25.5) < 1e-6


def test_without_a_guide_a_new_topic_is_a_new_pair() -> None:
    s = structure(conversation(interview()))
    assert [len(p.exchanges) for p in s.pairs] == [2, 1]
    assert all(p.guide_question_id is None for p in s.pairs)


def test_rubric_from_categories_keywords_and_skills() -> None:
    rubric = rubric_for(GUIDE, skills=["Python"])
    assert [c.name for c in rubric] == ["security", "operations", "technical skills", "communication"]
    assert rubric[0].terms == ("authentication", "rotation") and rubric[2].terms == ("python", "postgres")
    assert [c.name for c in rubric_for([])] == ["technical skills", "communication"]


def test_quotes_must_be_in_the_cited_text() -> None:
    text = "We moved every service to short lived tokens with key rotation."
    assert quote_in("short lived tokens with key rotation", text)
    assert quote_in("Short-lived tokens, with key rotation!", text)  # normalised
    assert quote_in("we moved every service to short lived token with key rotation", text)  # small ASR fuzz
    assert not quote_in("we encrypted every database at rest", text)
    assert not quote_in("rotation", text)  # one word is not evidence
    assert not quote_in(text + " and we also hired a security team", text)  # longer than what was said


def claimed(*competencies: tuple[str, float, list[tuple[int, str]]]) -> ClaimedScorecard:
    return ClaimedScorecard([ClaimedCompetency(n, s, "because", [Citation(t, q) for t, q in ev])
                             for n, s, ev in competencies], ["clear"], ["depth"], "hire", 72)


def test_verify_drops_invented_evidence_and_unscored_competencies() -> None:
    turns = conversation(interview())
    rubric = [Competency("security", ("rotation",)), Competency("communication")]
    card, rejected = verify(claimed(
        ("security", 4, [(1, "short lived tokens with key rotation"), (1, "we use hardware keys everywhere"),
                         (99, "nothing here at all")]),
        ("communication", 3, [(3, "I founded the company")]),
        ("astrology", 5, [(1, "short lived tokens")])), turns, rubric)
    assert rejected == 4
    security, communication = card.competencies
    assert security.score == 4 and [(e.participant_id, e.seq) for e in security.evidence] == [("p_ada", 0)]
    assert communication.score is None and communication.evidence == []
    assert card.recommendation == "hire" and card.overall == 72


def run(provider: str, scores: dict[str, float | None], rec: str = "hire", overall: float = 70.0,
        status: str = COMPLETED) -> ProviderRun:
    comps = [CompetencyScore(n, s, f"{provider} says", [Evidence("p_ada", i, f"quote {provider} {n}")]
                             if s is not None else []) for i, (n, s) in enumerate(scores.items())]
    return ProviderRun(provider, "m", "llm", status,
                       scorecard=Scorecard(comps, [f"{provider} strength"], ["listen more"], rec, overall))


def test_aggregate_median_spread_union_and_disagreement() -> None:
    rubric = [Competency("security"), Competency("communication")]
    agg = aggregate([run("a", {"security": 4, "communication": 3}, "hire", 70),
                     run("b", {"security": 1, "communication": 3}, "no_hire", 40),
                     run("c", {"security": 4, "communication": None}, "strong_hire", 90),
                     run("d", {"security": 0}, status="failed")], rubric)
    assert agg is not None
    security, communication = agg["competencies"]
    assert security["score"] == 4 and security["spread"] == 3 and security["flagged"]
    assert communication["score"] == 3 and not communication["flagged"]
    assert len(security["evidence"]) == 3 and len(communication["evidence"]) == 2
    assert agg["recommendation"] == "hire" and agg["overall"] == 70 and agg["basis"] == ["a", "b", "c"]
    assert agg["improvements"] == ["listen more"] and agg["flagged"] == ["security"]
    assert aggregate([run("x", {}, status="failed")], rubric) is None


def test_status_and_replayable_input_hash() -> None:
    ok, bad = run("openai", {}), run("anthropic", {}, status="failed")
    assert job_status([ok, bad], ["openai", "anthropic"]) == "partial"
    assert job_status([ok], ["openai"]) == "completed"
    assert job_status([bad], ["anthropic"]) == "failed"
    assert job_status([run("heuristic", {})], []) == "completed"
    turns = conversation(interview())
    rubric = rubric_for(GUIDE)
    assert input_hash(turns, rubric) == input_hash(conversation(interview()), rubric_for(GUIDE))
    assert input_hash(turns, rubric) != input_hash(turns[:-1], rubric)
