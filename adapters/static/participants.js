// The participants panel: who is in the room, with each one's audio level from the server's `level` events.
// It is also the room's register of speakers: the other panels label and colour what they show with the Speaker
// records it hands out, so a speaker keeps one colour across the page.

const PALETTE = ["--s1", "--s2", "--s3", "--s4", "--s5", "--s6"];

/** A speaker as the panels show them; `color` names one of the palette's CSS custom properties. */
class Speaker {
  constructor(pid, name, role, color) {
    this.pid = pid;
    this.name = name;
    this.role = role;
    this.color = color;
    this.present = null; // null until a joined/left/level event says otherwise (backlog segments can come first)
  }

  get label() {
    return this.name && this.name !== "Unknown" ? this.name : this.role;
  }
}

export class Participants {
  constructor({ list, empty }) {
    this.list = list;
    this.empty = empty;
    this.speakers = new Map(); // pid -> Speaker
    this.rows = new Map(); // pid -> {li, meter, rms, speaking, levelAt}
    this._levelsQueued = false;
    setInterval(() => this._scheduleLevels(), 1000); // a speaker with no level for a while fades to silence
  }

  /** The Speaker of an event's `speaker` ({participantId, name, role}), registered and listed on first sight. */
  speaker(sp) {
    const pid = String(sp?.participantId ?? "");
    let s = this.speakers.get(pid);
    if (!s) {
      const color = PALETTE[this.speakers.size % PALETTE.length];
      s = new Speaker(pid, sp?.name || "Unknown", sp?.role || "participant", color);
      this.speakers.set(pid, s);
      this._render(s);
    } else if (sp?.name && sp.name !== s.name) {
      s.name = sp.name;
      this._render(s);
    }
    return s;
  }

  /** A `level` event. */
  onLevel(ev) {
    const s = this.speaker(ev.speaker);
    const row = this.rows.get(s.pid);
    row.rms = Number(ev.rms_dbfs);
    row.speaking = Boolean(ev.speaking);
    row.levelAt = performance.now();
    if (s.present !== true) {
      s.present = true;
      this._render(s);
    }
    this._scheduleLevels();
  }

  /** A `participant.joined` or `participant.left` event: the Speaker when it changed their presence, else null. */
  onPresence(ev) {
    const s = this.speaker(ev.speaker);
    const present = ev.type === "participant.joined";
    if (present === s.present) return null;
    s.present = present;
    this._render(s);
    this._scheduleLevels();
    return s;
  }

  _render(s) {
    this.empty?.remove();
    let row = this.rows.get(s.pid);
    if (!row) {
      const li = document.createElement("li");
      li.style.setProperty("--speaker", `var(${s.color})`);
      const dot = document.createElement("span");
      dot.className = "dot";
      const name = document.createElement("span");
      name.className = "name";
      const role = document.createElement("span");
      role.className = "role";
      const meter = document.createElement("div");
      meter.className = "meter";
      meter.setAttribute("role", "meter");
      meter.setAttribute("aria-valuemin", "0");
      meter.setAttribute("aria-valuemax", "100");
      meter.setAttribute("aria-valuenow", "0");
      const fill = document.createElement("div");
      fill.className = "fill";
      meter.append(fill);
      li.append(dot, name, role, meter);
      this.list.append(li);
      row = { li, meter, rms: -100, speaking: false, levelAt: 0 };
      this.rows.set(s.pid, row);
    }
    row.li.dataset.pid = s.pid;
    row.li.querySelector(".name").textContent = s.label;
    row.li.querySelector(".role").textContent = s.present === false ? `${s.role} · left` : s.role;
    row.li.classList.toggle("gone", s.present === false);
    row.meter.setAttribute("aria-label", `${s.label} audio level`);
  }

  _scheduleLevels() {
    if (this._levelsQueued) return;
    this._levelsQueued = true;
    requestAnimationFrame(() => {
      this._levelsQueued = false;
      const now = performance.now();
      for (const s of this.speakers.values()) {
        const row = this.rows.get(s.pid);
        const stale = now - row.levelAt > 1500 || s.present === false; // no level for a while: show silence
        const pct = stale ? 0 : Math.max(0, Math.min(100, ((row.rms + 60) / 60) * 100));
        row.meter.firstElementChild.style.width = `${pct.toFixed(1)}%`;
        row.meter.classList.toggle("speaking", !stale && row.speaking);
        row.meter.setAttribute("aria-valuenow", String(Math.round(pct)));
      }
    });
  }
}
