// What every page shares: rendering (Preact + htm), the token, API calls, the live event
// stream, and formatting. Text reaches the page only through Preact, which escapes it: a
// payload or an error holding HTML or script is shown as text, never parsed.
import { h } from "../vendor/preact.module.js";
import { useEffect, useRef, useState } from "../vendor/hooks.module.js";
import htm from "../vendor/htm.module.js";

export const html = htm.bind(h);

// --- token: asked once, kept for this browser tab only (sessionStorage), sent as a header ---

const TOKEN_KEY = "job-supervisor.token";
const authListeners = new Set();

export const getToken = () => sessionStorage.getItem(TOKEN_KEY) || "";
export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}
export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  authListeners.forEach((fn) => fn());
}
export function onAuthLost(fn) {
  authListeners.add(fn);
  return () => authListeners.delete(fn);
}

// --- API calls: relative to the page (/ui/ -> /), so a reverse proxy's prefix is kept ---

export class ApiError extends Error {
  constructor(status, code, message, detail) {
    super(message);
    this.status = status;
    this.code = code;
    this.detail = detail || {};
  }
}

export const apiUrl = (path) => new URL(path.replace(/^\//, ""), new URL("..", location.href)).toString();

function headers(extra) {
  const out = { Accept: "application/json", ...extra };
  const token = getToken();
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, cache: "no-store", credentials: "omit", headers: headers() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let res;
  try {
    res = await fetch(apiUrl(path), init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "unreachable", `The admin API is unreachable (${err.message}).`);
  }
  if (res.status === 401) {
    clearToken();
    throw new ApiError(401, "unauthorized", "The token was refused: enter it again.");
  }
  const doc = await res.json().catch(() => null);
  if (!res.ok) {
    const e = (doc && doc.error) || {};
    throw new ApiError(res.status, e.code || "error", e.message || `${res.status} ${res.statusText}`, e);
  }
  return doc;
}

export const query = (params) => {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
};

// --- live events: /events read with fetch (EventSource cannot send the token header) ---

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Live {
  constructor() {
    this.listeners = new Set();
    this.statusListeners = new Set();
    this.status = { state: "connecting", detail: "" };
    this.lastId = null; // resume token: every event after it is replayed on reconnect
    this.retryMs = 2000;
    this.stopped = false;
    this.controller = null;
  }

  start() {
    this.loop();
    return this;
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  onStatus(fn) {
    this.statusListeners.add(fn);
    return () => this.statusListeners.delete(fn);
  }

  setStatus(state, detail = "") {
    this.status = { state, detail, since: Date.now() };
    this.statusListeners.forEach((fn) => fn(this.status));
  }

  async loop() {
    while (!this.stopped) {
      this.controller = new AbortController();
      try {
        const extra = { Accept: "text/event-stream" };
        if (this.lastId) extra["Last-Event-ID"] = this.lastId;
        const res = await fetch(apiUrl("events"), {
          headers: headers(extra), signal: this.controller.signal, cache: "no-store", credentials: "omit",
        });
        if (res.status === 401) {
          clearToken();
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        this.setStatus("live");
        await this.read(res.body);
        throw new Error("the stream ended");
      } catch (err) {
        if (this.stopped) return;
        this.setStatus("lost", err.message || String(err));
        await sleep(this.retryMs);
      }
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        this.dispatch(buf.slice(0, cut));
        buf = buf.slice(cut + 2);
      }
    }
  }

  dispatch(block) {
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") id = value;
      else if (field === "data") data.push(value);
      else if (field === "retry" && Number(value) > 0) this.retryMs = Number(value);
    }
    if (id !== null) this.lastId = id;
    if (!data.length) return;
    let doc;
    try {
      doc = JSON.parse(data.join("\n"));
    } catch {
      return;
    }
    this.listeners.forEach((fn) => fn(doc));
  }
}

export const LiveContext = { current: null }; // the one stream of this tab, set by main.js

/** Call `fn(event)` for each live event while the component is mounted. */
export function useLive(fn, deps = []) {
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => {
    const live = LiveContext.current;
    if (!live) return undefined;
    const offEvent = live.on((e) => ref.current(e));
    // After a reconnect the missed events are replayed; a refresh also covers a trimmed stream.
    const offStatus = live.onStatus((s) => s.state === "live" && ref.current({ event: "reconnected" }));
    return () => {
      offEvent();
      offStatus();
    };
  }, deps);
}

/** Load data with `load()`; reload on `reload()` (coalesced: at most once per `ms`). */
export function useData(load, deps = [], ms = 700) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const timer = useRef(null);
  const seq = useRef(0);
  const run = async () => {
    const mine = ++seq.current;
    try {
      const data = await load();
      if (mine === seq.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (mine === seq.current) setState((s) => ({ data: s.data, error, loading: false }));
    }
  };
  useEffect(() => {
    setState({ data: null, error: null, loading: true });
    run();
    return () => {
      seq.current++;
      clearTimeout(timer.current);
      timer.current = null;
    };
  }, deps);
  const reload = () => {
    if (timer.current) return;
    timer.current = setTimeout(() => {
      timer.current = null;
      run();
    }, ms);
  };
  return { ...state, reload, now: run };
}

// --- formatting ---

export function ago(iso) {
  if (!iso) return "—";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (Number.isNaN(s)) return String(iso);
  const abs = Math.abs(s);
  const text = abs < 60 ? `${Math.round(abs)}s` : abs < 3600 ? `${Math.round(abs / 60)}m`
    : abs < 86400 ? `${(abs / 3600).toFixed(1)}h` : `${(abs / 86400).toFixed(1)}d`;
  return s >= 0 ? `${text} ago` : `in ${text}`;
}

export const Time = ({ iso }) => html`<time datetime=${iso || ""} title=${iso || ""}>${ago(iso)}</time>`;

export function seconds(s) {
  if (s === null || s === undefined) return "—";
  return s < 1 ? `${Math.round(s * 1000)} ms` : s < 120 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export const pretty = (value) => (value === undefined ? "" : JSON.stringify(value, null, 2));

export const ErrorBox = ({ error }) => error
  ? html`<p class="error" role="alert">${error.message || String(error)}</p>` : null;

export const StateBadge = ({ state }) => html`<span class=${`badge s-${state}`}>${state}</span>`;

export const jobLink = (id) => `#/job/${encodeURIComponent(id)}`;

// The states of supervisor/engine/states.py, in the order of a job's life.
export const STATES = ["waiting", "pending", "active", "retry", "completed", "failed", "dead", "cancelled", "expired",
  "dismissed"];
