// The web app's interview views: the dashboard (interviews by date and status), scheduling, and one interview
// (the candidate link, cancelling, and the interviewer's one-click join). The server already filters what each
// role may see; these views only choose which actions to offer.
import { ApiError } from "/static/app_api.js";
import { copyText, el, field, pageHeading, toast } from "/static/ui.js";

const STATUSES = ["scheduled", "in_progress", "completed", "cancelled"];
const STATUS_TEXT = { scheduled: "Scheduled", in_progress: "In progress", completed: "Completed", cancelled: "Cancelled" };
// domain/model.py INTERVIEW_TYPES and INTERVIEW_FORMATS
const TYPES = ["screening", "technical", "behavioral", "cultural", "case", "final"];
const FORMATS = ["video", "audio", "phone", "in_person"];
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/; // domain/model.py ID_RE
const [BUDGET_MIN_S, BUDGET_MAX_S] = [1, 8 * 3600]; // domain/model.py QUESTION_BUDGET_S
const COMPETENCY_MAX = 100; // domain/commands.py AddQuestion: `category`, at most 100 characters once stripped
const PAGE = 50;
const LOOKUP_PAGES = 4; // names for ids: at most this many pages of candidates

const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

const canSchedule = (me) => me.role === "hr" || me.role === "admin";
const isOpen = (interview) => interview.status === "scheduled" || interview.status === "in_progress";
const words = (text) => String(text).replace(/_/g, " ");

export function statusBadge(status) {
  return el("span", { class: `status status-${status}`, text: STATUS_TEXT[status] || status });
}

function select(options, value) {
  return el("select", {}, options.map(([v, text]) => el("option", { value: v, text, selected: v === value })));
}

/**
 * Who is who: candidate and user names by id, where this role may read them (null where it may not). Interviewers
 * do not ask: the lists are HR's, and every refusal would be an audited permission denial.
 */
async function directory(api, me) {
  const people = canSchedule(me);
  const [candidates, users] = await Promise.all([people ? listCandidates(api) : null, people ? listUsers(api) : null]);
  return {
    candidates,
    users: users ? new Map(users.map((u) => [u.userId, u])) : null,
  };
}

async function listCandidates(api) {
  const byId = new Map();
  let cursor = null;
  try {
    for (let i = 0; i < LOOKUP_PAGES; i++) {
      const page = await api.get("/api/candidates", { cursor, limit: 200 });
      for (const c of page.items) byId.set(c.candidateId, c);
      cursor = page.nextCursor;
      if (!cursor) break;
    }
  } catch (exc) {
    if (exc instanceof ApiError && (exc.status === 403 || exc.status === 404)) return null;
    throw exc;
  }
  return byId;
}

/** The organisation's users, or null where this role may not list them. */
export async function listUsers(api) {
  try {
    return (await api.get("/api/users")).items;
  } catch (exc) {
    if (exc instanceof ApiError && (exc.status === 403 || exc.status === 404)) return null;
    throw exc;
  }
}

function candidateName(dir, id) {
  return dir.candidates?.get(id)?.name || id;
}

function userName(dir, id) {
  const user = dir.users?.get(id);
  return user ? user.name || user.email : id;
}

/** Ask for this interviewer's own join link and open the overlay with it. */
async function join(api, interview, button) {
  button.disabled = true;
  const label = button.textContent;
  button.textContent = "Joining…";
  try {
    const { joinUrl } = await api.post(`/api/interviews/${encodeURIComponent(interview.interviewId)}/join`);
    window.location.assign(joinUrl);
  } catch (exc) {
    toast(`Could not join: ${exc.message}`);
    button.disabled = false;
    button.textContent = label;
  }
}

function joinButton(ctx, interview, text = "Join") {
  if (!isOpen(interview) || !interview.interviewers.includes(ctx.me.userId)) return null;
  const button = el("button", { type: "button", class: "primary small", text,
    "aria-label": text === "Join" ? `Join the interview at ${timeFormat.format(new Date(interview.scheduledAt))}` : null });
  button.addEventListener("click", () => join(ctx.api, interview, button));
  return button;
}

function localDateKey(date) {
  return `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, "0")}-${String(date.getDate()).padStart(2, "0")}`;
}

/** `YYYY-MM-DD` (a date input's value) as the instant that day starts here, ISO with a zone; `days` later. */
function dayStart(value, days = 0) {
  const [y, m, d] = value.split("-").map(Number);
  return new Date(y, m - 1, d + days).toISOString();
}

// ---- dashboard ----------------------------------------------------------------------------------------------

async function renderDashboard(ctx) {
  const { root, query, me } = ctx;
  const status = query.get("status") || "";
  const from = query.get("from") || "";
  const to = query.get("to") || "";
  root.append(el("div", { class: "view-head" }, pageHeading("Interviews"),
    canSchedule(me) ? el("a", { class: "button primary", href: "/app/schedule", text: "Schedule an interview" }) : null));
  if (me.role === "interviewer") {
    root.append(el("p", { class: "muted", text: "The interviews you are assigned to. Join opens the live overlay." }));
  }

  const statusSelect = select([["", "All statuses"], ...STATUSES.map((s) => [s, STATUS_TEXT[s]])], status);
  const fromInput = el("input", { type: "date", value: from });
  const toInput = el("input", { type: "date", value: to });
  const filters = el("form", { class: "filters panel", "aria-label": "Filter interviews" },
    field("filter-status", "Status", statusSelect),
    field("filter-from", "From", fromInput),
    field("filter-to", "To (inclusive)", toInput),
    el("div", { class: "actions" }, el("button", { type: "submit", text: "Apply filters" }),
      el("a", { href: "/app/", class: "button", text: "Clear" })));
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    if (statusSelect.value) params.set("status", statusSelect.value);
    if (fromInput.value) params.set("from", fromInput.value);
    if (toInput.value) params.set("to", toInput.value);
    ctx.navigate(`/app/${params.toString() ? `?${params}` : ""}`);
  });
  root.append(filters);

  const summary = el("p", { class: "summary", role: "status" });
  const list = el("div", { class: "days" });
  const more = el("button", { type: "button", hidden: true, text: "Load more" });
  root.append(summary, list, more);

  const dir = await directory(ctx.api, me);
  const filter = { status, from: from ? dayStart(from) : "", to: to ? dayStart(to, 1) : "", limit: PAGE };
  const interviews = [];
  let cursor = null;

  const draw = () => {
    const counts = STATUSES.map((s) => [s, interviews.filter((i) => i.status === s).length]).filter(([, n]) => n);
    summary.textContent = interviews.length
      ? `${interviews.length} interview${interviews.length === 1 ? "" : "s"}: ${counts.map(([s, n]) => `${n} ${STATUS_TEXT[s].toLowerCase()}`).join(", ")}`
      : "No interviews match.";
    const byDay = new Map();
    for (const interview of [...interviews].sort((a, b) => a.scheduledAt.localeCompare(b.scheduledAt))) {
      const at = new Date(interview.scheduledAt);
      const key = localDateKey(at);
      if (!byDay.has(key)) byDay.set(key, { label: dayFormat.format(at), items: [] });
      byDay.get(key).items.push(interview);
    }
    list.replaceChildren(...[...byDay.values()].map((day) => dayTable(ctx, dir, day)));
    more.hidden = !cursor;
  };

  const load = async () => {
    more.disabled = true;
    try {
      const page = await ctx.api.get("/api/interviews", { ...filter, cursor });
      if (!ctx.isCurrent()) return;
      interviews.push(...page.items);
      cursor = page.nextCursor;
      draw();
    } finally {
      more.disabled = false;
    }
  };
  more.addEventListener("click", () => load().catch((exc) => toast(exc.message)));
  await load();
  return "Interviews";
}

function dayTable(ctx, dir, day) {
  const showInterviewers = canSchedule(ctx.me);
  const rows = day.items.map((interview) => {
    const at = new Date(interview.scheduledAt);
    const detail = `/app/interviews/${encodeURIComponent(interview.interviewId)}`;
    return el("tr", { dataset: { interviewId: interview.interviewId, status: interview.status } },
      el("td", {}, el("time", { datetime: interview.scheduledAt, text: timeFormat.format(at) })),
      el("th", { scope: "row" }, el("a", { href: detail, text: candidateName(dir, interview.candidateId) })),
      el("td", { text: interview.jobId }),
      el("td", { text: words(interview.type) }),
      el("td", {}, statusBadge(interview.status)),
      showInterviewers ? el("td", { text: interview.interviewers.map((id) => userName(dir, id)).join(", ") || "—" }) : null,
      el("td", { class: "row-actions" }, joinButton(ctx, interview),
        el("a", { href: detail, text: "Details", "aria-label": `Details of the interview with ${candidateName(dir, interview.candidateId)}` }),
        interview.status === "completed" ? el("a", { href: `${detail}/report`, text: "Report",
          "aria-label": `Report of the interview with ${candidateName(dir, interview.candidateId)}` }) : null));
  });
  return el("section", { class: "day" },
    el("div", { class: "table-wrap" }, el("table", { class: "interviews" },
      el("caption", { text: `${day.label} · ${day.items.length} interview${day.items.length === 1 ? "" : "s"}` }),
      el("thead", {}, el("tr", {}, ["Time", "Candidate", "Job", "Type", "Status",
        ...(showInterviewers ? ["Interviewers"] : []), "Actions"]
        .map((h) => el("th", { scope: "col", class: `col-${h.toLowerCase()}`, text: h })))),
      el("tbody", {}, rows))));
}

// ---- scheduling ---------------------------------------------------------------------------------------------

/** The UTC offset of `tz` at the instant `utcMs`, in minutes east of UTC. */
function offsetMinutes(utcMs, tz) {
  const parts = new Intl.DateTimeFormat("en-US", {
    timeZone: tz, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  }).formatToParts(new Date(utcMs));
  const get = (type) => Number(parts.find((p) => p.type === type).value);
  const wall = Date.UTC(get("year"), get("month") - 1, get("day"), get("hour"), get("minute"), get("second"));
  return Math.round((wall - utcMs) / 60000);
}

/** A wall-clock time (`YYYY-MM-DDTHH:MM`, a datetime-local value) in time zone `tz` as ISO 8601 with its offset. */
export function zonedIso(local, tz) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})/.exec(local);
  if (!m) throw new Error("Enter a date and time.");
  const wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5]);
  // The offset at the wall time read as UTC is right except within a few hours of a change; asking again at the
  // corrected instant settles it.
  const offset = offsetMinutes(wall - offsetMinutes(wall, tz) * 60000, tz);
  const abs = Math.abs(offset);
  const pad = (n) => String(n).padStart(2, "0");
  return `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:00${offset < 0 ? "-" : "+"}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

function timeZones() {
  const here = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const all = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  return { here, all: [...new Set([here, "UTC", ...all])].sort() };
}

function fieldErrors(exc) {
  if (!(exc instanceof ApiError) || !exc.fields) return exc.message;
  return `${exc.message} ${Object.entries(exc.fields).map(([name, text]) => `${name}: ${text}`).join("; ")}`;
}

/**
 * A question's time budget input as whole seconds (null: none given) or the problem with it, in words. The input
 * is minutes; the range is the API's (1 s to 8 h), checked before rounding so 0.01 min is refused, not sent as 1 s.
 */
function budgetSeconds(input, text, n) {
  const raw = input.value.trim();
  if (!raw && !input.validity.badInput) return { seconds: null, problem: null };
  const minutes = Number(raw);
  if (input.validity.badInput || !raw || !Number.isFinite(minutes)) {
    return { seconds: null, problem: `Question ${n}: enter the time budget in minutes, as a number (like 5 or 0.5).` };
  }
  const seconds = minutes * 60;
  if (seconds < BUDGET_MIN_S || seconds > BUDGET_MAX_S) {
    return { seconds: null,
      problem: `Question ${n}: the time budget must be from 1 second to 8 hours (480 minutes); ${raw} minutes is not.` };
  }
  if (!text) return { seconds: null, problem: `Question ${n} has a time budget but no text: write the question or clear the budget.` };
  return { seconds: Math.round(seconds), problem: null };
}

/**
 * A question's competency as sent (its `category`, trimmed; "" when none) or the problem with it, in words. The
 * length is counted in characters (code points) as the API counts them, not in UTF-16 units as `maxlength` would,
 * and the field has no `maxlength`: a pasted name too long is said, not cut short.
 */
function competencyValue(input, text, n) {
  const value = input.value.trim();
  const length = [...value].length;
  if (length > COMPETENCY_MAX) {
    return { value: "", tooLong: true, problem: `Question ${n}: a competency can be at most ${COMPETENCY_MAX} characters; this one has ${length}.` };
  }
  if (value && !text) return { value: "", problem: `Question ${n} has a competency but no text: write the question or clear the competency.` };
  return { value, problem: null };
}

/** A budget in seconds in words: "45 s", "5 min", "1 h 30 min", "2 min 30 s". */
function budgetText(seconds) {
  const s = Math.round(Number(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  return [h ? `${h} h` : "", m ? `${m} min` : "", rest || s === 0 ? `${rest} s` : ""].filter(Boolean).join(" ");
}

async function renderSchedule(ctx) {
  const { root, api } = ctx;
  root.append(pageHeading("Schedule an interview"));
  const [candidates, users] = await Promise.all([listCandidates(api), listUsers(api)]);
  const known = candidates ? [...candidates.values()].sort((a, b) => a.name.localeCompare(b.name)) : [];

  // Candidate: one of the organisation's, or a new one created just before the interview.
  const pickExisting = el("input", { type: "radio", name: "candidate-source", id: "candidate-existing", value: "existing",
    checked: known.length > 0, disabled: known.length === 0 });
  const pickNew = el("input", { type: "radio", name: "candidate-source", id: "candidate-new", value: "new", checked: known.length === 0 });
  const candidateSelect = select(known.map((c) => [c.candidateId, `${c.name} (${c.email})`]), known[0]?.candidateId);
  const existingBox = el("div", { class: "subfields" }, field("candidate-id", "Candidate", candidateSelect));
  const newName = el("input", { type: "text", autocomplete: "off", maxlength: "200" });
  const newEmail = el("input", { type: "email", autocomplete: "off", maxlength: "254" });
  const newPhone = el("input", { type: "tel", autocomplete: "off", maxlength: "32" });
  const newBox = el("div", { class: "subfields" },
    field("candidate-name", "Candidate name", newName),
    field("candidate-email", "Candidate email", newEmail),
    field("candidate-phone", "Candidate phone (optional)", newPhone));
  const syncCandidate = () => {
    existingBox.hidden = !pickExisting.checked;
    newBox.hidden = !pickNew.checked;
  };
  pickExisting.addEventListener("change", syncCandidate);
  pickNew.addEventListener("change", syncCandidate);
  syncCandidate();

  const jobId = el("input", { type: "text", required: true, maxlength: "64", autocomplete: "off" });
  const type = select(TYPES.map((t) => [t, words(t)]), "screening");
  const format = select(FORMATS.map((f) => [f, words(f)]), "video");
  const when = el("input", { type: "datetime-local", required: true });
  const zones = timeZones();
  const zone = select(zones.all.map((z) => [z, z.replace(/_/g, " ")]), zones.here);

  // Interviewers: picked from the organisation's users where this role may list them, else typed as ids.
  let interviewerInput;
  let pickedInterviewers;
  if (users) {
    const candidatesToPick = users.filter((u) => !u.disabled && u.role === "interviewer");
    const boxes = candidatesToPick.map((u) => el("input", { type: "checkbox", id: `interviewer-${u.userId}`, value: u.userId }));
    interviewerInput = el("fieldset", { class: "checks" }, el("legend", { text: "Interviewers" }),
      boxes.length ? boxes.map((box, i) => el("div", { class: "check" }, box,
        el("label", { for: box.id, text: `${candidatesToPick[i].name || candidatesToPick[i].email} (${candidatesToPick[i].email})` })))
        : el("p", { class: "hint", text: "No interviewer accounts yet: an admin adds them under Users." }));
    pickedInterviewers = () => boxes.filter((b) => b.checked).map((b) => b.value);
  } else {
    const ids = el("input", { type: "text", autocomplete: "off" });
    interviewerInput = field("interviewer-ids", "Interviewer user ids", ids, "Separate several with commas.");
    pickedInterviewers = () => ids.value.split(/[\s,]+/).filter(Boolean);
  }

  // Questions: as many as needed, in order, each with an optional competency (sent as `category`: the guide's
  // sections) and an optional time budget in minutes (sent as `budgetS`).
  const questionList = el("ol", { class: "questions" });
  // the competencies typed in the other rows, offered when a row's competency field is focused
  const competencyOptions = el("datalist", { id: "competency-options" });
  const offerCompetencies = (current) => {
    const typed = [...questionList.querySelectorAll(".competency-input")].filter((input) => input !== current)
      .map((input) => input.value.trim()).filter((v) => v && [...v].length <= COMPETENCY_MAX);
    competencyOptions.replaceChildren(...[...new Set(typed)].map((value) => el("option", { value })));
  };
  let questionIds = 0;
  const addQuestion = (text = "") => {
    const n = ++questionIds;
    const area = el("textarea", { id: `question-${n}`, rows: "2", maxlength: "2000", value: text });
    const competency = el("input", { type: "text", id: `competency-${n}`, list: competencyOptions.id, autocomplete: "off",
      class: "competency-input", "aria-describedby": `competency-hint competency-${n}-error` });
    // polite live region: a screen reader says the length error when it appears, not on every keystroke
    const competencyError = el("p", { class: "field-error", id: `competency-${n}-error`, "aria-live": "polite" });
    // the length is said while typing (once, when it goes over and when it is fixed); a competency without
    // question text only when the form is sent, and typing here leaves that message alone
    competency.addEventListener("input", () => {
      const over = [...competency.value.trim()].length > COMPETENCY_MAX;
      const shown = competencyError.dataset.kind === "length";
      // said already; or nothing to clear, or another problem (said when the form was sent) left alone
      if (over === shown) return;
      const row = [...questionList.children].indexOf(item) + 1;
      competencyError.textContent = over
        ? `Question ${row}: a competency can be at most ${COMPETENCY_MAX} characters; this one has more.` : "";
      competencyError.dataset.kind = over ? "length" : "";
      if (over) competency.setAttribute("aria-invalid", "true");
      else competency.removeAttribute("aria-invalid");
    });
    competency.addEventListener("focus", () => offerCompetencies(competency));
    // type=number: arrow keys step it; `step=any` takes fractions (0.5 = 30 s); the form checks the range itself
    const budget = el("input", { type: "number", id: `budget-${n}`, min: String(BUDGET_MIN_S / 60),
      max: String(BUDGET_MAX_S / 60), step: "any", inputmode: "decimal", autocomplete: "off",
      class: "budget-input", "aria-describedby": `budget-hint budget-${n}-error` });
    const budgetError = el("p", { class: "field-error", id: `budget-${n}-error` });
    budget.addEventListener("input", () => {
      budgetError.textContent = "";
      budget.removeAttribute("aria-invalid");
    });
    const remove = el("button", { type: "button", class: "small danger", text: "Remove" });
    // the tab order is text, competency, budget, Remove; the grid puts Remove beside the text
    const item = el("li", { class: "question" }, el("label", { for: area.id, class: "question-label" }), area,
      el("div", { class: "question-meta" },
        el("div", { class: "competency" }, el("label", { for: competency.id, class: "competency-label" }), competency,
          competencyError),
        el("div", { class: "budget" }, el("label", { for: budget.id, class: "budget-label" }), budget, budgetError)),
      remove);
    remove.addEventListener("click", () => {
      item.remove();
      renumber();
      addButton.focus();
    });
    questionList.append(item);
    renumber();
    return area;
  };
  const renumber = () => {
    [...questionList.children].forEach((item, i) => {
      item.querySelector(".question-label").textContent = `Question ${i + 1}`;
      item.querySelector(".competency-label").textContent = `Competency for question ${i + 1}`;
      item.querySelector(".budget-label").textContent = `Time budget for question ${i + 1} (minutes)`;
      item.querySelector("button").setAttribute("aria-label", `Remove question ${i + 1}`);
    });
  };
  const addButton = el("button", { type: "button", class: "small", text: "Add a question" });
  addButton.addEventListener("click", () => addQuestion().focus());
  addQuestion();
  const budgetHint = el("p", { class: "hint", id: "budget-hint",
    text: "Time budgets are optional, in minutes (0.5 is 30 s), from 1 second to 8 hours (480). The live overlay shows the time used against them." });
  const competencyHint = el("p", { class: "hint", id: "competency-hint",
    text: `Competencies are optional, at most ${COMPETENCY_MAX} characters: questions with the same competency form one section of the guide, with its total time budget.` });

  const error = el("div", { class: "form-error", role: "alert", id: "schedule-error" });
  const submit = el("button", { type: "submit", class: "primary", text: "Schedule interview" });
  const form = el("form", { class: "form panel", novalidate: true, "aria-describedby": "schedule-error" },
    el("fieldset", {}, el("legend", { text: "Candidate" }),
      el("div", { class: "check" }, pickExisting, el("label", { for: pickExisting.id, text: "Existing candidate" })),
      el("div", { class: "check" }, pickNew, el("label", { for: pickNew.id, text: "New candidate" })),
      existingBox, newBox),
    el("div", { class: "grid-2" },
      field("job-id", "Job id", jobId, "Letters, digits, - and _ (at most 64)."),
      field("interview-type", "Type", type),
      field("interview-format", "Format", format)),
    el("div", { class: "grid-2" },
      field("scheduled-at", "Date and time", when),
      field("time-zone", "Time zone", zone)),
    interviewerInput,
    el("fieldset", {}, el("legend", { text: "Questions" }), competencyHint, budgetHint, questionList,
      competencyOptions, addButton),
    error,
    el("div", { class: "actions" }, submit, el("a", { href: "/app/", class: "button", text: "Back to interviews" })));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const problems = [];
    if (pickNew.checked && !newName.value.trim()) problems.push([newName, "Enter the candidate's name."]);
    if (pickNew.checked && !/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(newEmail.value.trim())) problems.push([newEmail, "Enter the candidate's email address."]);
    if (pickExisting.checked && !candidateSelect.value) problems.push([candidateSelect, "Choose a candidate."]);
    if (!ID_RE.test(jobId.value.trim())) problems.push([jobId, "Enter a job id: letters, digits, - and _."]);
    if (!when.value) problems.push([when, "Choose the date and time."]);
    const questions = [];
    [...questionList.children].forEach((item, i) => {
      const text = item.querySelector("textarea").value.trim();
      const competency = item.querySelector(".competency-input");
      const category = competencyValue(competency, text, i + 1);
      const competencyError = item.querySelector(".competency .field-error");
      competencyError.textContent = category.problem || "";
      competencyError.dataset.kind = category.problem ? (category.tooLong ? "length" : "other") : "";
      if (category.problem) problems.push([competency, category.problem]);
      const budget = item.querySelector(".budget-input");
      const { seconds, problem } = budgetSeconds(budget, text, i + 1);
      item.querySelector(".budget .field-error").textContent = problem || "";
      if (problem) problems.push([budget, problem]);
      if (text && !category.problem && !problem) {
        questions.push({ text, ...(category.value ? { category: category.value } : {}), ...(seconds === null ? {} : { budgetS: seconds }) });
      }
    });
    for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
    if (problems.length) {
      for (const [input] of problems) input.setAttribute("aria-invalid", "true");
      error.replaceChildren(el("p", { text: "Please correct these:" }), el("ul", {}, problems.map(([, text]) => el("li", { text }))));
      problems[0][0].focus();
      return;
    }
    submit.disabled = true;
    try {
      let candidateId = candidateSelect.value;
      if (pickNew.checked) {
        const created = await api.post("/api/candidates", {
          name: newName.value.trim(), email: newEmail.value.trim(), ...(newPhone.value.trim() ? { phone: newPhone.value.trim() } : {}),
        });
        candidateId = created.candidateId;
      }
      const interview = await api.post("/api/interviews", {
        candidateId, jobId: jobId.value.trim(), scheduledAt: zonedIso(when.value, zone.value),
        type: type.value, format: format.value, interviewers: pickedInterviewers(), questions,
      });
      toast("Interview scheduled.", { kind: "info" });
      ctx.navigate(`/app/interviews/${encodeURIComponent(interview.interviewId)}`);
    } catch (exc) {
      error.textContent = `Not scheduled: ${fieldErrors(exc)}`;
      submit.disabled = false;
    }
  });
  root.append(form);
  return "Schedule an interview";
}

// ---- one interview ------------------------------------------------------------------------------------------

function candidateLinkSection(ctx, interview, dir) {
  const section = el("section", { class: "panel", "aria-labelledby": "link-title" },
    el("h2", { id: "link-title", text: "Candidate link" }));
  if (!isOpen(interview)) {
    section.append(el("p", { class: "muted", text: "This interview is over: no new links." }));
    return section;
  }
  const output = el("div", { class: "link-output", hidden: true });
  const create = el("button", { type: "button", class: "primary", text: "Copy candidate link" });
  create.addEventListener("click", async () => {
    create.disabled = true;
    try {
      const link = await ctx.api.post(`/api/interviews/${encodeURIComponent(interview.interviewId)}/tokens`,
        { role: "candidate", name: candidateName(dir, interview.candidateId) });
      const input = el("input", { id: "candidate-link", type: "text", readonly: true, value: link.joinUrl });
      const copy = el("button", { type: "button", text: "Copy again" });
      copy.addEventListener("click", () => copyText(link.joinUrl, input));
      input.addEventListener("focus", () => input.select());
      output.replaceChildren(
        el("div", { class: "field" }, el("label", { for: input.id, text: "Candidate link" }),
          el("div", { class: "inline" }, input, copy)),
        el("p", { class: "hint", text: `Send it to the candidate only. It works until ${dateTimeFormat.format(new Date(link.expiresAt))}.` }));
      output.hidden = false;
      create.textContent = "Copy a new candidate link";
      await copyText(link.joinUrl, input);
    } catch (exc) {
      toast(`No link: ${exc.message}`);
    } finally {
      create.disabled = false;
    }
  });
  section.append(el("p", { class: "muted", text: "The candidate joins with this link; they need no account." }),
    el("div", { class: "actions" }, create), output);
  return section;
}

function cancelSection(ctx, interview) {
  const reason = el("textarea", { id: "cancel-reason", rows: "2", maxlength: "500" });
  const confirm = el("button", { type: "submit", class: "danger", text: "Confirm cancellation" });
  const keep = el("button", { type: "button", text: "Keep the interview" });
  const open = el("button", { type: "button", class: "danger", text: "Cancel interview…", "aria-expanded": "false" });
  const form = el("form", { class: "form", hidden: true },
    el("div", { class: "field" }, el("label", { for: reason.id, text: "Reason for cancelling" }), reason),
    el("div", { class: "actions" }, confirm, keep));
  open.addEventListener("click", () => {
    form.hidden = false;
    open.hidden = true;
    open.setAttribute("aria-expanded", "true");
    reason.focus();
  });
  keep.addEventListener("click", () => {
    form.hidden = true;
    open.hidden = false;
    open.setAttribute("aria-expanded", "false");
    open.focus();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    confirm.disabled = true;
    try {
      await ctx.api.post(`/api/interviews/${encodeURIComponent(interview.interviewId)}/cancel`, { reason: reason.value.trim() });
      toast("Interview cancelled.", { kind: "info" });
      ctx.navigate(window.location.pathname, { replace: true });
    } catch (exc) {
      toast(`Not cancelled: ${exc.message}`);
      confirm.disabled = false;
    }
  });
  return el("section", { class: "panel", "aria-labelledby": "cancel-title" },
    el("h2", { id: "cancel-title", text: "Cancel" }), open, form);
}

const hasBudget = (q) => q.budgetS !== null && q.budgetS !== undefined;

/** A guide question as a list item numbered by its place in the whole guide, with its time budget if it has one. */
function questionItem(q, n) {
  return el("li", { value: String(n) }, q.text,
    hasBudget(q) ? el("span", { class: "question-budget", text: ` · time budget ${budgetText(q.budgetS)}` }) : null);
}

/**
 * The guide's questions by competency (`category`), the sections the live overlay times: named ones in the order
 * they first appear, then those without one under "Other" (the overlay's name for them); a guide with no
 * competencies is one plain list. A section's budget is the sum of its questions' budgets, as the overlay's is.
 */
function questionsByCompetency(questions) {
  if (!questions.length) return el("p", { class: "muted", text: "No questions prepared." });
  const sections = new Map();
  questions.forEach((q, i) => {
    const name = (q.category || "").trim();
    if (!sections.has(name)) sections.set(name, []);
    sections.get(name).push([q, i + 1]);
  });
  if (sections.size === 1 && sections.has("")) {
    return el("ol", { class: "question-list" }, questions.map((q, i) => questionItem(q, i + 1)));
  }
  const ordered = [...sections].sort(([a], [b]) => (a ? 0 : 1) - (b ? 0 : 1)); // stable: "" goes last
  return ordered.map(([name, entries], k) => {
    const budgets = entries.map(([q]) => q).filter(hasBudget).map((q) => Number(q.budgetS));
    const count = `${entries.length} question${entries.length === 1 ? "" : "s"}`;
    const budget = budgets.length ? ` · time budget ${budgetText(budgets.reduce((a, b) => a + b, 0))}` : "";
    const partly = budgets.length && budgets.length < entries.length ? ` (${budgets.length} of them budgeted)` : "";
    const id = `competency-section-${k + 1}`;
    // a div, not a section: a region landmark per competency would crowd the page's landmarks (the h3 navigates)
    return el("div", { class: "question-section", role: "group", "aria-labelledby": id },
      el("h3", { id, text: name || "Other" }),
      el("p", { class: "section-budget", text: `${count}${budget}${partly}` }),
      el("ol", { class: "question-list" }, entries.map(([q, n]) => questionItem(q, n))));
  });
}

async function renderInterview(ctx) {
  const { root, api, me, params } = ctx;
  const [interview, dir] = await Promise.all([
    api.get(`/api/interviews/${encodeURIComponent(params.id)}`),
    directory(api, me),
  ]);
  const name = candidateName(dir, interview.candidateId);
  const at = new Date(interview.scheduledAt);
  const join = joinButton(ctx, interview, "Join interview");
  // el() skips null children, the DOM's append would write them as the text "null"
  root.append(...[
    el("p", {}, el("a", { href: "/app/", text: "← All interviews" })),
    el("div", { class: "view-head" }, pageHeading(`Interview with ${name}`), statusBadge(interview.status)),
    interview.status === "completed" ? el("p", {}, el("a", { class: "button primary",
      href: `/app/interviews/${encodeURIComponent(interview.interviewId)}/report`, text: "Open the report" })) : null,
    join ? el("div", { class: "actions join-bar" }, join,
      el("span", { class: "muted small", text: "Opens the live overlay with your microphone." })) : null,
    el("section", { class: "panel", "aria-labelledby": "details-title" },
      el("h2", { id: "details-title", text: "Details" }),
      el("dl", { class: "details" },
        el("dt", { text: "When" }), el("dd", {}, el("time", { datetime: interview.scheduledAt, text: `${dayFormat.format(at)}, ${timeFormat.format(at)}` })),
        el("dt", { text: "Candidate" }), el("dd", { text: name }),
        el("dt", { text: "Job" }), el("dd", { text: interview.jobId }),
        el("dt", { text: "Type" }), el("dd", { text: `${words(interview.type)} · ${words(interview.format)}` }),
        el("dt", { text: "Interviewers" }),
        el("dd", { text: interview.interviewers.map((id) => id === me.userId ? "you" : userName(dir, id)).join(", ") || "none assigned" }),
        interview.status === "cancelled" ? [el("dt", { text: "Cancelled" }), el("dd", { text: interview.cancelReason || "no reason given" })] : null)),
    el("section", { class: "panel", "aria-labelledby": "questions-title" },
      el("h2", { id: "questions-title", text: "Questions" }), questionsByCompetency(interview.questions || [])),
  ].filter(Boolean));
  if (canSchedule(me)) {
    root.append(candidateLinkSection(ctx, interview, dir));
    if (isOpen(interview)) root.append(cancelSection(ctx, interview));
  }
  return `Interview with ${name}`;
}

export const interviewViews = { dashboard: renderDashboard, schedule: renderSchedule, interview: renderInterview };
