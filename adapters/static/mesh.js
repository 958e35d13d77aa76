// The call between participants: one RTCPeerConnection per peer (full mesh), signalled over the `call` data
// channel of this page's WHIP session (the message contract is in adapters/call.py). Audio and video go browser to
// browser; only when no peer-to-peer path connects does audio come through the server ("relay": the server's
// connection carries it on a receive-only audio transceiver it names by mid), and then video stays off.
//
// The peer with the smaller participant id makes the offer, so two peers never offer at once. `p2p: false` (the
// page parameter `?p2p=off`) withholds this page's ICE candidates and ignores the peer's, so no direct path can form
// and the relay is used: tests use it to exercise the relay (and `allowP2P()` lifts it, to exercise the upgrade).
//
// A relayed pair keeps trying the direct path: the offerer makes a fresh peer connection after RETRY_FIRST_MS,
// then after twice as long each time, up to RETRY_MAX_MS (a network that had no path, e.g. a phone moving from a
// strict Wi-Fi to mobile data, often has one a minute later). The relayed audio plays on until the new connection
// is connected; then the page switches to it and sends `unrelay`, and the server stops forwarding the peer's audio
// to this page only: the peer's own `unrelay` ends the other direction, so it hears the relay until it switches too.

const P2P_TIMEOUT_MS = 10_000; // ICE on the internet connects in 1-3 s (TURN included); beyond this, relay
const RETRY_FIRST_MS = 15_000; // the first retry of a relayed pair; each next one waits twice as long
const RETRY_MAX_MS = 120_000; // a retry costs a few signalling messages and ICE checks: at most every 2 min
const QUALITY_INTERVAL_MS = 2_000;
const REPORT_EVERY = 5; // quality samples per report to the server (10 s)

function qualityLevel(q) {
  if (!q || q.rttS === null) return "unknown";
  if (q.rttS > 0.4 || q.lossRatio > 0.05 || q.jitterS > 0.05) return "poor";
  if (q.rttS > 0.2 || q.lossRatio > 0.01 || q.jitterS > 0.03) return "fair";
  return "good";
}

function describeQuality(q, path) {
  if (!q || q.rttS === null) return "Connection quality: measuring…";
  const rtt = `${Math.round(q.rttS * 1000)} ms round trip`;
  const loss = `${(q.lossRatio * 100).toFixed(1)}% loss`;
  const jitter = `${Math.round(q.jitterS * 1000)} ms jitter`;
  return `${path === "relay" ? "Audio via the server" : "Direct"}: ${rtt}, ${loss}, ${jitter}`;
}

/** One remote participant: its peer connection (or relayed audio) and its tile. */
class Peer {
  constructor(info, tiles) {
    this.id = info.participantId;
    this.role = info.role;
    this.name = info.name;
    this.epoch = info.epoch;
    this.pc = null;
    this.path = "connecting"; // connecting | p2p | relay | none
    this.relayReceiver = null;
    this.pending = []; // candidates that arrived before the remote description
    this.timer = null;
    this.retryTimer = null; // the next direct attempt while relayed (the offerer's side)
    this.retryMs = 0; // the wait before that attempt
    this.remoteStream = null; // the direct connection's media, shown once it is connected
    this.quality = null;
    this.lastCounts = null;
    this.tile = tiles.add(this);
  }
}

/** Video tiles: the self-view first, then one per peer (name, role, quality indicator, a note when needed). */
export class Tiles {
  constructor(root) {
    this.root = root;
    this.self = null;
  }

  showSelf(stream, label = "You") {
    if (!this.root) return;
    if (!this.self) {
      this.self = this._tile(label, "self");
      this.root.prepend(this.self.figure);
    }
    const video = stream?.getVideoTracks().length ? new MediaStream(stream.getVideoTracks()) : null;
    this.self.video.srcObject = video;
    this.self.figure.classList.toggle("no-video", !video);
    this.self.note.textContent = video ? "" : "No camera";
  }

  setSelfCamera(on) {
    if (!this.self) return;
    this.self.figure.classList.toggle("camera-off", !on);
    this.self.note.textContent = on ? "" : "Camera off";
  }

  clearSelf() {
    this.self?.figure.remove();
    this.self = null;
  }

  add(peer) {
    const tile = this._tile(`${peer.name || peer.role} · ${peer.role}`, "peer");
    tile.figure.dataset.pid = peer.id;
    tile.note.textContent = "Connecting…";
    this.root?.append(tile.figure);
    return tile;
  }

  _tile(label, kind) {
    const figure = document.createElement("figure");
    figure.className = `tile ${kind}`;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    video.muted = kind === "self"; // nobody hears themselves
    const audio = document.createElement("audio");
    audio.autoplay = true;
    const caption = document.createElement("figcaption");
    const quality = document.createElement("span");
    quality.className = "quality";
    quality.dataset.level = "unknown";
    quality.setAttribute("role", "img");
    quality.setAttribute("aria-label", "Connection quality: measuring");
    const name = document.createElement("span");
    name.className = "tile-name";
    name.textContent = label;
    caption.append(...(kind === "self" ? [name] : [quality, name]));
    const note = document.createElement("p");
    note.className = "tile-note";
    figure.append(video, audio, caption, note);
    return { figure, video, audio, note, quality };
  }
}

export class Mesh {
  constructor({ stream, tiles, p2p = true, retryFirstMs = RETRY_FIRST_MS, onPeers = () => {} }) {
    this.stream = stream;
    this.tiles = tiles;
    this.p2p = p2p;
    this.retryFirstMs = retryFirstMs;
    this.onPeers = onPeers;
    this.channel = null;
    this.serverPc = null;
    this.self = "";
    this.iceServers = [];
    this.peers = new Map(); // participant id -> Peer
    this.samples = 0;
    this.qualityTimer = setInterval(() => this._measure(), QUALITY_INTERVAL_MS);
  }

  /** A (new) `call` channel on the (new) server connection: whatever was connected before starts over. */
  attach(channel, serverPc) {
    for (const peer of [...this.peers.values()]) this._remove(peer);
    this.channel = channel;
    this.serverPc = serverPc;
    channel.addEventListener("message", (e) => this._onMessage(e.data));
  }

  close() {
    clearInterval(this.qualityTimer);
    for (const peer of [...this.peers.values()]) {
      this._send({ type: "bye", to: peer.id });
      this._remove(peer);
    }
    this.channel = null;
  }

  /** Lifts `p2p: false` (a test hook): from the next attempt on, a relayed pair can connect directly. */
  allowP2P() {
    this.p2p = true;
  }

  setCamera(on) {
    for (const t of this.stream?.getVideoTracks() ?? []) t.enabled = on;
    this.tiles.setSelfCamera(on);
  }

  /** The test hook's answer: what this page receives from each peer, and by which path. */
  async stats() {
    const peers = [];
    for (const peer of this.peers.values()) {
      const counts = await this._counts(peer);
      peers.push({
        participantId: peer.id, role: peer.role, audioPacketsReceived: counts.audioPackets,
        videoFramesDecoded: counts.videoFrames, path: peer.path === "relay" ? "relay" : "p2p",
      });
    }
    return { peers };
  }

  // ---- signalling ---------------------------------------------------------------------------------------------
  _send(msg) {
    if (this.channel?.readyState === "open") this.channel.send(JSON.stringify(msg));
  }

  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    const peer = this.peers.get(msg.from ?? msg.peer);
    const handle = {
      peers: () => this._onPeers(msg),
      offer: () => peer && this._onOffer(peer, msg.sdp),
      answer: () => peer?.pc?.setRemoteDescription({ type: "answer", sdp: msg.sdp }).then(() => this._flush(peer)),
      candidate: () => peer && this._onCandidate(peer, msg.candidate),
      bye: () => peer && this._closePc(peer),
      relay: () => peer && this._onRelay(peer, msg.mid),
    }[msg.type];
    Promise.resolve(handle?.()).catch((error) => console.warn(`call: ${msg.type} from ${msg.from}:`, error));
  }

  _onPeers(msg) {
    this.self = msg.self;
    this.iceServers = Array.isArray(msg.iceServers) ? msg.iceServers : [];
    const listed = new Map(msg.peers.map((p) => [p.participantId, p]));
    for (const peer of [...this.peers.values()]) {
      const info = listed.get(peer.id);
      if (!info || info.epoch !== peer.epoch) this._remove(peer); // gone, or reconnected: start over
    }
    for (const info of listed.values()) {
      if (this.peers.has(info.participantId)) continue;
      const peer = new Peer(info, this.tiles);
      this.peers.set(peer.id, peer);
      if (this.self < peer.id) this._offer(peer);
      else peer.timer = setTimeout(() => this._fallBack(peer), P2P_TIMEOUT_MS); // waiting for its offer
    }
    this.onPeers({ peers: [...this.peers.values()], observers: msg.observers ?? 0, full: Boolean(msg.full) });
  }

  _newPc(peer) {
    this._closePc(peer);
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    peer.pc = pc;
    if (peer.path !== "relay") peer.path = "connecting"; // a relayed pair's retry keeps the relay meanwhile
    pc.addEventListener("icecandidate", (e) => {
      if (!this.p2p && e.candidate) return; // withheld: no direct path can form
      this._send({ type: "candidate", to: peer.id, candidate: e.candidate ? e.candidate.toJSON() : null });
    });
    pc.addEventListener("track", (e) => {
      peer.remoteStream = e.streams[0] ?? new MediaStream([e.track]);
      // While relayed, the relayed audio plays on until this connection is up (_connected shows it then).
      if (peer.path !== "relay") this._show(peer);
    });
    pc.addEventListener("connectionstatechange", () => {
      if (peer.pc !== pc) return;
      if (pc.connectionState === "connected") this._connected(peer);
      else if (pc.connectionState === "failed") this._directFailed(peer);
    });
    clearTimeout(peer.timer);
    peer.timer = setTimeout(() => this._directFailed(peer), P2P_TIMEOUT_MS);
    return pc;
  }

  _show(peer) {
    if (peer.remoteStream && peer.tile.video.srcObject !== peer.remoteStream) {
      peer.tile.video.srcObject = peer.remoteStream;
    }
  }

  _connected(peer) {
    clearTimeout(peer.timer);
    if (peer.path === "relay") {
      // The direct path is up: switch to it, and the server stops forwarding the peer's audio to this page.
      clearTimeout(peer.retryTimer);
      peer.retryMs = 0;
      peer.relayReceiver = null;
      peer.tile.audio.srcObject = null;
      this._send({ type: "unrelay", to: peer.id });
    }
    peer.path = "p2p";
    this._show(peer);
    peer.tile.note.textContent = "";
    peer.tile.figure.classList.remove("no-video");
  }

  /** A direct attempt failed or timed out: the relay if none is in use yet, else the next retry later. */
  _directFailed(peer) {
    if (peer.path !== "relay") {
      if (peer.path === "p2p") peer.path = "connecting"; // a direct path that was up and broke: relay now
      this._fallBack(peer);
      return;
    }
    clearTimeout(peer.timer);
    this._closePc(peer);
    this._scheduleRetry(peer);
  }

  /** The offerer of a relayed pair tries the direct path again later (the answerer takes its offers). */
  _scheduleRetry(peer) {
    if (peer.path !== "relay" || !(this.self < peer.id) || !this.peers.has(peer.id)) return;
    clearTimeout(peer.retryTimer);
    peer.retryMs = peer.retryMs ? Math.min(peer.retryMs * 2, RETRY_MAX_MS) : this.retryFirstMs;
    peer.retryTimer = setTimeout(() => {
      if (peer.path === "relay" && this.peers.has(peer.id)) {
        this._offer(peer).catch((error) => console.warn(`call: retrying the direct path to ${peer.id}:`, error));
      }
    }, peer.retryMs);
  }

  _addTracks(pc) {
    for (const track of this.stream?.getTracks() ?? []) pc.addTrack(track, this.stream);
  }

  async _offer(peer) {
    const pc = this._newPc(peer);
    this._addTracks(pc);
    if (!this.stream?.getVideoTracks().length) pc.addTransceiver("video", { direction: "recvonly" });
    await pc.setLocalDescription(await pc.createOffer());
    this._send({ type: "offer", to: peer.id, sdp: this._withheld(pc.localDescription.sdp) });
  }

  async _onOffer(peer, sdp) {
    // A new offer is a new connection: the peer started over, or (relayed) retries the direct path.
    const pc = this._newPc(peer);
    await pc.setRemoteDescription({ type: "offer", sdp });
    this._addTracks(pc); // reuses the transceivers the offer created
    await pc.setLocalDescription(await pc.createAnswer());
    this._send({ type: "answer", to: peer.id, sdp: this._withheld(pc.localDescription.sdp) });
    await this._flush(peer);
  }

  _withheld(sdp) {
    return this.p2p ? sdp : sdp.split("\r\n").filter((l) => !l.startsWith("a=candidate:")).join("\r\n");
  }

  async _onCandidate(peer, candidate) {
    if (!this.p2p) return;
    if (!peer.pc?.remoteDescription) {
      peer.pending.push(candidate);
      return;
    }
    await peer.pc.addIceCandidate(candidate ?? undefined);
  }

  async _flush(peer) {
    const pending = peer.pending.splice(0);
    for (const c of pending) await this._onCandidate(peer, c);
  }

  // ---- relay --------------------------------------------------------------------------------------------------
  _fallBack(peer) {
    if (peer.path === "p2p" || peer.path === "relay" || !this.peers.has(peer.id)) return;
    peer.tile.note.textContent = "No direct connection; trying through the server…";
    this._send({ type: "relay", to: peer.id });
  }

  _onRelay(peer, mid) {
    clearTimeout(peer.timer);
    if (peer.path === "relay" && peer.relayReceiver) return; // the other side asked too: already relayed
    this._closePc(peer);
    const transceiver = mid == null ? null : this.serverPc?.getTransceivers().find((t) => t.mid === mid);
    if (!transceiver) {
      peer.path = "none";
      peer.tile.note.textContent = `No connection to ${peer.name || peer.role}: neither direct nor through the server.`;
      return;
    }
    peer.path = "relay";
    peer.relayReceiver = transceiver.receiver;
    peer.tile.video.srcObject = null;
    peer.tile.audio.srcObject = new MediaStream([transceiver.receiver.track]);
    peer.tile.figure.classList.add("no-video");
    peer.tile.note.textContent =
      "Video is off: there is no direct connection between you, so only audio goes through the server.";
    this._scheduleRetry(peer);
  }

  _closePc(peer) {
    peer.pc?.close();
    peer.pc = null;
    peer.pending = [];
  }

  _remove(peer) {
    clearTimeout(peer.timer);
    clearTimeout(peer.retryTimer);
    this._closePc(peer);
    peer.tile.figure.remove();
    this.peers.delete(peer.id);
  }

  // ---- quality ------------------------------------------------------------------------------------------------
  async _counts(peer) {
    const out = { audioPackets: 0, videoFrames: 0, lost: 0, jitterS: null, rttS: null };
    const source = peer.path === "relay" ? peer.relayReceiver : peer.pc;
    if (!source) return out;
    const report = await source.getStats();
    for (const s of report.values()) {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        out.audioPackets += s.packetsReceived ?? 0;
        out.lost += Math.max(0, s.packetsLost ?? 0);
        out.jitterS = s.jitter ?? out.jitterS;
      } else if (s.type === "inbound-rtp" && s.kind === "video") {
        out.videoFrames += s.framesDecoded ?? 0;
      } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
        out.rttS = s.currentRoundTripTime ?? out.rttS;
      }
    }
    if (peer.path === "relay" && out.rttS === null && this.serverPc) {
      // the relayed audio's round trip is at least this page's to the server
      for (const s of (await this.serverPc.getStats()).values()) {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") out.rttS = s.currentRoundTripTime ?? null;
      }
    }
    return out;
  }

  async _measure() {
    if (!this.peers.size) return;
    this.samples += 1;
    const reports = [];
    for (const peer of this.peers.values()) {
      if (peer.path !== "p2p" && peer.path !== "relay") continue;
      const c = await this._counts(peer).catch(() => null);
      if (!c) continue;
      const last = peer.lastCounts ?? { audioPackets: 0, lost: 0 };
      const received = c.audioPackets - last.audioPackets;
      const lost = c.lost - last.lost;
      peer.lastCounts = c;
      const lossRatio = received + lost > 0 ? Math.max(0, lost) / (received + lost) : 0;
      peer.quality = { rttS: c.rttS, jitterS: c.jitterS ?? 0, lossRatio };
      const level = qualityLevel(peer.quality);
      const text = describeQuality(peer.quality, peer.path);
      peer.tile.quality.dataset.level = level;
      peer.tile.quality.title = text;
      peer.tile.quality.setAttribute("aria-label", text);
      reports.push({ participantId: peer.id, path: peer.path, ...peer.quality });
    }
    if (reports.length && this.samples % REPORT_EVERY === 0) this._send({ type: "stats", peers: reports });
  }
}
