// Interviewer / observer overlay: live transcript, per-speaker sentiment timeline and keywords, participants.
// Everything shown comes from the `analysis` data channel, one JSON stream event per message
// (the schema of domain/events.py `to_dict()`).
import { Call, decodeToken, secondsLeft, tokenFromLocation } from "/static/call.js";
import { fmtTime, toast } from "/static/ui.js";

const $ = (id) => document.getElementById(id);
const ui = {
  who: $("who"),
  transcript: $("transcript"), transcriptEmpty: $("transcript-empty"), transcriptCount: $("transcript-count"),
  jump: $("jump-latest"), participants: $("participants"), participantsEmpty: $("participants-empty"),
  canvas: $("sentiment-canvas"), legend: $("sentiment-legend"), summary: $("sentiment-summary"), keywords: $("keywords"),
};

let call = null;

// ---------------------------------------------------------------------------------------------------------
// Room model: everything keyed by participantId, segments by participantId + seq.

const speakers = new Map(); // pid -> {pid, name, role, color, present, meter, li, rms, speaking, levelAt}
const segments = new Map(); // "pid:seq" -> {pid, seq, el, final, text, start_s, end_s, revision, original}
const sentiment = new Map(); // pid -> [{seq, score, rolling, t}]
const keywords = new Map(); // pid -> [{term, count, relevance, seqs}]
let selection = null; // {pid, term, seqs:Set} or {pid, seqs:Set} for a clicked sentiment point
let finals = 0;

const PALETTE = ["--s1", "--s2", "--s3", "--s4", "--s5", "--s6"];

function speakerOf(sp) {
  const pid = String(sp?.participantId ?? "");
  let s = speakers.get(pid);
  if (!s) {
    s = {
      pid, name: sp?.name || "Unknown", role: sp?.role || "participant",
      // present: null until a joined/left/level event says otherwise (backlog segments can come first)
      color: PALETTE[speakers.size % PALETTE.length], present: null, li: null, meter: null,
      rms: -100, speaking: false, levelAt: 0,
    };
    speakers.set(pid, s);
    renderParticipant(s);
  } else if (sp?.name && sp.name !== s.name) {
    s.name = sp.name;
    renderParticipant(s);
  }
  return s;
}

function label(s) {
  return s.name && s.name !== "Unknown" ? s.name : s.role;
}

// ---------------------------------------------------------------------------------------------------------
// Transcript

function nearBottom() {
  const el = ui.transcript;
  return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
}

function afterInsert(wasNearBottom) {
  if (wasNearBottom) {
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
    ui.jump.hidden = true;
  } else {
    ui.jump.hidden = false;
  }
}

function segmentElement(s, ev) {
  const el = document.createElement("div");
  el.className = "seg";
  el.dataset.pid = s.pid;
  el.dataset.seq = String(ev.seq);
  el.dataset.role = s.role;
  el.dataset.final = String(Boolean(ev.final));
  el.style.setProperty("--speaker", `var(${s.color})`);
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = label(s);
  const meta = document.createElement("small");
  meta.textContent = `${s.role} · ${fmtTime(ev.start_s)}`;
  who.append(meta);
  const text = document.createElement("div");
  text.className = "text";
  el.append(who, text);
  fillSegment(el, ev);
  return el;
}

function fillSegment(el, ev) {
  const text = el.querySelector(".text");
  text.textContent = ev.text || "";
  el.classList.toggle("partial", !ev.final);
  el.classList.toggle("hallucination", Boolean(ev.hallucination));
  el.dataset.final = String(Boolean(ev.final));
  if (!ev.final) {
    el.setAttribute("aria-hidden", "true"); // partials change constantly; screen readers get the final
  } else {
    el.removeAttribute("aria-hidden");
  }
  if (ev.hallucination) {
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = "possibly misheard · not analysed";
    text.append(tag);
  }
  const conf = Number(ev.confidence);
  el.title = `${fmtTime(ev.start_s)}–${fmtTime(ev.end_s)} into this speaker's stream` +
    (ev.final && Number.isFinite(conf) && conf > 0 ? ` · confidence ${Math.round(conf * 100)}%` : "");
}

function markContinued(el) {
  const prev = el.previousElementSibling;
  el.classList.toggle("continued", Boolean(prev && prev.classList.contains("seg") && prev.dataset.pid === el.dataset.pid));
}

function onSegment(ev) {
  ev.final = ev.type === "segment.final"; // the wire form says it in `type` only
  const s = speakerOf(ev.speaker);
  const key = `${s.pid}:${ev.seq}`;
  const known = segments.get(key);
  if (known?.final) return; // a late partial, or the backlog repeating a final we already show
  const stick = nearBottom();
  if (ev.final && !(ev.text || "").trim()) {
    // The final says there was nothing to transcribe: drop the partial that promised text.
    known?.el.remove();
    segments.delete(key);
    return;
  }
  ui.transcriptEmpty?.remove();
  if (known) {
    if (ev.final) {
      // Replace the element (not just its text) so the aria-live log announces the final once.
      const el = segmentElement(s, ev);
      known.el.replaceWith(el);
      known.el = el;
      markContinued(el);
    } else {
      fillSegment(known.el, ev);
    }
    Object.assign(known, { final: Boolean(ev.final), text: ev.text, start_s: ev.start_s, end_s: ev.end_s });
  } else {
    const el = segmentElement(s, ev);
    ui.transcript.append(el);
    markContinued(el);
    segments.set(key, { pid: s.pid, seq: ev.seq, el, final: Boolean(ev.final), text: ev.text, start_s: ev.start_s, end_s: ev.end_s });
  }
  if (ev.final) {
    finals += 1;
    ui.transcriptCount.textContent = `${finals} sentence${finals === 1 ? "" : "s"}`;
    applySelection();
  }
  afterInsert(stick);
}

// `segment.revised`: a final decoded again with the conversation as context. Its text replaces the final's where
// it stands (quietly: the log announces additions only); the live text stays in the element's tooltip.
function onRevised(ev) {
  ev.final = true;
  const s = speakerOf(ev.speaker);
  const key = `${s.pid}:${ev.seq}`;
  const revision = Number(ev.revision) || 1;
  let known = segments.get(key);
  if (known?.final && (known.revision ?? 0) >= revision) return; // the backlog repeating it, or an older one late
  let original;
  if (known?.final) {
    original = known.original ?? known.text;
    fillSegment(known.el, ev);
  } else {
    // Its final is not shown: the backlog after a restart sends a revised sentence alone, with the live text as
    // `originalText`. It takes the place of a partial shown for it, or arrives as the sentence's final.
    original = String(ev.originalText ?? "");
    const stick = nearBottom();
    ui.transcriptEmpty?.remove();
    const el = segmentElement(s, ev);
    if (known) known.el.replaceWith(el);
    else ui.transcript.append(el);
    markContinued(el);
    known = { pid: s.pid, seq: ev.seq, el, start_s: ev.start_s, end_s: ev.end_s };
    segments.set(key, known);
    finals += 1;
    ui.transcriptCount.textContent = `${finals} sentence${finals === 1 ? "" : "s"}`;
    afterInsert(stick);
  }
  Object.assign(known, { final: true, text: ev.text, revision, original });
  known.el.classList.add("revised");
  known.el.dataset.revision = String(revision);
  if (original) known.el.title += `\nRevised with the conversation as context; live text: “${original}”`;
  applySelection();
}

function systemLine(text) {
  const stick = nearBottom();
  ui.transcriptEmpty?.remove();
  const el = document.createElement("p");
  el.className = "system small muted";
  el.textContent = text;
  ui.transcript.append(el);
  afterInsert(stick);
}

ui.transcript.addEventListener("scroll", () => {
  if (nearBottom()) ui.jump.hidden = true;
});
ui.jump.addEventListener("click", () => {
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
  ui.jump.hidden = true;
});

// ---------------------------------------------------------------------------------------------------------
// Selection: a keyword or sentiment point highlights the transcript segments it came from.

function applySelection() {
  for (const seg of segments.values()) {
    const on = Boolean(selection && seg.pid === selection.pid && selection.seqs.has(Number(seg.seq)));
    seg.el.classList.toggle("highlight", on);
  }
  for (const chip of ui.keywords.querySelectorAll(".chip")) {
    const on = Boolean(selection?.term && chip.dataset.pid === selection.pid && chip.dataset.term === selection.term);
    chip.setAttribute("aria-pressed", String(on));
  }
}

function select(next) {
  selection = next;
  applySelection();
  if (!selection) return;
  const first = [...segments.values()]
    .filter((seg) => seg.pid === selection.pid && selection.seqs.has(Number(seg.seq)))
    .sort((a, b) => a.seq - b.seq)[0];
  first?.el.scrollIntoView({ block: "center", behavior: "smooth" });
}

// ---------------------------------------------------------------------------------------------------------
// Keywords

function segmentSummary(pid, seqs) {
  const lines = [];
  for (const seq of seqs) {
    const seg = segments.get(`${pid}:${seq}`);
    if (seg?.final) lines.push(`${fmtTime(seg.start_s)}  ${seg.text}`);
  }
  return lines.length ? lines.join("\n") : "(sentences not shown yet)";
}

function renderKeywords() {
  const blocks = [];
  for (const [pid, list] of keywords) {
    if (!list.length) continue;
    const s = speakers.get(pid);
    const block = document.createElement("div");
    block.className = "kw-speaker";
    block.style.setProperty("--speaker", `var(${s.color})`);
    const h = document.createElement("h3");
    h.textContent = `${label(s)} (${s.role})`;
    const chips = document.createElement("div");
    chips.className = "chips";
    for (const kw of list.slice(0, 10)) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.dataset.pid = pid;
      chip.dataset.term = kw.term;
      chip.setAttribute("aria-pressed", "false");
      const seqs = (kw.seqs || []).map(Number);
      chip.append(kw.term);
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = `×${kw.count}`;
      chip.append(count);
      chip.setAttribute("aria-label", `${kw.term}, said ${kw.count} time${kw.count === 1 ? "" : "s"}`);
      // The tooltip is built on hover so it shows the segments' current (final) text.
      chip.addEventListener("mouseenter", () => { chip.title = segmentSummary(pid, seqs); });
      chip.addEventListener("focus", () => { chip.title = segmentSummary(pid, seqs); });
      chip.addEventListener("click", () => {
        const same = selection?.term === kw.term && selection.pid === pid;
        select(same ? null : { pid, term: kw.term, seqs: new Set(seqs) });
      });
      chips.append(chip);
    }
    block.append(h, chips);
    blocks.push(block);
  }
  if (blocks.length) ui.keywords.replaceChildren(...blocks);
  applySelection();
}

function onKeywords(ev) {
  const s = speakerOf(ev.speaker);
  const list = Array.isArray(ev.keywords) ? ev.keywords : [];
  keywords.set(s.pid, list.filter((k) => k && typeof k.term === "string"));
  // Keep a clicked keyword's highlight in step with its growing list of segments.
  if (selection?.term && selection.pid === s.pid) {
    const kw = list.find((k) => k.term === selection.term);
    if (kw) selection.seqs = new Set((kw.seqs || []).map(Number));
  }
  renderKeywords();
}

// ---------------------------------------------------------------------------------------------------------
// Sentiment timeline (canvas, drawn by hand): rolling value per speaker over stream time, segment scores as dots.

const PAD = { l: 62, r: 8, t: 8, b: 18 };
let points = []; // hit-test list of drawn dots: {x, y, pid, seq}
let drawQueued = false;

function cssColor(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

function scheduleDraw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    drawSentiment();
  });
}

function drawSentiment() {
  const c = ui.canvas;
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth;
  const h = c.clientHeight;
  if (!w || !h) return;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
  }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  let tMax = 60;
  for (const list of sentiment.values()) for (const p of list) tMax = Math.max(tMax, p.t);
  tMax = Math.ceil(tMax / 30) * 30;
  const x = (t) => PAD.l + (t / tMax) * (w - PAD.l - PAD.r);
  const y = (v) => PAD.t + ((1 - Math.max(-1, Math.min(1, v))) / 2) * (h - PAD.t - PAD.b);

  const muted = cssColor("--muted");
  const border = cssColor("--border");
  g.font = "11px system-ui, sans-serif";
  g.textBaseline = "middle";
  g.lineWidth = 1;
  for (const [v, name] of [[1, "positive"], [0, "neutral"], [-1, "negative"]]) {
    g.strokeStyle = border;
    g.setLineDash(v === 0 ? [] : [3, 4]);
    g.beginPath();
    g.moveTo(PAD.l, y(v));
    g.lineTo(w - PAD.r, y(v));
    g.stroke();
    g.fillStyle = muted;
    g.textAlign = "right";
    g.fillText(name, PAD.l - 6, y(v));
  }
  g.setLineDash([]);
  g.textAlign = "center";
  g.textBaseline = "alphabetic";
  for (let t = 0; t <= tMax; t += tMax <= 120 ? 30 : tMax <= 600 ? 120 : 600) {
    g.fillStyle = muted;
    g.fillText(fmtTime(t), Math.min(Math.max(x(t), PAD.l + 10), w - 16), h - 4);
  }

  points = [];
  for (const [pid, list] of sentiment) {
    const s = speakers.get(pid);
    const color = cssColor(s.color);
    const sorted = [...list].sort((a, b) => a.t - b.t);
    g.globalAlpha = 0.35;
    g.fillStyle = color;
    for (const p of sorted) {
      g.beginPath();
      g.arc(x(p.t), y(p.score), 3, 0, Math.PI * 2);
      g.fill();
      points.push({ x: x(p.t), y: y(p.score), pid, seq: p.seq });
    }
    g.globalAlpha = 1;
    g.strokeStyle = color;
    g.lineWidth = 2.25;
    g.lineJoin = "round";
    g.beginPath();
    sorted.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p.rolling)) : g.moveTo(x(p.t), y(p.rolling))));
    g.stroke();
    const last = sorted[sorted.length - 1];
    if (last) {
      g.fillStyle = color;
      g.beginPath();
      g.arc(x(last.t), y(last.rolling), 3.5, 0, Math.PI * 2);
      g.fill();
    }
  }
}

function leaning(v) {
  if (v >= 0.25) return "leaning positive";
  if (v <= -0.25) return "leaning negative";
  return "neutral";
}

function renderSentimentText() {
  const legend = [];
  const items = [];
  const aria = [];
  for (const [pid, list] of sentiment) {
    const s = speakers.get(pid);
    const last = list.reduce((a, b) => (b.t >= a.t ? b : a));
    const span = document.createElement("span");
    span.style.setProperty("--speaker", `var(${s.color})`);
    span.textContent = label(s);
    legend.push(span);
    const li = document.createElement("li");
    li.style.setProperty("--speaker", `var(${s.color})`);
    const b = document.createElement("b");
    b.textContent = label(s);
    const sign = last.rolling > 0 ? "+" : "";
    li.append(b, ` ${leaning(last.rolling)} · ${sign}${last.rolling.toFixed(2)} · ${list.length} sentence${list.length === 1 ? "" : "s"}`);
    items.push(li);
    aria.push(`${label(s)}: ${leaning(last.rolling)}, ${sign}${last.rolling.toFixed(2)}`);
  }
  ui.legend.replaceChildren(...legend);
  ui.summary.replaceChildren(...items);
  ui.canvas.setAttribute("aria-label", `Sentiment timeline (advisory, from text). ${aria.join("; ")}`);
}

function onSentiment(ev) {
  const s = speakerOf(ev.speaker);
  const score = Number(ev.score);
  const rolling = Number(ev.rolling);
  if (!Number.isFinite(score) || !Number.isFinite(rolling)) return;
  const list = sentiment.get(s.pid) ?? [];
  const point = { seq: ev.seq, score, rolling, t: Number(ev.end_s) || 0 };
  // One point per sentence: a revised sentence's new score (or the backlog repeating one, in order) replaces it.
  const at = list.findIndex((p) => p.seq === ev.seq);
  if (at >= 0) list[at] = point;
  else list.push(point);
  sentiment.set(s.pid, list);
  renderSentimentText();
  scheduleDraw();
}

ui.canvas.addEventListener("click", (e) => {
  const r = ui.canvas.getBoundingClientRect();
  const mx = e.clientX - r.left;
  const my = e.clientY - r.top;
  let best = null;
  let bestD = 12 * 12;
  for (const p of points) {
    const d = (p.x - mx) ** 2 + (p.y - my) ** 2;
    if (d < bestD) { best = p; bestD = d; }
  }
  select(best ? { pid: best.pid, seqs: new Set([Number(best.seq)]) } : null);
});
new ResizeObserver(scheduleDraw).observe(ui.canvas);
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", scheduleDraw);

// ---------------------------------------------------------------------------------------------------------
// Participants and levels

function renderParticipant(s) {
  ui.participantsEmpty?.remove();
  if (!s.li) {
    s.li = document.createElement("li");
    s.li.style.setProperty("--speaker", `var(${s.color})`);
    const dot = document.createElement("span");
    dot.className = "dot";
    const name = document.createElement("span");
    name.className = "name";
    const role = document.createElement("span");
    role.className = "role";
    s.meter = document.createElement("div");
    s.meter.className = "meter";
    s.meter.setAttribute("role", "meter");
    s.meter.setAttribute("aria-valuemin", "0");
    s.meter.setAttribute("aria-valuemax", "100");
    s.meter.setAttribute("aria-valuenow", "0");
    const fill = document.createElement("div");
    fill.className = "fill";
    s.meter.append(fill);
    s.li.append(dot, name, role, s.meter);
    ui.participants.append(s.li);
  }
  s.li.dataset.pid = s.pid;
  s.li.querySelector(".name").textContent = label(s);
  s.li.querySelector(".role").textContent = s.present === false ? `${s.role} · left` : s.role;
  s.li.classList.toggle("gone", s.present === false);
  s.meter.setAttribute("aria-label", `${label(s)} audio level`);
}

let levelsQueued = false;
function scheduleLevels() {
  if (levelsQueued) return;
  levelsQueued = true;
  requestAnimationFrame(() => {
    levelsQueued = false;
    const now = performance.now();
    for (const s of speakers.values()) {
      if (!s.meter) continue;
      const stale = now - s.levelAt > 1500 || s.present === false; // no level for a while: show silence
      const pct = stale ? 0 : Math.max(0, Math.min(100, ((s.rms + 60) / 60) * 100));
      s.meter.firstElementChild.style.width = `${pct.toFixed(1)}%`;
      s.meter.classList.toggle("speaking", !stale && s.speaking);
      s.meter.setAttribute("aria-valuenow", String(Math.round(pct)));
    }
  });
}
setInterval(scheduleLevels, 1000);

function onLevel(ev) {
  const s = speakerOf(ev.speaker);
  s.rms = Number(ev.rms_dbfs);
  s.speaking = Boolean(ev.speaking);
  s.levelAt = performance.now();
  if (s.present !== true) {
    s.present = true;
    renderParticipant(s);
  }
  scheduleLevels();
}

function onParticipant(ev) {
  const s = speakerOf(ev.speaker);
  const present = ev.type === "participant.joined";
  if (present === s.present) return;
  s.present = present;
  renderParticipant(s);
  systemLine(`${label(s)} (${s.role}) ${present ? "joined" : "left"}`);
  scheduleLevels();
}

// ---------------------------------------------------------------------------------------------------------
// Data channel

function onError(ev) {
  const who = ev.speaker ? `${ev.speaker.name || ev.speaker.role}: ` : "";
  const seq = ev.affected && ev.affected.seq !== undefined ? ` (sentence #${ev.affected.seq})` : "";
  toast(`${who}${ev.message || ev.code || "error"}${seq}`);
  // A sentence that will not get its final says so where it stands, instead of staying "in progress".
  const known = ev.speaker && seq ? segments.get(`${ev.speaker.participantId}:${ev.affected.seq}`) : null;
  if (known && !known.final && !known.el.querySelector(".tag-error")) {
    const tag = document.createElement("span");
    tag.className = "tag tag-error";
    tag.textContent = "not transcribed";
    tag.title = ev.message || ev.code || "";
    known.el.querySelector(".text").append(tag);
    known.el.classList.add("failed");
  }
}

const HANDLERS = {
  "segment.partial": onSegment,
  "segment.final": onSegment,
  "segment.revised": onRevised,
  sentiment: onSentiment,
  keywords: onKeywords,
  level: onLevel,
  "participant.joined": onParticipant,
  "participant.left": onParticipant,
  error: onError,
};

function onMessage(e) {
  if (typeof e.data !== "string") return;
  let ev;
  try {
    ev = JSON.parse(e.data);
  } catch {
    console.warn("analysis: ignoring a message that is not JSON");
    return;
  }
  const handler = HANDLERS[ev?.type];
  if (!handler) return; // a newer server may send more event types
  try {
    handler(ev);
  } catch (err) {
    console.error("analysis: failed to show", ev.type, err);
  }
}

function attachChannel(channel) {
  channel.addEventListener("message", onMessage);
  channel.addEventListener("close", () => {
    if (call.state === "connected") toast("The analysis channel closed.", { kind: "info" });
  });
}

// ---------------------------------------------------------------------------------------------------------
// Session

/** The claims of an interviewer's or observer's join link, or null after saying why this page cannot join. */
function readClaims(token) {
  let claims;
  try {
    claims = decodeToken(token);
  } catch (error) {
    ui.who.textContent = "No valid join link";
    ui.transcriptEmpty.textContent = error.message;
    return null;
  }
  if (claims.role === "candidate") {
    ui.who.textContent = "This is a candidate link";
    ui.transcriptEmpty.replaceChildren(
      document.createTextNode("This link is for the candidate. "),
      Object.assign(document.createElement("a"), { href: `/candidate${window.location.search}`, textContent: "Open the candidate page" }),
    );
    return null;
  }
  return claims;
}

function init() {
  const token = tokenFromLocation();
  const claims = readClaims(token);
  // Interviewers speak too, so their words are transcribed; observers only watch. Problems are toasts here.
  call = new Call({
    token, claims, microphone: claims?.role === "interviewer", analysis: true, joinText: "Join",
    showError: (message) => message && toast(message),
  });
  call.addEventListener("channel", (e) => attachChannel(e.detail.channel));
  if (!claims) return;
  ui.who.textContent = `${claims.name || claims.role} · ${claims.role} · interview ${claims.iid}`;
  document.title = `Overlay · ${claims.iid}`;
  if (secondsLeft(claims) <= 0) ui.transcriptEmpty.textContent = "This join link has expired. Ask for a new one.";
}

init();
