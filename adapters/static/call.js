// The call, shared by the candidate and interviewer pages: the join link, the microphone and camera, joining (a
// WHIP session to the server, which receives the microphone only), the peer-to-peer call with the other
// participants (mesh.js), muting, leaving (also when the tab closes) and the connection state.
//
// Contract with the page: it has the status pill `#state` and the buttons `#join`, `#leave` and `#mute` (and
// `#camera` when it sends video); a Call owns them. Video tiles go into `#tiles` when the page has it. Whatever
// else the page shows about the call (a level meter, the analysis, who is watching) it takes from a Call's events,
// and it decides where problems are shown (`showError`).
//
// Test hook: `window.interviewCall.stats()` resolves to {peers: [{participantId, role, audioPacketsReceived,
// videoFramesDecoded, path: "p2p"|"relay"}]} (empty for an observer, or before joining).
import { Mesh, Tiles } from "/static/mesh.js";
import { toast } from "/static/ui.js";
import { WhipSession } from "/static/whip.js";

// Each page's WHIP offer carries this many receive-only audio transceivers: the server plays a peer's audio on one
// when the two have no peer-to-peer path (adapters/call.py RELAY_SLOTS).
const RELAY_SLOTS = 4;

/** Read the join token from `?token=` (the joinUrl the API hands out). */
export function tokenFromLocation(loc = window.location) {
  return new URLSearchParams(loc.search).get("token") || "";
}

function base64UrlDecode(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  const bin = atob(b64);
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/**
 * Decode a join token's payload for display: `{iid, pid, role, name, exp}`. A join token is a JWT
 * (header.payload.signature); the signature is the server's business, this only refuses tokens that cannot be
 * what the server issues.
 */
export function decodeToken(token) {
  const parts = (token || "").split(".");
  if (parts.length !== 3 || !parts[0] || !parts[1] || !parts[2]) {
    throw new Error("This link has no valid join token. Ask the interview organiser for a new link.");
  }
  let payload;
  try {
    payload = JSON.parse(base64UrlDecode(parts[1]));
  } catch {
    throw new Error("This join token is damaged (it could not be read). Ask the organiser for a new link.");
  }
  if (!payload || typeof payload.iid !== "string" || typeof payload.role !== "string") {
    throw new Error("This join token is missing the interview or role.");
  }
  return {
    iid: payload.iid,
    pid: String(payload.pid ?? ""),
    role: payload.role,
    name: String(payload.name ?? ""),
    exp: Number(payload.exp ?? 0),
  };
}

/** Seconds until the token expires (negative once expired; Infinity when it carries no expiry). */
export function secondsLeft(claims, nowMs = Date.now()) {
  return claims.exp ? claims.exp - nowMs / 1000 : Infinity;
}

// The privacy notice the pages show; the server records which one a participant consented to.
export const NOTICE_VERSION = "2026-01";

/** Record (or, with `accepted` false, withdraw) the participant's consent to the processing of their audio. */
export async function sendConsent(token, accepted) {
  const response = await fetch("/api/consent", {
    method: accepted ? "POST" : "DELETE",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: accepted ? JSON.stringify({ noticeVersion: NOTICE_VERSION, accepted: true }) : undefined,
  });
  if (response.status === 401) throw new Error("Your join link is invalid or has expired.");
  if (response.status !== 204) {
    let message = `the server answered ${response.status}`;
    try {
      message = (await response.json()).error?.message ?? message;
    } catch { /* not JSON: keep the status */ }
    throw new Error(`Your consent could not be recorded (${message}).`);
  }
}

/** Human text for a session state, for the status pill. */
const STATE_TEXT = {
  idle: "Not connected",
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  leaving: "Leaving…",
  failed: "Connection failed",
  left: "Left the interview",
};

// getUserMedia's failures by DOMException name (Media Capture and Streams, getUserMedia()), in words that say what
// the participant can do about them.
const MICROPHONE_ERRORS = {
  NotAllowedError: "Microphone permission was denied. Allow the microphone for this site (the icon in the address bar) and try again.",
  NotFoundError: "No microphone was found. Connect one and try again.",
  NotReadableError: "The microphone is in use by another application or could not be opened.",
  OverconstrainedError: "No microphone here can record with the settings this page needs. Connect another one and try again.",
  SecurityError: "The browser does not allow this page to use the microphone (a browser setting or policy blocks it).",
  AbortError: "Opening the microphone was interrupted. Try again.",
};

// One microphone track for the peers and the server alike, set up for speech in a call.
const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const VIDEO = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24, max: 30 } };

/**
 * The microphone (and the camera when `camera`), in one getUserMedia; without a usable camera, the microphone
 * alone. Rejects with an Error whose message is meant for the participant.
 */
async function openMedia(camera) {
  // Browsers only offer getUserMedia to secure contexts (https, or localhost).
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("This browser offers no microphone to this page: open the link over https (or on localhost).");
  }
  if (camera) {
    try {
      return await navigator.mediaDevices.getUserMedia({ audio: AUDIO, video: VIDEO });
    } catch {
      // No camera, or it is busy or refused: the interview goes on with the microphone alone (asked next).
      toast("No camera could be opened: you join with audio only.", { kind: "info" });
    }
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: AUDIO, video: false });
  } catch (error) {
    throw new Error(MICROPHONE_ERRORS[error.name] ?? `The microphone could not be opened: ${error.message}`,
      { cause: error });
  }
}

/**
 * One participant's call. `claims` is null when the page cannot join with its link (the join button stays off);
 * `microphone` says whether to send one and take part in the call with the other participants (observers only
 * watch: no microphone, no peers); `analysis` asks for the analysis data channel.
 * Events (EventTarget):
 *   "microphone" detail {state, stream, track}  opened | muted | unmuted | ended | closed
 *   "channel"    detail {channel}               the `analysis` RTCDataChannel of each (re)connection
 *   "peers"      detail {peers, observers, full} who this page is in a call with, and how many observers watch
 * `state` is the session's state: idle | connecting | connected | reconnecting | failed | leaving | left.
 */
export class Call extends EventTarget {
  constructor({ token, claims, microphone, analysis = false, joinText, showError }) {
    super();
    this.token = token;
    this.claims = claims;
    this.microphone = microphone;
    this.analysis = analysis;
    this.joinText = joinText;
    this.showError = showError;
    this.session = null;
    this.stream = null;
    this.mesh = null;
    this.state = "idle";
    const $ = (id) => document.getElementById(id);
    this.ui = { pill: $("state"), join: $("join"), leave: $("leave"), mute: $("mute"), camera: $("camera"),
      consent: $("consent") };
    this.tiles = new Tiles($("tiles"));
    // `?p2p=off` withholds ICE candidates between pages, forcing the server relay (tests use it);
    // `?p2p-retry-s=N` makes a relayed pair retry the direct path after N s instead of 15 (tests shorten it).
    const query = new URLSearchParams(window.location.search);
    this.p2p = query.get("p2p") !== "off";
    const retryS = Number(query.get("p2p-retry-s"));
    this.retryFirstMs = Number.isFinite(retryS) && retryS > 0 ? Math.min(retryS, 120) * 1000 : undefined;
    this.ui.join.addEventListener("click", () => this.join());
    // Unticking the consent box mid-call withdraws it: the server stops processing this participant's audio.
    this.ui.consent?.addEventListener("change", () => this._consentChanged());
    this.ui.leave.addEventListener("click", () => this.leave());
    this.ui.mute.addEventListener("click", () => this.toggleMute());
    this.ui.camera?.addEventListener("click", () => this.toggleCamera());
    window.interviewCall = {
      stats: async () => (this.mesh ? this.mesh.stats() : { peers: [] }),
      // Lifts `?p2p=off` at run time, so a test sees a relayed pair upgrade to the direct path.
      allowP2P: () => {
        this.p2p = true;
        this.mesh?.allowP2P();
      },
    };
    // Closing the tab ends the session promptly instead of waiting for ICE to time out.
    window.addEventListener("pagehide", () => this.session?.leave({ keepalive: true }));
    this._show("idle");
  }

  _show(state, text = "") {
    this.state = state;
    const { pill, join, leave, mute } = this.ui;
    pill.dataset.state = state;
    pill.textContent = STATE_TEXT[state] ?? state;
    pill.title = text;
    const inCall = state === "connecting" || state === "connected" || state === "reconnecting";
    join.hidden = inCall;
    join.disabled = inCall || state === "leaving" || !this.claims || secondsLeft(this.claims) <= 0;
    join.textContent = state === "left" || state === "failed" ? "Join again" : this.joinText;
    leave.hidden = !inCall;
    leave.disabled = !inCall;
    mute.hidden = !inCall || !this.stream; // an observer has nothing to mute
    mute.disabled = !inCall;
    if (this.ui.camera) {
      this.ui.camera.hidden = !inCall || !this.stream?.getVideoTracks().length;
      this.ui.camera.disabled = !inCall;
    }
  }

  _microphone(state) {
    const track = this.stream?.getAudioTracks()[0] ?? null;
    this.dispatchEvent(new CustomEvent("microphone", { detail: { state, stream: this.stream, track } }));
  }

  _closeMicrophone() {
    this.mesh?.close();
    this.mesh = null;
    this.tiles.clearSelf();
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    this.ui.mute.setAttribute("aria-pressed", "false"); // the next microphone starts unmuted
    this.ui.mute.textContent = "Mute";
    if (this.ui.camera) {
      this.ui.camera.setAttribute("aria-pressed", "false");
      this.ui.camera.textContent = "Camera off";
    }
    this._microphone("closed");
  }

  async _consentChanged() {
    const inCall = this.state === "connected" || this.state === "reconnecting";
    if (!this.microphone || !inCall) return;
    const given = this.ui.consent.checked;
    try {
      await sendConsent(this.token, given);
      toast(given ? "Consent given: your audio is transcribed again."
        : "Consent withdrawn: your audio is no longer processed.");
    } catch (error) {
      this.showError(error.message);
    }
  }

  async join() {
    this.showError("");
    if (this.microphone && this.ui.consent && !this.ui.consent.checked) {
      this.showError("Please read the notice and tick the consent box first: nothing of your audio is processed without it.");
      this.ui.consent.focus();
      return;
    }
    this.ui.join.disabled = true;
    this._closeMicrophone(); // a previous failed attempt may still hold it
    if (this.microphone) {
      try {
        await sendConsent(this.token, true);
      } catch (error) {
        this.showError(error.message);
        this._show("failed", error.message);
        return;
      }
      try {
        this.stream = await openMedia(Boolean(this.ui.camera));
      } catch (error) {
        this.ui.join.disabled = false;
        this.showError(error.message);
        return;
      }
      this.stream.getAudioTracks()[0]?.addEventListener("ended", () => {
        toast("The microphone stopped (unplugged or permission revoked).");
        this._microphone("ended");
      });
      this._microphone("opened");
      this.tiles.showSelf(this.stream);
      this.mesh = new Mesh({
        stream: this.stream, tiles: this.tiles, p2p: this.p2p, retryFirstMs: this.retryFirstMs,
        onPeers: (detail) => this.dispatchEvent(new CustomEvent("peers", { detail })),
      });
    }
    // The server gets the microphone only; the peers get microphone and camera (mesh.js).
    const session = new WhipSession({
      interviewId: this.claims.iid, token: this.token, stream: this.stream, analysis: this.analysis,
      call: Boolean(this.mesh), relaySlots: this.mesh ? RELAY_SLOTS : 0,
    });
    this.session = session;
    session.addEventListener("channel", (e) => {
      const { channel, pc } = e.detail;
      if (channel.label === "call") this.mesh?.attach(channel, pc);
      else this.dispatchEvent(new CustomEvent("channel", { detail: { channel } }));
    });
    session.addEventListener("state", (e) => {
      const { state, text } = e.detail;
      this._show(state, text);
      if (state === "failed" && text) this.showError(text);
      if (state === "connected") this.showError("");
    });
    // A resume attempt that failed; the session retries by itself unless the server refused.
    session.addEventListener("error", (e) => toast(e.detail.error.message));
    try {
      await session.start();
    } catch (error) {
      if (session.state !== "failed") this.showError(error.message); // "failed" has already shown it
      this._closeMicrophone();
      this._show("failed", error.message);
    }
  }

  async leave() {
    const session = this.session;
    this.session = null;
    await session?.leave();
    this._closeMicrophone();
    this._show("left");
  }

  toggleCamera() {
    const track = this.stream?.getVideoTracks()[0];
    if (!track) return;
    const on = !track.enabled;
    this.mesh?.setCamera(on);
    this.ui.camera.setAttribute("aria-pressed", String(!on));
    this.ui.camera.textContent = on ? "Camera off" : "Camera on";
  }

  toggleMute() {
    const track = this.stream?.getAudioTracks()[0];
    if (!track) return;
    track.enabled = !track.enabled;
    this.ui.mute.setAttribute("aria-pressed", String(!track.enabled));
    this.ui.mute.textContent = track.enabled ? "Mute" : "Unmute";
    this._microphone(track.enabled ? "unmuted" : "muted");
  }
}
