// Interviewer / observer overlay: the call, and four panels fed by the `analysis` data channel, one JSON stream
// event per message (the schema of domain/events.py `to_dict()`). This module routes each event to the panels
// and ties them together: a keyword or a tone point selects the transcript sentences it came from.
import { Call, decodeToken, secondsLeft, tokenFromLocation } from "/static/call.js";
import { Guidance } from "/static/guidance.js";
import { Keywords } from "/static/keywords.js";
import { Participants } from "/static/participants.js";
import { Tone } from "/static/tone.js";
import { Transcript } from "/static/transcript.js";
import { toast } from "/static/ui.js";

const $ = (id) => document.getElementById(id);

const participants = new Participants({ list: $("participants"), empty: $("participants-empty") });
const transcript = new Transcript({
  log: $("transcript"), empty: $("transcript-empty"), count: $("transcript-count"), jump: $("jump-latest"),
});
const tone = new Tone({
  canvas: $("sentiment-canvas"), legend: $("sentiment-legend"), summary: $("sentiment-summary"), onSelect: select,
});
const keywords = new Keywords({
  root: $("keywords"), describe: (pid, seqs) => transcript.describe(pid, seqs), onSelect: select,
});
const guidance = new Guidance({
  banner: $("guidance-alerts"), checklist: $("guide-checklist"), sections: $("guide-sections"), extra: $("guide-extra"),
  balance: $("talk-balance"), longest: $("talk-longest"),
});
let call = null;

// ---------------------------------------------------------------------------------------------------------
// Selection: a keyword or tone point highlights the transcript sentences it came from.

let selection = null; // {pid, term, seqs:Set} for a clicked keyword, {pid, seqs:Set} for a clicked tone point

function showSelection() {
  transcript.highlight(selection);
  keywords.highlight(selection);
}

function select(next) {
  selection = next;
  showSelection();
  if (selection) transcript.reveal(selection);
}

// ---------------------------------------------------------------------------------------------------------
// Data channel

function onKeywords(ev) {
  const s = participants.speaker(ev.speaker);
  keywords.onKeywords(s, ev.keywords);
  // Keep a clicked keyword's highlight in step with its growing list of sentences.
  if (selection?.term && selection.pid === s.pid) {
    const seqs = keywords.seqsOf(s.pid, selection.term);
    if (seqs) selection = { ...selection, seqs };
  }
  showSelection();
}

function onPresence(ev) {
  const s = participants.onPresence(ev);
  if (s) transcript.systemLine(`${s.label} (${s.role}) ${s.present ? "joined" : "left"}`);
}

// A participant withdrew (or gave again) consent mid-interview: the transcript says so where it happened, since
// none of their audio is transcribed in between.
function onConsent(ev) {
  const s = participants.speaker(ev.speaker);
  const at = ev.at ? new Date(ev.at).toLocaleTimeString() : "";
  transcript.systemLine(ev.type === "consent.withdrawn"
    ? `${s.label} withdrew consent${at ? ` at ${at}` : ""}: their audio is no longer transcribed`
    : `${s.label} gave consent${at ? ` at ${at}` : ""}: their audio is transcribed again`);
  if (ev.type === "consent.withdrawn") toast(`${s.label} withdrew consent to transcription.`, { kind: "info" });
}

function onError(ev) {
  const who = ev.speaker ? `${ev.speaker.name || ev.speaker.role}: ` : "";
  const what = ev.message || ev.code || "error";
  const seq = ev.affected?.seq;
  toast(`${who}${what}${seq !== undefined ? ` (sentence #${seq})` : ""}`);
  if (ev.speaker && seq !== undefined) {
    transcript.markFailed(ev.speaker.participantId, seq, ev.message || ev.code || "");
  }
}

const HANDLERS = {
  "segment.partial": (ev) => transcript.onPartial(participants.speaker(ev.speaker), ev),
  "segment.final": (ev) => transcript.onFinal(participants.speaker(ev.speaker), ev),
  "segment.revised": (ev) => {
    transcript.onRevised(participants.speaker(ev.speaker), ev);
    if (ev.crosstalk) tone.drop(participants.speaker(ev.speaker), ev.seq);
  },
  sentiment: (ev) => tone.onSentiment(participants.speaker(ev.speaker), ev),
  keywords: onKeywords,
  level: (ev) => participants.onLevel(ev),
  "participant.joined": onPresence,
  "participant.left": onPresence,
  error: onError,
  "consent.withdrawn": onConsent,
  "consent.given": onConsent,
  "alert.protected_topic": (ev) => guidance.onAlert(ev),
  "guide.coverage": (ev) => guidance.onCoverage(ev),
  "talk.balance": (ev) => guidance.onBalance(ev),
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
    $("who").textContent = "No valid join link";
    transcript.notice(error.message);
    return null;
  }
  if (claims.role === "candidate") {
    $("who").textContent = "This is a candidate link";
    transcript.notice(
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
  call.addEventListener("peers", (e) => {
    const { peers, full } = e.detail;
    $("call-note").textContent = full
      ? "The call is full (a candidate and four interviewers): you follow the transcript only."
      : peers.length ? "" : "Nobody else is on the call yet.";
  });
  $("consent-label").hidden = claims?.role !== "interviewer"; // observers send no audio: nothing to consent to
  if (!claims) return;
  if (claims.role === "observer") {
    $("call-note").textContent = "Observers follow the transcript and analysis only: no audio or video.";
  }
  $("who").textContent = `${claims.name || claims.role} · ${claims.role} · interview ${claims.iid}`;
  document.title = `Overlay · ${claims.iid}`;
  if (secondsLeft(claims) <= 0) transcript.notice("This join link has expired. Ask for a new one.");
  showTonePolicy(token);
}

/** The organisation decides whether the tone of words is shown (`toneEnabled`; off by default in the EU): when it
 * is not, the server sends no tone and the panel says why. */
async function showTonePolicy(token) {
  try {
    const response = await fetch("/api/notice", { headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) return;
    const notice = await response.json();
    if (notice.tone === false) {
      const item = document.createElement("li");
      item.textContent = "Off: your organisation does not show the tone of words.";
      $("sentiment-summary").replaceChildren(item);
    }
  } catch { /* the panel stays as it is */ }
}

init();
