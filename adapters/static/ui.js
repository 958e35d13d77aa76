// Small rendering helpers shared by the pages: the call pages, the interviewer page's panels and the web app.

/** Stream time in seconds as m:ss. */
export function fmtTime(sec) {
  const t = Math.max(0, Math.floor(Number(sec) || 0));
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, "0")}`;
}

/** Show a short-lived message in the page's toast region (an aria-live region). */
export function toast(message, { kind = "error", timeoutMs = 8000 } = {}) {
  const region = document.getElementById("toasts");
  if (!region) return;
  const item = document.createElement("div");
  item.className = `toast toast-${kind}`;
  item.setAttribute("role", kind === "error" ? "alert" : "status");
  const text = document.createElement("span");
  text.textContent = message;
  const close = document.createElement("button");
  close.type = "button";
  close.className = "toast-close";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  close.addEventListener("click", () => item.remove());
  item.append(text, close);
  region.append(item);
  while (region.children.length > 4) region.firstElementChild.remove();
  if (timeoutMs) setTimeout(() => item.remove(), timeoutMs);
}

/**
 * Build an element: `el("button", {type: "button", class: "primary", onclick: fn}, "Save")`.
 * Attributes: `class`, `text`, `on<event>` (listeners), `dataset` (an object), booleans (true: present, false or
 * null: absent), anything else via setAttribute. Children: nodes, strings (as text), null/false (skipped), arrays.
 * Never parses HTML, so nothing from the server can become markup.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "value" || key === "checked" || key === "selected") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

/** A view's page heading: focusable so the router can move focus to it after a navigation. */
export function pageHeading(text) {
  return el("h1", { tabindex: "-1", text });
}

/** A labelled form field around `input` (given the id), with an optional hint it is described by. */
export function field(id, label, input, hint) {
  input.id = id;
  const hintNode = hint ? el("p", { class: "hint", id: `${id}-hint`, text: hint }) : null;
  if (hintNode) input.setAttribute("aria-describedby", hintNode.id);
  return el("div", { class: "field" }, el("label", { for: id, text: label }), input, hintNode);
}

/** Copy `text`; without clipboard access, select it in `input` for the user to copy. */
export async function copyText(text, input, what = "Link") {
  try {
    await navigator.clipboard.writeText(text);
    toast(`${what} copied.`, { kind: "info", timeoutMs: 4000 });
  } catch {
    input.focus();
    input.select();
    toast("Press Ctrl+C (⌘C on a Mac) to copy the selected text.", { kind: "info" });
  }
}
