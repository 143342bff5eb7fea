// The dashboard's shell: the token prompt, the navigation, the live-connection banner, and a
// hash router (#/jobs?state=dead): one static page, no server routes, no token in any URL.
import { render } from "../vendor/preact.module.js";
import { useEffect, useState } from "../vendor/hooks.module.js";
import { api, ApiError, clearToken, html, Live, LiveContext, onAuthLost, setToken } from "./core.js";
import { Overview } from "./overview.js";
import { DeadLetters, Jobs } from "./jobs.js";
import { JobPage } from "./job.js";
import { Keys, Schedules, Workers } from "./ops.js";
import { BatchPage, WorkflowPage, Workflows } from "./workflows.js";

const PAGES = [
  ["overview", "Overview"], ["jobs", "Jobs"], ["workflows", "Workflows"], ["dead", "Dead letters"], ["workers", "Workers"],
  ["schedules", "Schedules"], ["keys", "Keys"],
];

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, q = ""] = raw.split("?");
  const [page = "overview", ...rest] = path.split("/");
  return { page: page || "overview", arg: rest.map(decodeURIComponent).join("/"), params: new URLSearchParams(q) };
}

function useRoute() {
  const [route, setRoute] = useState(parseHash());
  useEffect(() => {
    const on = () => setRoute(parseHash());
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return route;
}

function Login({ onDone, refused }) {
  const [token, setValue] = useState("");
  const [error, setError] = useState(refused ? "The token was refused: enter it again." : "");
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setToken(token.trim());
    try {
      await api("types");
      onDone();
    } catch (err) {
      setError(err.message);
      setBusy(false);
    }
  };
  return html`<main class="login" id="main">
    <h1>job-supervisor</h1>
    <form onSubmit=${submit} aria-describedby="login-help">
      <label for="token">API token</label>
      <input id="token" name="token" type="password" autocomplete="current-password" required autofocus
        value=${token} onInput=${(e) => setValue(e.target.value)} />
      <button type="submit" disabled=${busy}>Open the dashboard</button>
      <p id="login-help" class="muted">The token of the admin API (setting <code>api_token</code>). It is kept
        for this browser tab only and sent as a bearer header, never in a URL.</p>
      ${error && html`<p class="error" role="alert">${error}</p>`}
    </form>
  </main>`;
}

function LiveBanner({ live }) {
  const [status, setStatus] = useState(live.status);
  useEffect(() => {
    setStatus(live.status); // it may have changed between the render and this subscription
    return live.onStatus(setStatus);
  }, [live]);
  const text = status.state === "live" ? "Live" : status.state === "lost"
    ? `Connection lost (${status.detail}); reconnecting, then resuming from the last event`
    : "Connecting…";
  return html`<p class=${`live live-${status.state}`} role="status" aria-live="polite"
    data-state=${status.state}><span class="dot" aria-hidden="true"></span>${text}</p>`;
}

function Page({ route }) {
  switch (route.page) {
    case "jobs": return html`<${Jobs} params=${route.params} />`;
    case "dead": return html`<${DeadLetters} params=${route.params} />`;
    case "job": return html`<${JobPage} id=${route.arg} />`;
    case "workflows": return html`<${Workflows} />`;
    case "workflow": return html`<${WorkflowPage} id=${route.arg} />`;
    case "batch": return html`<${BatchPage} id=${route.arg} />`;
    case "workers": return html`<${Workers} />`;
    case "schedules": return html`<${Schedules} />`;
    case "keys": return html`<${Keys} params=${route.params} />`;
    default: return html`<${Overview} />`;
  }
}

function Shell({ live, onLogout }) {
  const route = useRoute();
  const current = route.page === "job" ? "jobs" : route.page === "workflow" || route.page === "batch" ? "workflows"
    : route.page;
  return html`<a class="skip" href="#main" onClick=${(e) => {
    e.preventDefault();
    document.getElementById("main").focus();
  }}>Skip to content</a>
  <header>
    <strong class="brand">job-supervisor</strong>
    <nav aria-label="Pages"><ul>${PAGES.map(([page, label]) => html`<li>
      <a href=${`#/${page}`} aria-current=${current === page ? "page" : undefined}>${label}</a></li>`)}
    </ul></nav>
    <${LiveBanner} live=${live} />
    <button class="link" type="button" onClick=${onLogout}>Forget token</button>
  </header>
  <main id="main" tabindex="-1"><${Page} route=${route} key=${route.page + route.arg} /></main>`;
}

function App() {
  // "checking": try without a token (an API on loopback may have none) or with the tab's one.
  const [auth, setAuth] = useState("checking");
  const [live, setLive] = useState(null);
  useEffect(() => onAuthLost(() => setAuth("refused")), []);
  useEffect(() => {
    if (auth !== "checking") return;
    api("types").then(() => setAuth("ok"), (err) => setAuth(
      err instanceof ApiError && err.status === 401 ? "login" : "ok"));
  }, [auth]);
  useEffect(() => {
    if (auth !== "ok") return undefined;
    const stream = new Live();
    LiveContext.current = stream;
    setLive(stream);
    stream.start();
    return () => {
      stream.stop();
      LiveContext.current = null;
    };
  }, [auth]);
  if (auth === "checking") return html`<p class="boot">Connecting…</p>`;
  if (auth !== "ok") return html`<${Login} refused=${auth === "refused"} onDone=${() => setAuth("ok")} />`;
  if (!live) return null;
  return html`<${Shell} live=${live} onLogout=${() => {
    clearToken();
    setAuth("login");
  }} />`;
}

render(html`<${App} />`, document.getElementById("app"));
