// The web app's admin views: users, API keys (a new key is shown once) and the audit log (filters, pages).
import { copyText, el, field, pageHeading, toast } from "/static/ui.js";

const ROLES = [["interviewer", "Interviewer"], ["hr", "HR"], ["admin", "Admin"]];
const MIN_PASSWORD = 12;
const AUDIT_PAGE_SIZES = ["25", "50", "100"];

const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const when = (iso) => (iso ? el("time", { datetime: iso, text: dateTimeFormat.format(new Date(iso)) }) : "—");

function table(caption, headers, rows, empty) {
  return el("div", { class: "table-wrap" }, el("table", {},
    el("caption", { text: caption }),
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: String(headers.length), class: "muted", text: empty })))));
}

/** A destructive button that asks once more in place (no modal): first click arms it, the second acts. */
function confirmButton(text, confirmText, label, action) {
  const button = el("button", { type: "button", class: "small danger", text, "aria-label": label });
  let armed = false;
  button.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      button.textContent = confirmText;
      button.setAttribute("aria-label", `${confirmText}: ${label}`);
      return;
    }
    button.disabled = true;
    try {
      await action();
    } catch (exc) {
      toast(exc.message);
      button.disabled = false;
    }
  });
  button.addEventListener("blur", () => {
    if (!armed || button.disabled) return;
    armed = false;
    button.textContent = text;
    button.setAttribute("aria-label", label);
  });
  return button;
}

// ---- users --------------------------------------------------------------------------------------------------

async function renderUsers(ctx) {
  const { root, api, me } = ctx;
  root.append(pageHeading("Users"));
  const listBox = el("div");

  const reload = async () => {
    const { items } = await api.get("/api/users");
    if (!ctx.isCurrent()) return;
    const rows = items.map((u) => el("tr", { dataset: { userId: u.userId } },
      el("th", { scope: "row", text: u.name || "—" }),
      el("td", { text: u.email }),
      el("td", { text: ROLES.find(([r]) => r === u.role)?.[1] || u.role }),
      el("td", {}, when(u.createdAt)),
      el("td", { text: u.disabled ? "Disabled" : "Active" }),
      el("td", {}, u.userId === me.userId ? el("span", { class: "muted small", text: "you" })
        : confirmButton("Remove", "Confirm removal", `Remove ${u.name || u.email}`, async () => {
          await api.del(`/api/users/${encodeURIComponent(u.userId)}`);
          toast(`${u.name || u.email} removed.`, { kind: "info" });
          await reload();
        }))));
    listBox.replaceChildren(table(`Users (${items.length})`,
      ["Name", "Email", "Role", "Created", "Status", "Actions"], rows, "No users yet."));
  };

  const name = el("input", { type: "text", autocomplete: "off", required: true, maxlength: "200" });
  const email = el("input", { type: "email", autocomplete: "off", required: true, maxlength: "254" });
  const role = el("select", {}, ROLES.map(([value, text]) => el("option", { value, text })));
  const password = el("input", { type: "password", autocomplete: "new-password", required: true, minlength: String(MIN_PASSWORD) });
  const error = el("p", { class: "form-error", role: "alert", id: "user-error" });
  const submit = el("button", { type: "submit", class: "primary", text: "Add user" });
  const form = el("form", { class: "form panel", novalidate: true, "aria-labelledby": "add-user-title", "aria-describedby": "user-error" },
    el("h2", { id: "add-user-title", text: "Add a user" }),
    el("div", { class: "grid-2" },
      field("user-name", "Name", name),
      field("user-email", "Email", email),
      field("user-role", "Role", role),
      field("user-password", "Initial password", password, `At least ${MIN_PASSWORD} characters; hand it over privately.`)),
    error, el("div", { class: "actions" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const missing = [[name, "a name"], [email, "an email address"]].filter(([input]) => !input.value.trim());
    if (missing.length || password.value.length < MIN_PASSWORD) {
      error.textContent = missing.length ? `Enter ${missing.map(([, what]) => what).join(" and ")}.`
        : `The password needs at least ${MIN_PASSWORD} characters.`;
      (missing[0]?.[0] || password).focus();
      return;
    }
    submit.disabled = true;
    try {
      await api.post("/api/users", { email: email.value.trim(), role: role.value, name: name.value.trim(), password: password.value });
      toast(`${name.value.trim()} added as ${role.selectedOptions[0].textContent}.`, { kind: "info" });
      form.reset();
      await reload();
      name.focus();
    } catch (exc) {
      error.textContent = `Not added: ${exc.message}`;
    } finally {
      submit.disabled = false;
    }
  });

  await reload();
  root.append(listBox, form);
  return "Users";
}

// ---- API keys -----------------------------------------------------------------------------------------------

async function renderApiKeys(ctx) {
  const { root, api } = ctx;
  root.append(pageHeading("API keys"),
    el("p", { class: "muted", text: "Keys let scripts and integrations call the API. Each is shown once, when it is created; only its hash is stored." }));
  const listBox = el("div");
  const created = el("section", { class: "panel key-once", hidden: true, "aria-labelledby": "new-key-title" });

  const reload = async () => {
    const { items } = await api.get("/api/api-keys");
    if (!ctx.isCurrent()) return;
    const rows = items.map((k) => el("tr", { dataset: { keyId: k.keyId } },
      el("th", { scope: "row", text: k.name }),
      el("td", { text: (k.scopes || []).join(", ") || "—" }),
      el("td", {}, when(k.createdAt)),
      el("td", {}, k.lastUsedAt ? when(k.lastUsedAt) : "never"),
      el("td", { text: k.revoked ? "Revoked" : "Active" }),
      el("td", {}, k.revoked ? null : confirmButton("Revoke", "Confirm revoke", `Revoke ${k.name}`, async () => {
        await api.del(`/api/api-keys/${encodeURIComponent(k.keyId)}`);
        toast(`${k.name} revoked.`, { kind: "info" });
        await reload();
      }))));
    listBox.replaceChildren(table(`API keys (${items.length})`,
      ["Name", "Scopes", "Created", "Last used", "Status", "Actions"], rows, "No API keys yet."));
  };

  const name = el("input", { type: "text", autocomplete: "off", required: true, maxlength: "100" });
  const scopes = el("input", { type: "text", autocomplete: "off", required: true });
  const error = el("p", { class: "form-error", role: "alert", id: "key-error" });
  const submit = el("button", { type: "submit", class: "primary", text: "Create key" });
  const form = el("form", { class: "form panel", novalidate: true, "aria-labelledby": "new-key-form-title", "aria-describedby": "key-error" },
    el("h2", { id: "new-key-form-title", text: "Create an API key" }),
    el("div", { class: "grid-2" },
      field("key-name", "Key name", name, "What it is for, e.g. “ATS integration”."),
      field("key-scopes", "Scopes", scopes, "Separate several with spaces or commas.")),
    error, el("div", { class: "actions" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const list = scopes.value.split(/[\s,]+/).filter(Boolean);
    if (!name.value.trim() || !list.length) {
      error.textContent = name.value.trim() ? "Enter at least one scope." : "Enter a name for the key.";
      (name.value.trim() ? scopes : name).focus();
      return;
    }
    submit.disabled = true;
    try {
      const { key } = await api.post("/api/api-keys", { name: name.value.trim(), scopes: list });
      showOnce(created, name.value.trim(), key);
      form.reset();
      await reload();
    } catch (exc) {
      error.textContent = `Not created: ${exc.message}`;
    } finally {
      submit.disabled = false;
    }
  });

  await reload();
  root.append(created, listBox, form);
  return "API keys";
}

function showOnce(section, name, key) {
  const input = el("input", { id: "new-key", type: "text", readonly: true, value: key, spellcheck: "false" });
  const copyButton = el("button", { type: "button", class: "primary", text: "Copy key" });
  copyButton.addEventListener("click", () => copyText(key, input, "Key"));
  input.addEventListener("focus", () => input.select());
  const done = el("button", { type: "button", text: "I have stored it" });
  done.addEventListener("click", () => {
    section.replaceChildren();
    section.hidden = true;
    document.getElementById("key-name")?.focus();
  });
  section.replaceChildren(
    el("h2", { id: "new-key-title", text: `New API key: ${name}` }),
    el("p", { class: "warning", role: "alert", text: "Copy this key now: it is shown only once and cannot be recovered. Store it like a password." }),
    el("div", { class: "field" }, el("label", { for: input.id, text: "New API key" }), el("div", { class: "inline" }, input, copyButton)),
    el("div", { class: "actions" }, done));
  section.hidden = false;
  copyButton.focus();
}

// ---- audit log ----------------------------------------------------------------------------------------------

/** A datetime-local value (the browser's time zone) as ISO 8601 with a zone, or "" when empty. */
function localIso(value) {
  return value ? new Date(value).toISOString() : "";
}

async function renderAudit(ctx) {
  const { root, api, query } = ctx;
  root.append(pageHeading("Audit log"),
    el("p", { class: "muted", text: "Every sign-in, read of personal data, change, join and refusal, newest first. Append-only." }));
  const actor = el("input", { type: "text", autocomplete: "off", value: query.get("actor") || "" });
  const resource = el("input", { type: "text", autocomplete: "off", value: query.get("resource") || "" });
  const from = el("input", { type: "datetime-local", value: query.get("from") || "" });
  const to = el("input", { type: "datetime-local", value: query.get("to") || "" });
  const size = el("select", {}, AUDIT_PAGE_SIZES.map((n) => el("option", { value: n, text: n, selected: n === (query.get("limit") || "50") })));
  const filters = el("form", { class: "filters panel", "aria-label": "Filter the audit log" },
    field("audit-actor", "Actor id", actor),
    field("audit-resource", "Resource id", resource),
    field("audit-from", "From", from),
    field("audit-to", "To", to),
    field("audit-limit", "Per page", size),
    el("div", { class: "actions" }, el("button", { type: "submit", text: "Apply filters" }),
      el("a", { href: "/app/audit", class: "button", text: "Clear" })));
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const [key, input] of [["actor", actor], ["resource", resource], ["from", from], ["to", to]]) {
      if (input.value.trim()) params.set(key, input.value.trim());
    }
    if (size.value !== "50") params.set("limit", size.value);
    ctx.navigate(`/app/audit${params.toString() ? `?${params}` : ""}`);
  });

  const listBox = el("div");
  const pageInfo = el("span", { class: "muted small", role: "status" });
  const prev = el("button", { type: "button", text: "Previous page" });
  const next = el("button", { type: "button", text: "Next page" });
  const pager = el("nav", { class: "pager", "aria-label": "Audit log pages" }, prev, pageInfo, next);
  root.append(filters, listBox, pager);

  const filter = {
    actor: query.get("actor") || "", resource: query.get("resource") || "",
    from: localIso(query.get("from")), to: localIso(query.get("to")), limit: query.get("limit") || "50",
  };
  const cursors = [null]; // cursors[i]: the cursor of page i+1
  let page = 0;

  const load = async () => {
    prev.disabled = next.disabled = true;
    const body = await api.get("/api/audit", { ...filter, cursor: cursors[page] });
    if (!ctx.isCurrent()) return;
    cursors[page + 1] = body.nextCursor;
    const rows = body.items.map((e) => el("tr", { dataset: { seq: String(e.seq) } },
      el("td", {}, when(e.at)),
      el("th", { scope: "row", text: `${e.actorType}${e.actorId ? ` ${e.actorId}` : ""}` }),
      el("td", { text: e.role || "—" }),
      el("td", { text: e.action }),
      el("td", { text: [e.resourceType, e.resourceId].filter(Boolean).join(" ") || "—" }),
      el("td", {}, el("span", { class: `outcome outcome-${e.outcome}`, text: e.outcome })),
      el("td", { text: e.address || "—", title: e.userAgent || null })));
    listBox.replaceChildren(table(`Audit log, page ${page + 1}`,
      ["Time", "Actor", "Role", "Action", "Resource", "Outcome", "Address"], rows, "No entries match."));
    pageInfo.textContent = `Page ${page + 1} · ${body.items.length} entr${body.items.length === 1 ? "y" : "ies"}`;
    prev.disabled = page === 0;
    next.disabled = !body.nextCursor;
  };
  const go = (delta) => {
    page += delta;
    load().catch((exc) => {
      page -= delta;
      toast(exc.message);
    });
  };
  prev.addEventListener("click", () => go(-1));
  next.addEventListener("click", () => go(1));
  await load();
  return "Audit log";
}

export const adminViews = { users: renderUsers, "api-keys": renderApiKeys, audit: renderAudit };
