// The live transcript panel: one element per sentence, keyed by speaker and seq. Partials update it in place,
// the final replaces it, a revision replaces the final's text where it stands; sentences picked elsewhere on the
// page (a keyword, a tone point) are highlighted here.
import { fmtTime } from "/static/ui.js";

export class Transcript {
  constructor({ log, empty, count, jump }) {
    this.log = log; // the role="log" element
    this.empty = empty;
    this.count = count;
    this.jump = jump;
    this.segments = new Map(); // "pid:seq" -> {pid, seq, el, final, text, start_s, end_s, revision, original}
    this.finals = 0;
    this.selection = null; // {pid, seqs:Set}
    log.addEventListener("scroll", () => {
      if (this._nearBottom()) jump.hidden = true;
    });
    jump.addEventListener("click", () => {
      log.scrollTop = log.scrollHeight;
      jump.hidden = true;
    });
  }

  /** Replace the placeholder text shown before the first line. */
  notice(...nodes) {
    this.empty?.replaceChildren(...nodes);
  }

  onPartial(s, ev) {
    ev.final = false; // the wire form says it in `type` only
    this._segment(s, ev);
  }

  onFinal(s, ev) {
    ev.final = true;
    this._segment(s, ev);
  }

  // `segment.revised`: a final decoded again with the conversation as context. Its text replaces the final's where
  // it stands (quietly: the log announces additions only); the live text stays in the element's tooltip.
  onRevised(s, ev) {
    ev.final = true;
    const key = `${s.pid}:${ev.seq}`;
    const revision = Number(ev.revision) || 1;
    let known = this.segments.get(key);
    if (known?.final && (known.revision ?? 0) >= revision) return; // the backlog repeating it, or an older one late
    let original;
    if (known?.final) {
      original = known.original ?? known.text;
      fillSegment(known.el, ev);
    } else {
      // Its final is not shown: the backlog after a restart sends a revised sentence alone, with the live text as
      // `originalText`. It takes the place of a partial shown for it, or arrives as the sentence's final.
      original = String(ev.originalText ?? "");
      const stick = this._nearBottom();
      this.empty?.remove();
      const el = segmentElement(s, ev);
      if (known) known.el.replaceWith(el);
      else this.log.append(el);
      markContinued(el);
      known = { pid: s.pid, seq: ev.seq, el, start_s: ev.start_s, end_s: ev.end_s };
      this.segments.set(key, known);
      this._countFinal();
      this._afterInsert(stick);
    }
    Object.assign(known, { final: true, text: ev.text, revision, original });
    known.el.classList.add("revised");
    known.el.dataset.revision = String(revision);
    if (original) known.el.title += `\nRevised with the conversation as context; live text: “${original}”`;
    this._applyHighlight();
  }

  /** A line about the room rather than a sentence ("… joined"). */
  systemLine(text) {
    const stick = this._nearBottom();
    this.empty?.remove();
    const el = document.createElement("p");
    el.className = "system small muted";
    el.textContent = text;
    this.log.append(el);
    this._afterInsert(stick);
  }

  /** A sentence that will not get its final says so where it stands, instead of staying "in progress". */
  markFailed(pid, seq, reason) {
    const known = this.segments.get(`${pid}:${seq}`);
    if (!known || known.final || known.el.querySelector(".tag-error")) return;
    const tag = document.createElement("span");
    tag.className = "tag tag-error";
    tag.textContent = "not transcribed";
    tag.title = reason;
    known.el.querySelector(".text").append(tag);
    known.el.classList.add("failed");
  }

  /** The shown final text of a speaker's sentences, one "m:ss  text" line each (for a keyword's tooltip). */
  describe(pid, seqs) {
    const lines = [];
    for (const seq of seqs) {
      const seg = this.segments.get(`${pid}:${seq}`);
      if (seg?.final) lines.push(`${fmtTime(seg.start_s)}  ${seg.text}`);
    }
    return lines.length ? lines.join("\n") : "(sentences not shown yet)";
  }

  /** Highlight one speaker's sentences ({pid, seqs:Set}), now and as they arrive; null clears. */
  highlight(selection) {
    this.selection = selection;
    this._applyHighlight();
  }

  /** Scroll the first of the selected sentences into view. */
  reveal(selection) {
    const first = [...this.segments.values()]
      .filter((seg) => seg.pid === selection.pid && selection.seqs.has(Number(seg.seq)))
      .sort((a, b) => a.seq - b.seq)[0];
    first?.el.scrollIntoView({ block: "center", behavior: "smooth" });
  }

  _segment(s, ev) {
    const key = `${s.pid}:${ev.seq}`;
    const known = this.segments.get(key);
    if (known?.final) return; // a late partial, or the backlog repeating a final we already show
    const stick = this._nearBottom();
    if (ev.final && !(ev.text || "").trim()) {
      // The final says there was nothing to transcribe: drop the partial that promised text.
      known?.el.remove();
      this.segments.delete(key);
      return;
    }
    this.empty?.remove();
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
      this.log.append(el);
      markContinued(el);
      this.segments.set(key, {
        pid: s.pid, seq: ev.seq, el, final: Boolean(ev.final), text: ev.text, start_s: ev.start_s, end_s: ev.end_s,
      });
    }
    if (ev.final) {
      this._countFinal();
      this._applyHighlight();
    }
    this._afterInsert(stick);
  }

  _countFinal() {
    this.finals += 1;
    this.count.textContent = `${this.finals} sentence${this.finals === 1 ? "" : "s"}`;
  }

  _applyHighlight() {
    const sel = this.selection;
    for (const seg of this.segments.values()) {
      seg.el.classList.toggle("highlight", Boolean(sel && seg.pid === sel.pid && sel.seqs.has(Number(seg.seq))));
    }
  }

  _nearBottom() {
    const el = this.log;
    return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
  }

  _afterInsert(wasNearBottom) {
    if (wasNearBottom) {
      this.log.scrollTop = this.log.scrollHeight;
      this.jump.hidden = true;
    } else {
      this.jump.hidden = false;
    }
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
  who.textContent = s.label;
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
  el.classList.toggle("crosstalk", Boolean(ev.crosstalk));
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
  if (ev.crosstalk) {
    // another participant's voice picked up by this microphone: their own line has the sentence
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = "cross-talk · not analysed";
    tag.title = "The same words as another participant's louder sentence at the same time: this microphone heard them.";
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
