// The tone-of-words panel (advisory): per speaker, the rolling sentiment of their sentences over stream time as a
// line and each sentence's own score as a dot, on a canvas drawn by hand, and each speaker's latest in words below.
// Clicking a dot selects the sentence it came from.
import { fmtTime } from "/static/ui.js";

const PAD = { l: 62, r: 8, t: 8, b: 18 };

function cssColor(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

function leaning(v) {
  if (v >= 0.25) return "leaning positive";
  if (v <= -0.25) return "leaning negative";
  return "neutral";
}

export class Tone {
  constructor({ canvas, legend, summary, onSelect }) {
    this.canvas = canvas;
    this.legend = legend;
    this.summary = summary;
    this.series = new Map(); // pid -> {speaker, list: [{seq, score, rolling, t}]}
    this.points = []; // hit-test list of drawn dots: {x, y, pid, seq}
    this._drawQueued = false;
    canvas.addEventListener("click", (e) => {
      const r = canvas.getBoundingClientRect();
      const mx = e.clientX - r.left;
      const my = e.clientY - r.top;
      let best = null;
      let bestD = 12 * 12;
      for (const p of this.points) {
        const d = (p.x - mx) ** 2 + (p.y - my) ** 2;
        if (d < bestD) { best = p; bestD = d; }
      }
      onSelect(best ? { pid: best.pid, seqs: new Set([Number(best.seq)]) } : null);
    });
    const redraw = () => this._scheduleDraw();
    new ResizeObserver(redraw).observe(canvas);
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", redraw);
  }

  /** A `sentiment` event about a sentence of speaker `s`. */
  onSentiment(s, ev) {
    const score = Number(ev.score);
    const rolling = Number(ev.rolling);
    if (!Number.isFinite(score) || !Number.isFinite(rolling)) return;
    const list = this.series.get(s.pid)?.list ?? [];
    const point = { seq: ev.seq, score, rolling, t: Number(ev.end_s) || 0 };
    // One point per sentence: a revised sentence's new score (or the backlog repeating one, in order) replaces it.
    const at = list.findIndex((p) => p.seq === ev.seq);
    if (at >= 0) list[at] = point;
    else list.push(point);
    this.series.set(s.pid, { speaker: s, list });
    this._renderText();
    this._scheduleDraw();
  }

  /** Sentence `seq` of speaker `s` turned out to be someone else's voice (cross-talk): its point goes. */
  drop(s, seq) {
    const list = this.series.get(s.pid)?.list;
    const at = list ? list.findIndex((p) => p.seq === seq) : -1;
    if (at < 0) return;
    list.splice(at, 1);
    if (!list.length) this.series.delete(s.pid);
    this._renderText();
    this._scheduleDraw();
  }

  _scheduleDraw() {
    if (this._drawQueued) return;
    this._drawQueued = true;
    requestAnimationFrame(() => {
      this._drawQueued = false;
      this._draw();
    });
  }

  _draw() {
    const c = this.canvas;
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
    for (const { list } of this.series.values()) for (const p of list) tMax = Math.max(tMax, p.t);
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

    this.points = [];
    for (const [pid, { speaker: s, list }] of this.series) {
      const color = cssColor(s.color);
      const sorted = [...list].sort((a, b) => a.t - b.t);
      g.globalAlpha = 0.35;
      g.fillStyle = color;
      for (const p of sorted) {
        g.beginPath();
        g.arc(x(p.t), y(p.score), 3, 0, Math.PI * 2);
        g.fill();
        this.points.push({ x: x(p.t), y: y(p.score), pid, seq: p.seq });
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

  _renderText() {
    const legend = [];
    const items = [];
    const aria = [];
    for (const { speaker: s, list } of this.series.values()) {
      const last = list.reduce((a, b) => (b.t >= a.t ? b : a));
      const span = document.createElement("span");
      span.style.setProperty("--speaker", `var(${s.color})`);
      span.textContent = s.label;
      legend.push(span);
      const li = document.createElement("li");
      li.style.setProperty("--speaker", `var(${s.color})`);
      const b = document.createElement("b");
      b.textContent = s.label;
      const sign = last.rolling > 0 ? "+" : "";
      li.append(b, ` ${leaning(last.rolling)} · ${sign}${last.rolling.toFixed(2)} · ${list.length} sentence${list.length === 1 ? "" : "s"}`);
      items.push(li);
      aria.push(`${s.label}: ${leaning(last.rolling)}, ${sign}${last.rolling.toFixed(2)}`);
    }
    this.legend.replaceChildren(...legend);
    this.summary.replaceChildren(...items);
    this.canvas.setAttribute("aria-label", `Sentiment timeline (advisory, from text). ${aria.join("; ")}`);
  }
}
