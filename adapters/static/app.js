// The web app for HR, interviewers and admins: the router, the session and the sign-in page.
//
// One HTML page (`/app` and `/app/*` serve it); the path says which view to show and links change it with
// history.pushState. The access token lives in this page's memory only (never in storage): on load the app asks
// for one with the refresh cookie, refreshes it silently before it expires, and on sign-out drops it and revokes
// the cookie. A view is `render(ctx)`: it fills `ctx.root` and returns its page title.
import { Api } from "/static/app_api.js";
import { adminViews } from "/static/app_admin.js";
import { interviewViews } from "/static/app_interviews.js";
import { reportViews } from "/static/report.js";
import { el, pageHeading, toast } from "/static/ui.js";

const BASE = "/app";
// Refresh this long before the access token expires, and never later than at 80 % of its life.
const REFRESH_MARGIN_S = 60;

const ROUTES = [
  { pattern: /^\/?$/, view: "dashboard" },
  { pattern: /^\/login$/, view: "login", public: true },
  { pattern: /^\/setup$/, view: "setup", public: true },
  { pattern: /^\/schedule$/, view: "schedule", roles: ["hr", "admin"] },
  { pattern: /^\/interviews\/([^/]+)$/, view: "interview", params: ["id"] },
  { pattern: /^\/interviews\/([^/]+)\/report$/, view: "report", params: ["id"] },
  { pattern: /^\/users$/, view: "users", roles: ["admin"] },
  { pattern: /^\/api-keys$/, view: "api-keys", roles: ["admin"] },
  { pattern: /^\/audit$/, view: "audit", roles: ["admin"] },
];

const VIEWS = { login: renderLogin, setup: renderSetup, ...interviewViews, ...reportViews, ...adminViews };
const NAV_OF = { interview: "dashboard", report: "dashboard" };

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const logoutButton = document.getElementById("logout");

let me = null;
let refreshTimer = null;
let renderSeq = 0;

const api = new Api({
  onToken: scheduleRefresh,
  onSessionEnd: () => {
    if (!me) return;
    signedOut();
    toast("Your session has ended. Please sign in again.");
    navigate(`${BASE}/login?next=${encodeURIComponent(currentPath())}`, { replace: true });
  },
});

function scheduleRefresh(expiresIn) {
  clearTimeout(refreshTimer);
  if (!(expiresIn > 0)) return;
  const inSeconds = Math.max(1, Math.min(expiresIn - REFRESH_MARGIN_S, expiresIn * 0.8));
  refreshTimer = setTimeout(async () => {
    if (!(await api.refresh()) && me) api.onSessionEnd();
  }, inSeconds * 1000);
}

function signedOut() {
  me = null;
  clearTimeout(refreshTimer);
  updateChrome();
}

function currentPath() {
  return window.location.pathname + window.location.search;
}

export function navigate(path, { replace = false } = {}) {
  if (path !== currentPath()) history[replace ? "replaceState" : "pushState"](null, "", path);
  render({ focus: true });
}

// A malformed escape ("%zz") in a typed address is taken as written rather than breaking the page.
function safeDecode(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function match(pathname) {
  const rest = pathname.startsWith(BASE) ? pathname.slice(BASE.length) : pathname;
  for (const route of ROUTES) {
    const m = route.pattern.exec(rest);
    if (m) {
      const params = Object.fromEntries((route.params || []).map((name, i) => [name, safeDecode(m[i + 1])]));
      return { ...route, params };
    }
  }
  return null;
}

function updateChrome(active = "") {
  nav.hidden = !me;
  logoutButton.hidden = !me;
  who.textContent = me ? `${me.name || me.email} · ${me.role}` : "";
  for (const item of nav.querySelectorAll("[data-roles]")) {
    item.hidden = !me || !item.dataset.roles.split(" ").includes(me.role);
  }
  for (const link of nav.querySelectorAll("a[data-nav]")) {
    if (link.dataset.nav === active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function render({ focus = false } = {}) {
  const seq = ++renderSeq;
  const route = match(window.location.pathname);
  const query = new URLSearchParams(window.location.search);
  if (route && !route.public && !me) {
    navigate(`${BASE}/login?next=${encodeURIComponent(currentPath())}`, { replace: true });
    return;
  }
  if (route?.view === "login" && me) {
    navigate(safeNext(query.get("next")), { replace: true });
    return;
  }
  updateChrome(route ? NAV_OF[route.view] || route.view : "");
  const root = el("div", { class: "view" });
  view.replaceChildren(root);
  view.setAttribute("aria-busy", "true");
  const ctx = { api, me, root, params: route?.params || {}, query, navigate, isCurrent: () => seq === renderSeq };
  let title;
  try {
    if (!route) title = renderMessage(root, "Page not found", "There is no page at this address.");
    else if (route.roles && !route.roles.includes(me.role)) {
      title = renderMessage(root, "Not available", `This page is not available to the ${me.role} role.`);
    } else title = await VIEWS[route.view](ctx);
  } catch (exc) {
    if (seq !== renderSeq) return;
    if (exc?.code === "session_ended") return; // onSessionEnd already moved to the sign-in page
    title = renderMessage(root, "Something went wrong", exc?.message || String(exc));
  } finally {
    if (seq === renderSeq) view.removeAttribute("aria-busy");
  }
  if (seq !== renderSeq) return;
  document.title = `${title || "Interviews"} · interview-worker`;
  // Moving focus to the new heading tells screen readers the page changed; on first load the browser's own
  // focus handling is left alone.
  if (focus) (root.querySelector("h1") || view).focus({ preventScroll: false });
}

function renderMessage(root, title, text) {
  root.append(pageHeading(title), el("p", { class: "panel", text }),
    el("p", {}, el("a", { href: `${BASE}/`, text: "Back to interviews" })));
  return title;
}

function safeNext(next) {
  // Only a path inside the app: never an absolute URL someone put in a link.
  return next && next.startsWith(`${BASE}/`) && !next.startsWith(`${BASE}/login`) && !next.startsWith("//")
    ? next : `${BASE}/`;
}

async function renderLogin(ctx) {
  const error = el("p", { id: "login-error", class: "form-error", role: "alert" });
  const email = el("input", { id: "login-email", type: "email", name: "email", autocomplete: "username", required: true });
  const password = el("input", {
    id: "login-password", type: "password", name: "password", autocomplete: "current-password", required: true,
  });
  const submit = el("button", { type: "submit", class: "primary", text: "Sign in" });
  const form = el("form", { class: "panel form login-form", "aria-describedby": "login-error", novalidate: true },
    el("div", { class: "field" }, el("label", { for: "login-email", text: "Email" }), email),
    el("div", { class: "field" }, el("label", { for: "login-password", text: "Password" }), password),
    error,
    el("div", { class: "actions" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    if (!email.value.trim() || !password.value) {
      error.textContent = "Enter your email and password.";
      (email.value.trim() ? password : email).focus();
      return;
    }
    submit.disabled = true;
    try {
      await ctx.api.login(email.value.trim(), password.value);
      me = await ctx.api.get("/api/me");
      navigate(safeNext(ctx.query.get("next")), { replace: true });
    } catch (exc) {
      password.value = "";
      if (exc.status === 401) error.textContent = "Wrong email or password.";
      else if (exc.status === 429) {
        const wait = exc.retryAfter ? ` Try again in ${waitText(exc.retryAfter)}.` : " Try again later.";
        error.textContent = `Too many sign-in attempts.${wait}`;
      } else error.textContent = exc.message;
      password.focus();
    } finally {
      submit.disabled = false;
    }
  });
  ctx.root.append(el("div", { class: "login" }, pageHeading("Sign in"),
    el("p", { class: "muted", text: "Interviews for HR, interviewers and admins. Candidates join with the link they were sent." }),
    form));
  if (!ctx.query.get("next")) email.focus();
  return "Sign in";
}

// The one-time setup link the server prints on its first start: the first admin sets their email and password,
// then is signed in. A used or expired link (410) or an unknown one (404) says so and points to the sign-in page.
async function renderSetup(ctx) {
  const token = ctx.query.get("token") || "";
  const error = el("div", { id: "setup-error", class: "form-error", role: "alert" });
  const name = el("input", { id: "setup-name", type: "text", autocomplete: "name", maxlength: "200" });
  const email = el("input", { id: "setup-email", type: "email", autocomplete: "username", required: true });
  const password = el("input", { id: "setup-password", type: "password", autocomplete: "new-password", required: true,
    minlength: "10", "aria-describedby": "setup-password-hint" });
  const submit = el("button", { type: "submit", class: "primary", text: "Create admin account" });
  const form = el("form", { class: "panel form login-form", "aria-describedby": "setup-error", novalidate: true },
    el("div", { class: "field" }, el("label", { for: "setup-name", text: "Your name" }), name),
    el("div", { class: "field" }, el("label", { for: "setup-email", text: "Email" }), email),
    el("div", { class: "field" }, el("label", { for: "setup-password", text: "Password" }), password,
      el("p", { id: "setup-password-hint", class: "hint", text: "At least 10 characters." })),
    error,
    el("div", { class: "actions" }, submit));
  const gone = (text) => {
    form.replaceChildren(el("p", { role: "alert", text }),
      el("p", {}, el("a", { href: `${BASE}/login`, text: "Go to sign in" })));
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    if (!email.value.trim() || password.value.length < 10) {
      error.textContent = !email.value.trim() ? "Enter your email." : "The password needs at least 10 characters.";
      (email.value.trim() ? password : email).focus();
      return;
    }
    submit.disabled = true;
    try {
      await ctx.api.post("/api/auth/setup", {
        token, email: email.value.trim(), password: password.value, ...(name.value.trim() ? { name: name.value.trim() } : {}),
      });
      await ctx.api.login(email.value.trim(), password.value);
      me = await ctx.api.get("/api/me");
      toast("Your admin account is ready.", { kind: "info" });
      navigate(`${BASE}/users`, { replace: true });
    } catch (exc) {
      submit.disabled = false;
      if (exc.status === 404 || exc.status === 410) gone(`${exc.message.replace(/^./, (c) => c.toUpperCase())}.`);
      else error.textContent = exc.message;
    }
  });
  ctx.root.append(el("div", { class: "login" }, pageHeading("Create the first admin"),
    el("p", { class: "muted", text: "This link works once. The account you create here manages users and API keys." }),
    form));
  if (!token) gone("This page needs the setup link the server printed when it first started.");
  return "Create the first admin";
}

function waitText(seconds) {
  return seconds < 90 ? `${Math.ceil(seconds)} seconds` : `${Math.ceil(seconds / 60)} minutes`;
}

document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest?.("a[href]");
  if (!link || link.target || link.hasAttribute("download") || link.getAttribute("href").startsWith("#")) return;
  const url = new URL(link.href, window.location.href);
  if (url.origin !== window.location.origin || !(url.pathname === BASE || url.pathname.startsWith(`${BASE}/`))) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener("popstate", () => render({ focus: true }));

logoutButton.addEventListener("click", async () => {
  logoutButton.disabled = true;
  clearTimeout(refreshTimer);
  await api.logout();
  signedOut();
  logoutButton.disabled = false;
  toast("You are signed out.", { kind: "info" });
  navigate(`${BASE}/login`, { replace: true });
});

async function start() {
  try {
    if (await api.refresh()) me = await api.get("/api/me");
  } catch (exc) {
    me = null;
    if (exc?.code !== "session_ended") toast(exc.message || String(exc));
  }
  await render();
}

start();
