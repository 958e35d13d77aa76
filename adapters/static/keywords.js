// The top-keywords panel (advisory): per speaker, their ten most relevant terms with counts. Hovering a keyword
// shows the sentences it came from; clicking one selects those sentences, clicking it again clears the selection.

export class Keywords {
  /**
   * `describe(pid, seqs)` gives a tooltip text for a speaker's sentences;
   * `onSelect(selection)` is called with {pid, term, seqs:Set} for a clicked keyword, or null to clear.
   */
  constructor({ root, describe, onSelect }) {
    this.root = root;
    this.describe = describe;
    this.onSelect = onSelect;
    this.lists = new Map(); // pid -> {speaker, list: [{term, count, relevance, seqs}]}
    this.selection = null;
  }

  /** A `keywords` event: speaker `s`'s current list, replacing the last one. */
  onKeywords(s, keywords) {
    const list = Array.isArray(keywords) ? keywords : [];
    this.lists.set(s.pid, { speaker: s, list: list.filter((k) => k && typeof k.term === "string") });
    this._render();
  }

  /** The sentences a speaker's keyword now comes from (a Set of seqs), or null when it is not in their list. */
  seqsOf(pid, term) {
    const kw = this.lists.get(pid)?.list.find((k) => k.term === term);
    return kw ? new Set((kw.seqs || []).map(Number)) : null;
  }

  /** Show the selected keyword as pressed; any other selection (a tone point) presses none. */
  highlight(selection) {
    this.selection = selection;
    for (const chip of this.root.querySelectorAll(".chip")) {
      const on = Boolean(selection?.term && chip.dataset.pid === selection.pid && chip.dataset.term === selection.term);
      chip.setAttribute("aria-pressed", String(on));
    }
  }

  _render() {
    const blocks = [];
    for (const [pid, { speaker: s, list }] of this.lists) {
      if (!list.length) continue;
      const block = document.createElement("div");
      block.className = "kw-speaker";
      block.style.setProperty("--speaker", `var(${s.color})`);
      const h = document.createElement("h3");
      h.textContent = `${s.label} (${s.role})`;
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
        // The tooltip is built on hover so it shows the sentences' current (final) text.
        chip.addEventListener("mouseenter", () => { chip.title = this.describe(pid, seqs); });
        chip.addEventListener("focus", () => { chip.title = this.describe(pid, seqs); });
        chip.addEventListener("click", () => {
          const same = this.selection?.term === kw.term && this.selection.pid === pid;
          this.onSelect(same ? null : { pid, term: kw.term, seqs: new Set(seqs) });
        });
        chips.append(chip);
      }
      block.append(h, chips);
      blocks.push(block);
    }
    if (blocks.length) this.root.replaceChildren(...blocks);
    this.highlight(this.selection);
  }
}
