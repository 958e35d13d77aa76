// Live guidance panel (interviewers and observers only; the candidate's page never receives these events):
// protected-topic alerts as a private banner, the interview guide as a checklist with the time used per section
// against its budget, talk balance as a bar. All computed on the server from the transcript text only.
import { fmtTime } from "/static/ui.js";

/** "used / budget" and, past the budget, by how much: the text says it, not only the colour. */
function timeUsed(spent, budget) {
  if (budget === null || budget === undefined) return `${fmtTime(spent)} used`;
  // whole seconds, as shown: "5:00 / 5:00 — over by 0:00" would say nothing
  const over = Math.floor(Number(spent) || 0) - Math.floor(Number(budget) || 0);
  return `${fmtTime(spent)} / ${fmtTime(budget)}${over >= 1 ? ` — over by ${fmtTime(over)}` : ""}`;
}

export class Guidance {
  constructor({ banner, checklist, sections, extra, balance, longest }) {
    this.banner = banner;
    this.checklist = checklist;
    this.sections = sections;
    this.extra = extra;
    this.balance = balance;
    this.longest = longest;
    this.seenAlerts = new Set();
  }

  /** `alert.protected_topic`: the question, the topic and a lawful rephrasing, until dismissed. */
  onAlert(ev) {
    const key = `${ev.participantId}:${ev.seq}`;
    if (this.seenAlerts.has(key)) return;
    this.seenAlerts.add(key);
    const item = document.createElement("div");
    item.className = "guidance-alert";
    item.setAttribute("role", "alert");
    const head = document.createElement("strong");
    head.textContent = `Protected topic: ${String(ev.topic || "").replace("_", " ")}`;
    const asked = document.createElement("p");
    asked.className = "small";
    asked.textContent = `“${ev.text || ""}”`;
    const instead = document.createElement("p");
    instead.className = "small";
    instead.textContent = `Instead: ${ev.rephrase || ""}`;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "small";
    close.textContent = "Dismiss";
    close.addEventListener("click", () => item.remove());
    item.append(head, asked, instead, close);
    this.banner.append(item);
    this.banner.hidden = false;
  }

  /** `guide.coverage`: every guide question, ticked with the sentence that covered it and its time against its
   * budget; per section the time used (against the section's budget when it has one); extra questions below. */
  onCoverage(ev) {
    const items = Array.isArray(ev.items) ? ev.items : [];
    const rows = items.map((it) => {
      const li = document.createElement("li");
      li.dataset.covered = String(Boolean(it.covered));
      li.textContent = `${it.covered ? "✓" : "○"} ${it.text}`;
      if (it.budgetS !== null && it.budgetS !== undefined) {
        const time = document.createElement("span");
        time.className = "guide-time";
        time.dataset.over = String(Boolean(it.over));
        time.textContent = `(${timeUsed(it.spentS, it.budgetS)})`;
        li.append(time);
      }
      if (it.category) li.title = it.category;
      if (it.coveredBy) li.title += ` — asked as “${it.coveredBy.text}” (#${it.coveredBy.seq})`;
      return li;
    });
    this.checklist.replaceChildren(...rows);
    const sections = Array.isArray(ev.sections) ? ev.sections : [];
    if (this.sections) {
      // events stored before budgets have no `spentS`: nothing to show for them
      this.sections.replaceChildren(...sections.filter((s) => s.spentS !== undefined).map((s) => {
        const li = document.createElement("li");
        li.dataset.over = String(Boolean(s.over));
        li.textContent = `${s.category || "Other"}: ${timeUsed(s.spentS, s.budgetS)}`;
        return li;
      }));
    }
    const extra = Array.isArray(ev.extra) ? ev.extra : [];
    this.extra.textContent = extra.length ? `Not in the guide: ${extra.map((x) => `“${x.text}”`).join(", ")}` : "";
  }

  /** `talk.balance`: each participant's share of speaking time, interruptions, the longest answer. */
  onBalance(ev) {
    const rows = Array.isArray(ev.participants) ? ev.participants : [];
    const segs = rows.map((r) => {
      const seg = document.createElement("span");
      seg.className = "balance-seg";
      seg.dataset.role = r.role;
      seg.style.flexGrow = String(Math.max(0.01, Number(r.share) || 0));
      const pct = Math.round((Number(r.share) || 0) * 100);
      seg.textContent = `${r.role} ${pct}%`;
      seg.title = `${r.role}: ${Number(r.speakingSeconds).toFixed(0)} s, ${r.interruptions} interruption(s)`;
      return seg;
    });
    this.balance.replaceChildren(...segs);
    const l = ev.longestCandidateAnswer;
    this.longest.textContent = l ? `Longest answer: ${Number(l.seconds).toFixed(0)} s, ${l.words} words` : "";
  }
}
