// Small rendering helpers shared by both pages and the interviewer page's panels.

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
