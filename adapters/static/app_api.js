// The web app's side of the HTTP contract: the session (access token in memory only, refreshed through the
// HttpOnly cookie the server sets on /api/auth) and a fetch wrapper for /api.
//
// Contract with the server: errors are `{"error": {"code", "message", "fields"?}}`; `Authorization: Bearer` on
// every /api call; POST /api/auth/refresh sends the cookie and `X-Requested-With: fetch` (a header a cross-site
// form cannot send) and answers the login's shape with a new cookie; the refresh token rotates on every use, so
// two refreshes must never race with the same cookie (they would look like a stolen token and end the session).

const REFRESH_LOCK = "interview-worker-refresh";

export class ApiError extends Error {
  constructor(status, code, message, { fields = null, retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.fields = fields;
    this.retryAfter = retryAfter;
  }
}

const STATUS_TEXT = {
  400: "The request was not understood.",
  401: "You are not signed in.",
  403: "Your role may not do this.",
  404: "Not found (it may have been removed).",
  409: "This conflicts with a change made meanwhile. Reload and try again.",
  413: "That is too large.",
  422: "Some fields are not valid.",
  429: "Too many requests. Wait a little and try again.",
  503: "The service is busy or unavailable. Try again shortly.",
};

async function errorFrom(response) {
  let detail = null;
  try {
    detail = (await response.json())?.error ?? null;
  } catch {
    // not JSON (a proxy's page, say): the status text below is all there is
  }
  const retry = Number(response.headers.get("Retry-After"));
  return new ApiError(
    response.status,
    detail?.code || `http_${response.status}`,
    detail?.message || STATUS_TEXT[response.status] || `The server answered ${response.status}.`,
    { fields: detail?.fields || null, retryAfter: Number.isFinite(retry) && retry > 0 ? retry : null },
  );
}

function networkError() {
  return new ApiError(0, "network", "Cannot reach the server. Check the connection and try again.");
}

function withQuery(path, query) {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

/**
 * One signed-in session. `onToken(expiresInSeconds)` runs after each login or refresh (to schedule the next
 * silent refresh); `onSessionEnd()` runs when a call was refused and refreshing could not save it.
 */
export class Api {
  #token = null;
  #refreshing = null;

  constructor({ onToken = () => {}, onSessionEnd = () => {} } = {}) {
    this.onToken = onToken;
    this.onSessionEnd = onSessionEnd;
  }

  get signedIn() {
    return this.#token !== null;
  }

  async login(email, password) {
    let response;
    try {
      response = await fetch("/api/auth/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-Requested-With": "fetch" },
        body: JSON.stringify({ email, password }),
      });
    } catch {
      throw networkError();
    }
    if (!response.ok) throw await errorFrom(response);
    this.#accept(await response.json());
  }

  /** Trade the refresh cookie for a new access token; false when the session is over. One at a time, per browser. */
  refresh() {
    if (!this.#refreshing) {
      const run = () => this.#refreshOnce();
      // Tabs share the cookie: the lock makes a second tab refresh with the cookie the first one got back.
      const locked = navigator.locks ? navigator.locks.request(REFRESH_LOCK, run) : run();
      this.#refreshing = locked.finally(() => { this.#refreshing = null; });
    }
    return this.#refreshing;
  }

  async #refreshOnce() {
    let response;
    try {
      response = await fetch("/api/auth/refresh", {
        method: "POST", credentials: "same-origin", headers: { "X-Requested-With": "fetch" },
      });
    } catch {
      return false; // offline: the caller treats it as signed out only if its own call is refused
    }
    if (!response.ok) {
      this.#token = null;
      return false;
    }
    this.#accept(await response.json());
    return true;
  }

  async logout() {
    if (this.#refreshing) await this.#refreshing; // revoke the cookie a refresh in flight is about to replace
    const token = this.#token;
    this.#token = null;
    try {
      await fetch("/api/auth/logout", {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-Requested-With": "fetch", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      });
    } catch {
      // the cookie stays until it expires; the token is gone from this page either way
    }
  }

  #accept(body) {
    if (!body || typeof body.accessToken !== "string") throw new ApiError(502, "bad_response", "The server sent no token.");
    this.#token = body.accessToken;
    this.onToken(Number(body.expiresIn) || 0);
  }

  #send(method, path, body) {
    const headers = { Accept: "application/json" };
    if (this.#token) headers.Authorization = `Bearer ${this.#token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, {
      method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  /** JSON in, JSON out; throws ApiError. A refused token is refreshed once and the call repeated once. */
  async request(method, path, { body, query } = {}) {
    const url = withQuery(path, query);
    let response;
    try {
      response = await this.#send(method, url, body);
      if (response.status === 401 && (await this.refresh())) response = await this.#send(method, url, body);
    } catch (exc) {
      throw exc instanceof ApiError ? exc : networkError();
    }
    if (response.status === 401) {
      this.#token = null;
      this.onSessionEnd();
      throw new ApiError(401, "session_ended", "Your session has ended. Please sign in again.");
    }
    if (!response.ok) throw await errorFrom(response);
    if (response.status === 204) return null;
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }

  get(path, query) {
    return this.request("GET", path, { query });
  }

  /** Without `body`, nothing is sent (POST /api/interviews/{id}/join takes none). */
  post(path, body) {
    return this.request("POST", path, { body });
  }

  del(path) {
    return this.request("DELETE", path);
  }
}
