// The interview report (/app/interviews/{id}/report): the scorecard after the interview, with its evidence.
//
// What it reads: GET /api/interviews/{id} (the interview and its stored transcript, revisions applied),
// GET .../analysis (status, the aggregate scorecard, each provider's run, the review and the policy) and
// GET .../structure (question/answer pairs, talk time, per-speaker tone of words and keywords, all from the
// transcript's text). Every quote, keyword and tone point names its segments as (participantId, seq): a click
// scrolls the transcript to `#seg-<participantId>-<seq>` and highlights it.
//
// Review (hr and admin): POST .../analysis/review {"action": "edit"|"confirm"|"reject", "scorecard", "note"}.
// A server without that route answers 404/405/501: the controls then say review is not available.
//
// Everything here is advisory and says so: scores are for a person to weigh, never a decision.
import { ApiError } from "/static/app_api.js";
import { el, fmtTime, pageHeading, toast } from "/static/ui.js";

const RECOMMENDATIONS = ["strong_hire", "hire", "undecided", "no_hire", "strong_no_hire"]; // domain/model.py
const SCORE_MAX = 5;
const SPEAKER_COLOURS = 6; // --s1 .. --s6 in app.css
const words = (text) => String(text ?? "").replace(/_/g, " ");
const sentence = (text) => words(text).replace(/^./, (c) => c.toUpperCase());
const segId = (pid, seq) => `seg-${pid}-${seq}`;
const reducedMotion = () => window.matchMedia("(prefers-reduced-motion: reduce)").matches;

function fmtScore(score, max = SCORE_MAX) {
  return score === null || score === undefined ? "—" : `${Number(score).toFixed(1).replace(/\.0$/, "")} / ${max}`;
}

function section(id, title, ...children) {
  return el("section", { class: "panel report-section", "aria-labelledby": id },
    el("h2", { id, text: title }), ...children);
}

// ---- jumping to segments ------------------------------------------------------------------------------------

/** Highlight the segments `seqs` of participant `pid` and bring the first into view (focus moves to it). */
function jumpTo(root, pid, seqs) {
  for (const node of root.querySelectorAll(".seg.highlight")) node.classList.remove("highlight");
  const targets = [...new Set(seqs)].map((seq) => document.getElementById(segId(pid, seq))).filter(Boolean);
  if (!targets.length) {
    toast("That sentence is not in the transcript (it may have been erased).", { kind: "info" });
    return;
  }
  for (const node of targets) node.classList.add("highlight");
  targets[0].scrollIntoView({ block: "center", behavior: reducedMotion() ? "auto" : "smooth" });
  targets[0].focus({ preventScroll: true });
}

function segmentLink(ref, text, extra = {}) {
  return el("a", { href: `#${segId(ref.participantId, ref.seq)}`, class: "goto", ...extra,
    dataset: { pid: ref.participantId, seqs: String(ref.seq) } }, text);
}

function quoteLink(evidence, speakerName) {
  return segmentLink(evidence, `“${evidence.quote}”`, {
    class: "goto evidence", title: `${speakerName(evidence.participantId)}, sentence ${evidence.seq + 1}` });
}

// ---- transcript ---------------------------------------------------------------------------------------------

function transcriptSection(segments, speakers) {
  const list = el("ol", { class: "report-segments" });
  for (const s of segments) {
    const who = speakers.get(s.participantId);
    const tags = [];
    if (s.revision) tags.push(el("span", { class: "tag", text: "revised" }));
    if (s.crosstalk) tags.push(el("span", { class: "tag", text: "cross-talk · not analysed" }));
    if (s.hallucination) tags.push(el("span", { class: "tag", text: "discarded · not analysed" }));
    const item = el("li", {
      id: segId(s.participantId, s.seq), tabindex: "-1",
      class: `seg${s.revision ? " revised" : ""}${s.crosstalk ? " crosstalk" : ""}${s.hallucination ? " hallucination" : ""}`,
    },
    el("div", { class: "who" }, who?.name || words(s.speaker?.role),
      el("small", {}, `${words(s.speaker?.role)} · `, el("time", { text: fmtTime(s.start_s) }))),
    el("div", { class: "text" }, s.text ?? "[unreadable]", ...tags,
      s.revision && s.originalText ? el("details", { class: "original" },
        el("summary", { text: "Live text before the revision" }), el("p", { text: s.originalText })) : null));
    if (who) item.style.setProperty("--speaker", who.colour);
    list.append(item);
  }
  return el("section", { class: "panel report-transcript", "aria-labelledby": "transcript-title" },
    el("h2", { id: "transcript-title", text: "Transcript" }),
    el("p", { class: "hint", text: "Speech to text, with later, more confident decodes applied (marked revised)." }),
    segments.length ? list : el("p", { class: "muted", text: "No transcript was stored." }));
}

// ---- scorecards ---------------------------------------------------------------------------------------------

function scoreBar(score) {
  const bar = el("span", { class: "score-bar", "aria-hidden": "true" }, el("span", { class: "fill" }));
  bar.firstChild.style.width = `${score === null || score === undefined ? 0 : (100 * score) / SCORE_MAX}%`;
  return bar;
}

function rationaleOf(c) {
  if (c.rationale) return c.rationale;
  const entries = Object.entries(c.rationales || {});
  if (entries.length === 1) return entries[0][1];
  return entries.map(([provider, text]) => `${provider}: ${text}`).join(" · ");
}

function competencyTable(card, speakerName, caption) {
  const rows = card.competencies.map((c) => el("tr", { class: c.flagged ? "flagged" : null },
    el("th", { scope: "row" }, words(c.name),
      c.flagged ? el("span", { class: "badge", text: "disagree", title: `The providers' scores are ${c.spread} points apart` }) : null),
    el("td", { class: "score" }, scoreBar(c.score), el("span", { text: fmtScore(c.score) }),
      c.scores && Object.keys(c.scores).length > 1
        ? el("small", { class: "muted per-provider", text: Object.entries(c.scores).map(([p, v]) => `${p} ${v}`).join(" · ") }) : null),
    el("td", {}, el("p", { class: "rationale", text: rationaleOf(c) || "—" }),
      c.evidence?.length
        ? el("ul", { class: "evidence-list", "aria-label": `Evidence for ${words(c.name)}` },
          c.evidence.map((e) => el("li", {}, quoteLink(e, speakerName))))
        : el("p", { class: "muted small", text: "No verified evidence: no score." }))));
  return el("div", { class: "table-wrap" }, el("table", { class: "scorecard" },
    el("caption", { class: "visually-hidden", text: caption }),
    el("thead", {}, el("tr", {}, ["Competency", "Score", "Rationale and evidence"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows)));
}

function listOrNone(items, label) {
  return items?.length ? el("ul", { "aria-label": label }, items.map((s) => el("li", { text: s })))
    : el("p", { class: "muted", text: "None given." });
}

function scorecardSection(analysis, speakerName) {
  const agg = analysis.aggregate;
  const body = [];
  if (!agg) {
    const text = { pending: "The analysis is waiting to run.", running: "The analysis is running; reload in a moment.",
      failed: `The analysis failed${analysis.error ? `: ${analysis.error}` : "."}` }[analysis.status]
      || "There is no scorecard yet. The analysis runs when the interview is completed.";
    body.push(el("p", { class: "muted", role: "status", text }));
  } else {
    const confirmed = analysis.review?.status === "confirmed" && analysis.version === "confirmed";
    body.push(
      el("dl", { class: "score-summary" },
        el("div", {}, el("dt", { text: "Overall" }), el("dd", { class: "big", text: agg.overall === null ? "—" : `${agg.overall} / 100` })),
        el("div", {}, el("dt", { text: "Recommendation (advisory)" }), el("dd", { class: "big", text: sentence(agg.recommendation) })),
        el("div", {}, el("dt", { text: "Based on" }),
          el("dd", { text: confirmed ? "the reviewer's confirmed scorecard" : (agg.basis || []).join(", ") || "—" }))),
      agg.flagged?.length ? el("p", { class: "warning", text: `Providers disagree by 2 points or more on: ${agg.flagged.map(words).join(", ")}. Check the evidence.` }) : null,
      competencyTable(agg, speakerName, "Aggregated scorecard"),
      el("div", { class: "grid-2" },
        el("div", {}, el("h3", { text: "Strengths" }), listOrNone(agg.strengths, "Strengths")),
        el("div", {}, el("h3", { text: "To improve" }), listOrNone(agg.improvements, "To improve"))));
  }
  return section("scorecard-title", "Scorecard", el("p", { class: "hint",
    text: `Analysis ${words(analysis.status)}. Per competency the median of the providers' scores (0–5); every score rests on quotes checked against the transcript.` }), ...body);
}

function providersSection(analysis, speakerName) {
  const runs = analysis.providers || [];
  const items = runs.map((run) => {
    const facts = [run.kind === "heuristic" ? "heuristic (local, no model)" : run.model, words(run.status),
      `${Number(run.latencySeconds).toFixed(1)} s`, run.attempts > 1 ? `${run.attempts} attempts` : null,
      run.evidenceRejected ? `${run.evidenceRejected} quote${run.evidenceRejected === 1 ? "" : "s"} rejected` : null].filter(Boolean);
    return el("details", { class: "provider", dataset: { provider: run.provider } },
      el("summary", {}, el("strong", { text: run.provider }), el("span", { class: "muted", text: ` · ${facts.join(" · ")}` })),
      run.scorecard
        ? [el("p", { class: "small", text: `Overall ${run.scorecard.overall ?? "—"} / 100 · ${words(run.scorecard.recommendation)} · prompt ${run.promptVersion || "—"}` }),
          competencyTable(run.scorecard, speakerName, `Scorecard of ${run.provider}`)]
        : el("p", { class: "form-error", text: run.error || "No scorecard." }));
  });
  return section("providers-title", "Each provider's scorecard",
    runs.length ? items : el("p", { class: "muted", text: "No provider has run yet." }));
}

// ---- review -------------------------------------------------------------------------------------------------

function reviewHistory(review) {
  const history = Array.isArray(review?.history) ? review.history : [];
  if (!history.length) return el("p", { class: "muted", text: "Not reviewed yet." });
  return el("ol", { class: "review-history" }, history.map((h) => el("li", {},
    `${words(h.action || h.status || "change")}`,
    h.by ? ` by ${h.by}` : "", h.at ? el("span", {}, " · ", el("time", { datetime: h.at, text: new Date(h.at).toLocaleString() })) : "",
    h.note ? el("span", { class: "muted", text: ` — ${h.note}` }) : "")));
}

function reviewSection(ctx, analysis, iid) {
  const review = analysis.review || { status: "unreviewed" };
  const status = el("p", {}, "Review: ", el("strong", { text: words(review.status || "unreviewed") }));
  if (ctx.me.role !== "hr" && ctx.me.role !== "admin") {
    return section("review-title", "Review", status, reviewHistory(review));
  }
  const agg = analysis.aggregate;
  if (!agg) return section("review-title", "Review", status, el("p", { class: "muted", text: "There is nothing to review yet." }));

  const inputs = agg.competencies.map((c, i) => {
    const score = el("input", { id: `review-score-${i}`, type: "number", min: "0", max: String(SCORE_MAX), step: "0.5",
      value: c.score === null || c.score === undefined ? "" : String(c.score), inputmode: "decimal" });
    const rationale = el("textarea", { id: `review-rationale-${i}`, rows: "2", maxlength: "2000", value: rationaleOf(c) });
    return { c, score, rationale };
  });
  const overall = el("input", { id: "review-overall", type: "number", min: "0", max: "100", step: "1",
    value: agg.overall === null ? "" : String(agg.overall) });
  const recommendation = el("select", { id: "review-recommendation" },
    RECOMMENDATIONS.map((r) => el("option", { value: r, text: words(r), selected: r === agg.recommendation })));
  const strengths = el("textarea", { id: "review-strengths", rows: "3", value: (agg.strengths || []).join("\n") });
  const improvements = el("textarea", { id: "review-improvements", rows: "3", value: (agg.improvements || []).join("\n") });
  const note = el("textarea", { id: "review-note", rows: "2", maxlength: "2000" });
  const error = el("p", { class: "form-error", role: "alert", id: "review-error" });
  const buttons = [["edit", "Save edits", ""], ["confirm", "Confirm scorecard", "primary"], ["reject", "Reject scorecard", "danger"]]
    .map(([action, text, cls]) => el("button", { type: "submit", value: action, class: cls, text }));
  const lines = (area) => area.value.split("\n").map((s) => s.trim()).filter(Boolean);

  const scorecard = () => ({
    competencies: inputs.map(({ c, score, rationale }) => ({
      name: c.name, score: score.value === "" ? null : Number(score.value), rationale: rationale.value.trim(),
      evidence: (c.evidence || []).map((e) => ({ participantId: e.participantId, seq: e.seq, quote: e.quote })),
      flagged: Boolean(c.flagged),
    })),
    strengths: lines(strengths), improvements: lines(improvements), recommendation: recommendation.value,
    overall: overall.value === "" ? null : Number(overall.value),
  });

  const form = el("form", { class: "form review-form", novalidate: true, "aria-describedby": "review-error" },
    el("div", { class: "review-grid" }, inputs.map(({ c, score, rationale }) => el("fieldset", {},
      el("legend", { text: words(c.name) }),
      el("div", { class: "field" }, el("label", { for: score.id, text: `Score (0–${SCORE_MAX}, empty: none)` }), score),
      el("div", { class: "field" }, el("label", { for: rationale.id, text: "Rationale" }), rationale)))),
    el("div", { class: "grid-2" },
      el("div", { class: "field" }, el("label", { for: overall.id, text: "Overall (0–100)" }), overall),
      el("div", { class: "field" }, el("label", { for: recommendation.id, text: "Recommendation" }), recommendation)),
    el("div", { class: "grid-2" },
      el("div", { class: "field" }, el("label", { for: strengths.id, text: "Strengths (one per line)" }), strengths),
      el("div", { class: "field" }, el("label", { for: improvements.id, text: "To improve (one per line)" }), improvements)),
    el("div", { class: "field" }, el("label", { for: note.id, text: "Note for the audit trail" }), note),
    error, el("div", { class: "actions" }, buttons));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const action = event.submitter?.value || "edit";
    error.textContent = "";
    const card = scorecard();
    const bad = inputs.find(({ score }) => score.value !== "" && !(Number(score.value) >= 0 && Number(score.value) <= SCORE_MAX));
    if (bad) {
      bad.score.setAttribute("aria-invalid", "true");
      error.textContent = `A score is between 0 and ${SCORE_MAX}.`;
      bad.score.focus();
      return;
    }
    for (const b of buttons) b.disabled = true;
    try {
      await ctx.api.post(`/api/interviews/${iid}/analysis/review`, { action, scorecard: card, note: note.value.trim() });
      toast({ edit: "Edits saved.", confirm: "Scorecard confirmed.", reject: "Scorecard rejected." }[action], { kind: "info" });
      ctx.navigate(window.location.pathname, { replace: true });
    } catch (exc) {
      if (exc instanceof ApiError && [404, 405, 501].includes(exc.status)) {
        error.textContent = "Review is not available on this server yet.";
      } else {
        error.textContent = `Not saved: ${exc.message}${exc.fields ? ` ${Object.entries(exc.fields).map(([k, v]) => `${k}: ${v}`).join("; ")}` : ""}`;
      }
      for (const b of buttons) b.disabled = false;
    }
  });
  return section("review-title", "Review", status, reviewHistory(review),
    el("p", { class: "hint", text: "Edit scores and text, then confirm or reject. Every change keeps who, when, before and after." }),
    form);
}

// ---- structure: Q&A, talk time, tone, keywords ---------------------------------------------------------------

function qaSection(structure, guideText) {
  const exchange = (ex, kind) => el("div", { class: `qa-exchange qa-${kind}` },
    el("p", { class: "qa-q" }, el("span", { class: "qa-tag", text: kind === "followup" ? "Follow-up" : "Q" }),
      ex.question[0] ? segmentLink(ex.question[0], ex.questionText) : ex.questionText),
    ex.answer.length
      ? el("p", { class: "qa-a" }, el("span", { class: "qa-tag", text: "A" }), segmentLink(ex.answer[0], ex.answerText))
      : el("p", { class: "qa-a muted", text: "Not answered." }),
    el("p", { class: "hint", text: [`${ex.answerWords} words`, `${ex.answerSeconds} s`,
      ex.responseDelaySeconds === null ? null : `answered after ${ex.responseDelaySeconds} s`].filter(Boolean).join(" · ") }));
  const pairs = structure.pairs.map((p) => el("li", { class: "qa-pair" },
    p.guideQuestionId ? el("p", { class: "small muted", text: `Guide question: ${guideText(p.guideQuestionId)}` }) : null,
    exchange(p.question, "question"), p.followUps.map((f) => exchange(f, "followup"))));
  const guide = structure.guide.length ? el("ul", { class: "guide-coverage", "aria-label": "Guide questions" },
    structure.guide.map((g) => el("li", { dataset: { asked: String(g.asked) } },
      el("span", { class: "visually-hidden", text: g.asked ? "Asked: " : "Not asked: " }),
      g.at ? segmentLink(g.at, g.text) : g.text))) : null;
  return section("qa-title", "Questions and answers",
    el("p", { class: "hint", text: `Answers: median ${structure.answerWordsMedian ?? "—"} words, answered after a median ${structure.responseDelayMedianSeconds ?? "—"} s.` }),
    structure.pairs.length ? el("ol", { class: "qa-list" }, pairs) : el("p", { class: "muted", text: "No question and answer found." }),
    guide ? [el("h3", { text: "Guide coverage" }), guide] : null);
}

function talkSection(structure) {
  const speakers = structure.speakers;
  const bar = el("div", { class: "talk-bar", role: "img",
    "aria-label": `Talk time: ${speakers.map((s) => `${s.name || s.label} ${Math.round(s.talkShare * 100)} %`).join(", ")}` });
  for (const s of speakers) {
    const part = el("span", { class: "talk-part", title: `${s.name || s.label}: ${fmtTime(s.talkSeconds)}`,
      text: s.talkShare >= 0.12 ? `${Math.round(s.talkShare * 100)} %` : "" });
    part.style.width = `${s.talkShare * 100}%`;
    part.style.setProperty("--speaker", s.colour);
    bar.append(part);
  }
  const legend = el("ul", { class: "talk-legend" }, speakers.map((s) => {
    const item = el("li", {}, el("b", { text: s.name || s.label }), ` (${words(s.role)}): ${fmtTime(s.talkSeconds)} · ${Math.round(s.talkShare * 100)} % · ${s.turns} sentences · ${s.words} words`);
    item.style.setProperty("--speaker", s.colour);
    return item;
  }));
  return section("talk-title", "Talk time", bar, legend);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  node.append(...children);
  return node;
}

function leaning(v) {
  if (v >= 0.25) return "leaning positive";
  if (v <= -0.25) return "leaning negative";
  return "neutral";
}

function toneChart(root, s, endS) {
  const W = 600;
  const H = 90;
  const x = (t) => 8 + ((W - 16) * t) / Math.max(endS, 1);
  const y = (v) => H / 2 - (v * (H / 2 - 6));
  const points = s.tone;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "tone-chart", role: "img",
    "aria-label": `Tone of ${s.name || s.label}'s words over the interview, ${points.length} sentences, last ${leaning(points.at(-1)?.rolling ?? 0)}` },
  svg("line", { x1: 0, x2: W, y1: y(0), y2: y(0), class: "zero" }),
  svg("polyline", { class: "rolling", points: points.map((p) => `${x(p.at_s)},${y(p.rolling)}`).join(" ") }),
  ...points.map((p) => {
    const dot = svg("circle", { cx: x(p.at_s), cy: y(p.score), r: 5, class: "dot" },
      svg("title", {}, `${fmtTime(p.at_s)}: ${p.score.toFixed(2)} (sentence ${p.seq + 1})`));
    dot.addEventListener("click", () => jumpTo(root, s.participantId, [p.seq]));
    return dot;
  }));
  chart.style.setProperty("--speaker", s.colour);
  const list = el("details", { class: "tone-points" }, el("summary", { text: "As a list" }),
    el("ol", {}, points.map((p) => el("li", {}, segmentLink({ participantId: s.participantId, seq: p.seq },
      `${fmtTime(p.at_s)} · ${p.score >= 0 ? "+" : ""}${p.score.toFixed(2)} (smoothed ${p.rolling.toFixed(2)})`)))));
  return el("div", { class: "tone-speaker" }, el("h3", { text: `${s.name || s.label} (${words(s.role)})` }), chart, list);
}

function toneSection(root, structure, loadTone, policy, colourOf) {
  const note = el("p", { class: "advisory",
    text: "Tone of words: the sentiment of the transcript's text (VADER), per sentence (dots) and smoothed (line), from −1 to +1. Text only: nothing is inferred from voice, face or manner. Advisory." });
  const body = el("div", { class: "tone-body" });
  const draw = (st) => {
    for (const s of st.speakers) s.colour = colourOf(s.participantId);
    const endS = Math.max(1, ...st.speakers.flatMap((s) => (s.tone || []).map((p) => p.at_s)));
    body.replaceChildren(...st.speakers.filter((s) => s.tone?.length).map((s) => toneChart(root, s, endS)));
    if (!body.children.length) body.append(el("p", { class: "muted", text: "No sentences to show." }));
  };
  if (structure.tone) draw(structure);
  else {
    const show = el("button", { type: "button", class: "small", text: "Show the tone of words" });
    show.addEventListener("click", async () => {
      show.disabled = true;
      try {
        const st = await loadTone();
        draw(st);
      } catch (exc) {
        toast(`No tone: ${exc.message}`);
        show.disabled = false;
      }
    });
    body.append(el("p", { class: "muted", text: policy?.jurisdiction === "eu"
      ? "Off by default under the EU policy. Shown on request, computed from the text only." : "Not computed." }), show);
  }
  return section("tone-title", "Tone of words per speaker (text only)", note, body);
}

function keywordsSection(root, structure) {
  const groups = structure.speakers.filter((s) => s.keywords.length).map((s) => {
    const group = el("div", { class: "kw-speaker" }, el("h3", { text: s.name || s.label }),
      el("div", { class: "chips" }, s.keywords.map((k) => {
        const chip = el("button", { type: "button", class: "chip", "aria-pressed": "false",
          title: `said in ${k.seqs.length} sentence${k.seqs.length === 1 ? "" : "s"}` },
        k.term, el("span", { class: "count", text: `×${k.count}` }));
        chip.addEventListener("click", () => {
          for (const other of root.querySelectorAll(".chip[aria-pressed='true']")) other.setAttribute("aria-pressed", "false");
          chip.setAttribute("aria-pressed", "true");
          jumpTo(root, s.participantId, k.seqs);
        });
        return chip;
      })));
    group.style.setProperty("--speaker", s.colour);
    return group;
  });
  return section("keywords-title", "Keywords",
    el("p", { class: "hint", text: "Most distinctive terms per speaker; a click highlights the sentences they come from." }),
    groups.length ? groups : el("p", { class: "muted", text: "No keywords." }));
}

// ---- the view -----------------------------------------------------------------------------------------------

async function optional(promise, fallback) {
  try {
    return await promise;
  } catch (exc) {
    if (exc instanceof ApiError && exc.code !== "session_ended" && exc.status !== 0) return fallback(exc);
    throw exc;
  }
}

function advisoryBanner(policy, review) {
  const state = review?.status === "confirmed" ? "A reviewer confirmed this scorecard."
    : policy?.final ? "" : "Not final until a reviewer confirms it.";
  return el("p", { class: "advisory report-advisory", role: "note" }, el("strong", { text: "Advisory." }),
    ` These scores help a person decide; they decide nothing. Computed from the transcript's text only (never voice, tone of voice or faces). ${state}`);
}

export async function renderReport(ctx) {
  const { root, api, params, me } = ctx;
  const iid = encodeURIComponent(params.id);
  const [interview, analysis, structure] = await Promise.all([
    api.get(`/api/interviews/${iid}`),
    optional(api.get(`/api/interviews/${iid}/analysis`), () => null),
    optional(api.get(`/api/interviews/${iid}/structure`), () => null),
  ]);
  const candidate = me.role === "hr" || me.role === "admin"
    ? await optional(api.get(`/api/candidates/${encodeURIComponent(interview.candidateId)}`), () => null) : null;
  const title = `Report: interview with ${candidate?.name || "the candidate"}`;
  const segments = interview.transcription?.segments || [];

  // Speakers: names from the transcript, colours in order of first appearance (as on the live overlay).
  const speakers = new Map();
  for (const s of [...(structure?.speakers || []), ...segments.map((g) => ({ participantId: g.participantId,
    name: g.speaker?.name, role: g.speaker?.role }))]) {
    if (!speakers.has(s.participantId)) {
      speakers.set(s.participantId, { name: s.name || words(s.role), role: s.role,
        colour: `var(--s${(speakers.size % SPEAKER_COLOURS) + 1})` });
    }
  }
  for (const s of structure?.speakers || []) s.colour = speakers.get(s.participantId).colour;
  const speakerName = (pid) => speakers.get(pid)?.name || "someone";
  const guideText = (qid) => interview.questions?.find((q) => q.questionId === qid)?.text || qid;

  const print = el("button", { type: "button", class: "no-print", text: "Print or save as PDF" });
  print.addEventListener("click", () => window.print());
  const main = el("div", { class: "report-main" },
    analysis ? scorecardSection(analysis, speakerName) : section("scorecard-title", "Scorecard",
      el("p", { class: "muted", text: "The analysis could not be read." })),
    analysis ? providersSection(analysis, speakerName) : null,
    analysis ? reviewSection(ctx, analysis, iid) : null,
    structure ? [talkSection(structure), qaSection(structure, guideText),
      toneSection(root, structure, () => api.get(`/api/interviews/${iid}/structure`, { tone: "true" }), analysis?.policy,
        (pid) => speakers.get(pid)?.colour || "var(--s1)"),
      keywordsSection(root, structure)] : null);
  root.classList.add("report-view");
  root.append(
    el("p", { class: "no-print" }, el("a", { href: `/app/interviews/${iid}`, text: "← Interview details" })),
    el("div", { class: "view-head" }, pageHeading(title),
      el("span", { class: `status status-${interview.status}`, text: words(interview.status) }), print),
    el("p", { class: "muted print-only", text: `Interview ${interview.interviewId} · job ${interview.jobId} · printed ${new Date().toLocaleString()}` }),
    advisoryBanner(analysis?.policy, analysis?.review),
    el("div", { class: "report-grid" }, main, transcriptSection(segments, speakers)));

  root.addEventListener("click", (event) => {
    const link = event.target.closest?.("a.goto");
    if (!link || !root.contains(link)) return;
    event.preventDefault(); // a fragment navigation would also re-run the app's router (popstate)
    jumpTo(root, link.dataset.pid, link.dataset.seqs.split(",").map(Number));
  });
  return title;
}

// Printing opens every collapsed part (each provider's scorecard, the live texts) and closes them again after.
let openedForPrint = [];
window.addEventListener("beforeprint", () => {
  openedForPrint = [...document.querySelectorAll(".report-view details:not([open])")];
  for (const d of openedForPrint) d.open = true;
});
window.addEventListener("afterprint", () => {
  for (const d of openedForPrint) d.open = false;
  openedForPrint = [];
});

export const reportViews = { report: renderReport };
