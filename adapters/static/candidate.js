// Candidate page: join with the microphone, show the local level, leave. The candidate never receives analysis.
import { STATE_TEXT, WhipSession, decodeToken, secondsLeft, toast, tokenFromLocation } from "/static/whip.js";

const $ = (id) => document.getElementById(id);
const ui = {
  who: $("who"), state: $("state"), meter: $("meter"), micState: $("mic-state"), join: $("join"),
  mute: $("mute"), leave: $("leave"), expiry: $("expiry"), error: $("error"),
};

const token = tokenFromLocation();
let claims = null;
let session = null;
let stream = null;
let audio = null; // {ctx, analyser, buf, raf}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

function setState(state, text = "") {
  ui.state.dataset.state = state;
  ui.state.textContent = STATE_TEXT[state] ?? state;
  ui.state.title = text;
  const inCall = state === "connecting" || state === "connected" || state === "reconnecting";
  ui.join.hidden = inCall;
  ui.join.disabled = inCall || state === "leaving" || !claims || secondsLeft(claims) <= 0;
  ui.leave.hidden = !inCall;
  ui.leave.disabled = !inCall;
  ui.mute.hidden = !inCall;
  ui.mute.disabled = !inCall;
  ui.join.textContent = state === "left" || state === "failed" ? "Join again" : "Join interview";
}

function describeExpiry() {
  if (!claims || !Number.isFinite(secondsLeft(claims))) return;
  const left = secondsLeft(claims);
  if (left <= 0) {
    ui.expiry.textContent = "This join link has expired.";
    if (!session || session.state !== "connected") ui.join.disabled = true;
    return;
  }
  const mins = Math.floor(left / 60);
  ui.expiry.textContent = mins >= 120 ? "" : `Link valid for ${mins >= 1 ? `${mins} min` : "less than a minute"}`;
}

function init() {
  try {
    claims = decodeToken(token);
  } catch (error) {
    ui.who.textContent = "No valid join link";
    showError(error.message);
    setState("idle");
    return;
  }
  if (claims.role !== "candidate") {
    ui.who.textContent = `${claims.name || "Participant"} · ${claims.role}`;
    const link = `/interviewer${window.location.search}`;
    ui.error.replaceChildren(
      document.createTextNode("This link is for an interviewer. "),
      Object.assign(document.createElement("a"), { href: link, textContent: "Open the interviewer page" }),
    );
    ui.error.hidden = false;
    claims = null;
    setState("idle");
    return;
  }
  ui.who.textContent = `${claims.name || "Candidate"} · interview ${claims.iid}`;
  document.title = `Interview · ${claims.name || "Candidate"}`;
  setState("idle");
  describeExpiry();
  setInterval(describeExpiry, 30_000);
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

function stopMedia() {
  if (audio) {
    cancelAnimationFrame(audio.raf);
    audio.ctx.close();
    audio = null;
    ui.meter.firstElementChild.style.width = "0%";
  }
  stream?.getTracks().forEach((t) => t.stop());
  stream = null;
  ui.micState.textContent = "Microphone off";
}

async function join() {
  showError("");
  ui.join.disabled = true;
  stopMedia(); // a previous failed attempt may still hold the microphone
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      video: false,
    });
  } catch (error) {
    ui.join.disabled = false;
    const msg = {
      NotAllowedError: "Microphone permission was denied. Allow the microphone for this site (the icon in the address bar) and try again.",
      NotFoundError: "No microphone was found. Connect one and try again.",
      NotReadableError: "The microphone is in use by another application or could not be opened.",
    }[error.name] ?? `The microphone could not be opened: ${error.message}`;
    showError(msg);
    return;
  }
  const track = stream.getAudioTracks()[0];
  ui.micState.textContent = `Microphone: ${track?.label || "default"}`;
  track?.addEventListener("ended", () => {
    toast("The microphone stopped (unplugged or permission revoked).");
    ui.micState.textContent = "Microphone stopped";
  });
  startMeter(stream);

  session = new WhipSession({ interviewId: claims.iid, token, stream, analysis: false });
  session.addEventListener("state", (e) => {
    setState(e.detail.state, e.detail.text);
    if (e.detail.state === "failed" && e.detail.text) showError(e.detail.text);
    if (e.detail.state === "connected") showError("");
  });
  session.addEventListener("error", (e) => toast(e.detail.error.message));
  try {
    await session.start();
  } catch (error) {
    showError(error.message);
    stopMedia();
    setState("failed", error.message);
  }
}

async function leave() {
  const s = session;
  session = null;
  await s?.leave();
  stopMedia();
  ui.mute.setAttribute("aria-pressed", "false");
  ui.mute.textContent = "Mute";
  setState("left");
}

function toggleMute() {
  const track = stream?.getAudioTracks()[0];
  if (!track) return;
  track.enabled = !track.enabled;
  ui.mute.setAttribute("aria-pressed", String(!track.enabled));
  ui.mute.textContent = track.enabled ? "Mute" : "Unmute";
  ui.micState.textContent = track.enabled ? `Microphone: ${track.label || "default"}` : "Muted: nothing is sent";
}

ui.join.addEventListener("click", join);
ui.leave.addEventListener("click", leave);
ui.mute.addEventListener("click", toggleMute);
// Closing the tab ends the session promptly instead of waiting for ICE to time out.
window.addEventListener("pagehide", () => session?.leave({ keepalive: true }));

init();
