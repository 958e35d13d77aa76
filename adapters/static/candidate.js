// Candidate page: join with the microphone and camera, see and hear the interviewers, see who is watching, show the
// local level, leave. The candidate never receives analysis.
import { Call, decodeToken, secondsLeft, tokenFromLocation } from "/static/call.js";

const $ = (id) => document.getElementById(id);
const ui = {
  who: $("who"), meter: $("meter"), micState: $("mic-state"), join: $("join"), expiry: $("expiry"), error: $("error"),
  watching: $("watching"),
};

let call = null;
let audio = null; // {ctx, analyser, buf, raf}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

function describeExpiry(claims) {
  if (!Number.isFinite(secondsLeft(claims))) return;
  const left = secondsLeft(claims);
  if (left <= 0) {
    ui.expiry.textContent = "This join link has expired.";
    if (call.state !== "connected") ui.join.disabled = true;
    return;
  }
  const mins = Math.floor(left / 60);
  ui.expiry.textContent = mins >= 120 ? "" : `Link valid for ${mins >= 1 ? `${mins} min` : "less than a minute"}`;
}

/** The claims of a candidate's join link, or null after saying why this page cannot join with the link. */
function readClaims(token) {
  let claims;
  try {
    claims = decodeToken(token);
  } catch (error) {
    ui.who.textContent = "No valid join link";
    showError(error.message);
    return null;
  }
  if (claims.role !== "candidate") {
    ui.who.textContent = `${claims.name || "Participant"} · ${claims.role}`;
    const link = `/interviewer${window.location.search}`;
    ui.error.replaceChildren(
      document.createTextNode("This link is for an interviewer. "),
      Object.assign(document.createElement("a"), { href: link, textContent: "Open the interviewer page" }),
    );
    ui.error.hidden = false;
    return null;
  }
  return claims;
}

function startMeter(mediaStream) {
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(mediaStream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser); // not to ctx.destination: the candidate must not hear themselves
  const buf = new Float32Array(analyser.fftSize);
  audio = { ctx, analyser, buf, raf: 0, peakHold: 0 };
  const fill = ui.meter.firstElementChild;
  const tick = () => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
    const rms = Math.sqrt(sum / buf.length);
    const db = rms > 0 ? 20 * Math.log10(rms) : -100;
    const pct = Math.max(0, Math.min(100, ((db + 60) / 60) * 100)); // -60 dBFS .. 0 dBFS
    fill.style.width = `${pct.toFixed(1)}%`;
    ui.meter.classList.toggle("speaking", db > -40);
    ui.meter.setAttribute("aria-valuenow", String(Math.round(pct)));
    audio.raf = requestAnimationFrame(tick);
  };
  tick();
}

function stopMeter() {
  if (!audio) return;
  cancelAnimationFrame(audio.raf);
  audio.ctx.close();
  audio = null;
  ui.meter.firstElementChild.style.width = "0%";
}

function onMicrophone(e) {
  const { state, stream, track } = e.detail;
  if (state === "opened") startMeter(stream);
  if (state === "closed") stopMeter();
  ui.micState.textContent = {
    opened: `Microphone: ${track?.label || "default"}`,
    unmuted: `Microphone: ${track?.label || "default"}`,
    muted: "Muted: nothing is sent",
    ended: "Microphone stopped",
    closed: "Microphone off",
  }[state];
}

/** Who sees and hears the candidate: the interviewers by name, the observers counted (they read the transcript). */
function onPeers(e) {
  const { peers, observers } = e.detail;
  const names = peers.map((p) => p.name || p.role);
  const parts = [names.length ? `With you: ${names.join(", ")}.` : "No interviewer has joined yet."];
  if (observers) parts.push(`${observers} observer${observers === 1 ? "" : "s"} follow${observers === 1 ? "s" : ""} the transcript (they do not see or hear you).`);
  else parts.push("No observers.");
  ui.watching.textContent = parts.join(" ");
}

/**
 * What the organisation's policy requires the page to tell the candidate before joining (`GET /api/notice`): under
 * NYC Local Law 144 that an automated tool is used, the date of its latest bias audit and whom to ask for an
 * alternative process. A failure leaves the page as it is: the privacy notice above is always shown.
 */
async function showPolicyNotice(token) {
  let notice;
  try {
    const response = await fetch("/api/notice", { headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) return;
    notice = (await response.json()).candidateNotice;
  } catch {
    return;
  }
  if (!notice) return;
  $("aedt-text").textContent = notice.text;
  if (notice.biasAuditDate) $("aedt-audit").textContent = notice.biasAuditDate;
  if (notice.alternativeProcessContact) $("aedt-contact").textContent = notice.alternativeProcessContact;
  $("aedt-law").textContent = `This notice is given under ${notice.law}.`;
  $("aedt").hidden = false;
}

function init() {
  const token = tokenFromLocation();
  const claims = readClaims(token);
  call = new Call({ token, claims, microphone: true, joinText: "Join interview", showError });
  call.addEventListener("microphone", onMicrophone);
  call.addEventListener("peers", onPeers);
  if (!claims) return;
  ui.who.textContent = `${claims.name || "Candidate"} · interview ${claims.iid}`;
  document.title = `Interview · ${claims.name || "Candidate"}`;
  describeExpiry(claims);
  setInterval(() => describeExpiry(claims), 30_000);
  showPolicyNotice(token);
}

init();
