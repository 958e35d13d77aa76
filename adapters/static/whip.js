// WHIP client (RFC 9725): the call module's transport for both pages. No dependencies, no build step.
//
// Non-trickle: the offer is POSTed once ICE gathering is complete, so the server gets every candidate in one
// request. A failed connection is resumed by re-POSTing with the same join token, which the server maps back to
// the same participant (its stream continues without duplicated segments).

/** An HTTP error from the WHIP endpoint, with the server's own message. */
export class WhipError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "WhipError";
    this.status = status;
    this.code = code;
  }
}

async function errorFromResponse(res) {
  const text = await res.text().catch(() => "");
  let code = `http_${res.status}`;
  let message = text.trim() || res.statusText || `HTTP ${res.status}`;
  try {
    const body = JSON.parse(text);
    const err = body && typeof body === "object" ? (body.error ?? body) : null;
    if (err && typeof err === "object") {
      code = String(err.code ?? code);
      message = String(err.message ?? err.detail ?? message);
    } else if (typeof err === "string") {
      message = err;
    }
  } catch {
    // not JSON: keep the text body
  }
  const hint = {
    401: "Your join link is invalid or has expired.",
    403: "This link does not allow joining this way.",
    404: "This interview does not exist (or was removed).",
    413: "The connection offer was too large.",
  }[res.status];
  return new WhipError(res.status, code, hint ? `${hint} (${message})` : message);
}

function iceGatheringComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    // Host candidates on loopback/LAN arrive in milliseconds; if a STUN server is slow we go with what we have.
    const timer = setTimeout(done, timeoutMs);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/**
 * One participant's WHIP session. Events (EventTarget):
 *   "state"   detail {state, text}    connecting | connected | reconnecting | failed | leaving | left
 *   "channel" detail {channel, pc}    the `analysis` and `call` RTCDataChannels (each (re)connection makes new
 *                                     ones) with the peer connection they belong to
 *   "error"   detail {error}
 */
export class WhipSession extends EventTarget {
  constructor({ interviewId, token, stream = null, analysis = false, call = false, relaySlots = 0, iceServers = [],
    maxRetries = 5 }) {
    super();
    this.call = call;
    this.relaySlots = relaySlots;
    this.interviewId = interviewId;
    this.token = token;
    this.stream = stream;
    this.analysis = analysis;
    this.iceServers = iceServers;
    this.maxRetries = maxRetries;
    this.pc = null;
    this.location = null;
    this.state = "idle";
    this._leaving = false;
    this._retries = 0;
    this._retryTimer = null;
    this._disconnectTimer = null;
  }

  get endpoint() {
    return `/whip/${encodeURIComponent(this.interviewId)}`;
  }

  _setState(state, text = "") {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, text } }));
  }

  /** Connect (or reconnect). Rejects with WhipError on an HTTP refusal. */
  async start() {
    this._leaving = false;
    this._setState(this._retries ? "reconnecting" : "connecting");
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: "max-bundle" });
    this.pc = pc;
    if (this.stream) {
      for (const track of this.stream.getAudioTracks()) {
        pc.addTransceiver(track, { direction: "sendonly", streams: [this.stream] });
      }
    }
    // Receive-only audio the server uses to relay a peer that has no direct path to this page (adapters/call.py).
    for (let i = 0; i < this.relaySlots; i++) pc.addTransceiver("audio", { direction: "recvonly" });
    if (this.analysis) {
      const channel = pc.createDataChannel("analysis", { ordered: true });
      this.dispatchEvent(new CustomEvent("channel", { detail: { channel, pc } }));
    }
    if (this.call) {
      const channel = pc.createDataChannel("call", { ordered: true });
      this.dispatchEvent(new CustomEvent("channel", { detail: { channel, pc } }));
    }
    pc.addEventListener("connectionstatechange", () => this._onConnectionState(pc));

    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringComplete(pc, 3000);
      // A 307 (the interview's room is on another node, RFC 9725 section 4.5) is followed with the same offer and
      // token; the session's Location is then resolved against the node that answered (res.url). Browsers keep the
      // Authorization header only on same-origin redirects (and the pages' CSP allows only 'self'), so the nodes
      // share the pages' origin behind a proxy (README, "Several nodes").
      const res = await fetch(this.endpoint, {
        method: "POST",
        headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${this.token}` },
        body: pc.localDescription.sdp,
        redirect: "follow",
      });
      if (res.status !== 201) throw await errorFromResponse(res);
      const answer = await res.text();
      const header = res.headers.get("Location");
      const location = header ? new URL(header, res.url).href : null;
      if (this.pc !== pc) {
        // Left while the request was in flight: end the session the server just created.
        if (location) this._delete(location, false);
        return;
      }
      this.location = location;
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
    } catch (error) {
      pc.close();
      if (this.pc === pc) this.pc = null;
      this._setState("failed", error.message);
      throw error;
    }
  }

  _onConnectionState(pc) {
    if (pc !== this.pc || this._leaving) return;
    const s = pc.connectionState;
    if (s === "connected") {
      this._retries = 0;
      clearTimeout(this._disconnectTimer);
      this._setState("connected");
    } else if (s === "disconnected") {
      // Often transient (a Wi-Fi blip); ICE recovers by itself. Only resume if it stays down.
      this._setState("reconnecting", "Connection interrupted; waiting for it to recover…");
      clearTimeout(this._disconnectTimer);
      this._disconnectTimer = setTimeout(() => {
        if (pc === this.pc && pc.connectionState !== "connected") this._resume();
      }, 5000);
    } else if (s === "failed") {
      this._resume();
    }
  }

  /** Re-POST with the same token: the server resumes the same participant. Backs off 1, 2, 4… s. */
  _resume() {
    if (this._leaving || this._retryTimer) return;
    if (this._retries >= this.maxRetries) {
      this._setState("failed", "The connection was lost and could not be re-established.");
      return;
    }
    const old = this.pc;
    this.pc = null;
    old?.close();
    const delay = 1000 * 2 ** this._retries;
    this._retries += 1;
    this._setState("reconnecting", `Connection lost; retrying in ${Math.round(delay / 1000)} s…`);
    this._retryTimer = setTimeout(async () => {
      this._retryTimer = null;
      try {
        await this.start();
      } catch (error) {
        this.dispatchEvent(new CustomEvent("error", { detail: { error } }));
        // Refusals (expired token, interview gone) will not get better by retrying.
        if (!(error instanceof WhipError) || error.status >= 500) this._resume();
      }
    }, delay);
  }

  /**
   * Leave: DELETE the WHIP session and close the peer connection.
   * `keepalive` lets the DELETE outlive the page (pagehide).
   */
  async leave({ keepalive = false } = {}) {
    this._leaving = true;
    // The server answers the DELETE once the last utterance is drained to a final: say so meanwhile.
    this._setState("leaving");
    clearTimeout(this._retryTimer);
    clearTimeout(this._disconnectTimer);
    this._retryTimer = null;
    const location = this.location;
    this.location = null;
    const pc = this.pc;
    this.pc = null;
    // DELETE before closing: a closed peer connection alone also ends the session on the server, and then
    // the DELETE would find nothing to end. On pagehide the request is only queued (keepalive), so close now.
    const deleted = location ? this._delete(location, keepalive) : Promise.resolve();
    if (keepalive) pc?.close();
    await deleted;
    pc?.close();
    this._setState("left");
  }

  async _delete(location, keepalive) {
    try {
      const res = await fetch(location, {
        method: "DELETE", headers: { Authorization: `Bearer ${this.token}` }, keepalive,
        signal: AbortSignal.timeout(5000),
      });
      if (!res.ok && res.status !== 404) console.warn(`WHIP DELETE answered ${res.status}`);
    } catch {
      // The server also notices the closed peer connection; a lost DELETE only delays cleanup.
    }
  }
}
