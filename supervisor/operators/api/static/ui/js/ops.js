// Workers (instances, their processes, in-flight jobs), schedules (next and last fires, pause
// of the scheduled type) and keys (who holds and who waits for a keyed-concurrency key).
import { useEffect, useState } from "../vendor/hooks.module.js";
import { api, bytes, ErrorBox, html, jobLink, query, seconds, Time, useData, useLive } from "./core.js";

function usePolling(data, ms) {
  useEffect(() => {
    const every = setInterval(() => data.now(), ms);
    return () => clearInterval(every);
  }, []);
}

function Instance({ w }) {
  const procs = w.workers || [];
  const inFlight = w.in_flight || [];
  const seen = w.seen ? new Date(w.seen * 1000).toISOString() : null;
  return html`<article class="card" data-instance=${w.instance}>
    <h2><code>${w.instance}</code> <span class=${`badge w-${w.status}`}>${w.status}</span></h2>
    <p class="muted">${w.host || "?"}, pid ${w.pid || "?"}${w.version ? `, version ${w.version}` : ""};
      heartbeat <${Time} iso=${seen} /></p>
    ${w.error && html`<p class="error">${w.error}</p>`}
    ${w.types && html`<p>Serves: ${w.types.map((t) => html`<a href=${`#/jobs?type=${encodeURIComponent(t)}`}>${t}</a> `)}</p>`}
    <h3>Processes</h3>
    ${procs.length ? html`<div class="scroll"><table><thead><tr><th scope="col">pid</th><th scope="col" class="num">RSS</th>
      <th scope="col" class="num">CPU</th><th scope="col">Role</th></tr></thead><tbody>${procs.map((p) => html`<tr>
      <td>${p.pid}</td><td class="num">${bytes(p.rss)}</td>
      <td class="num">${p.cpu_percent === null || p.cpu_percent === undefined ? "—" : `${p.cpu_percent}%`}</td>
      <td>${p.role || p.kind || (p.pid === w.pid ? "daemon" : "worker")}</td></tr>`)}</tbody></table></div>`
      : html`<p class="muted">No process reported.</p>`}
    <h3>In flight (${inFlight.length})</h3>
    ${inFlight.length ? html`<ul class="plain">${inFlight.map((f) => html`<li><a href=${jobLink(f.id)}><code>${f.id}</code></a>
      ${" "}${f.name}, attempt ${f.attempt}, running ${seconds(f.age_s)}</li>`)}</ul>` : html`<p class="muted">Idle.</p>`}
  </article>`;
}

export function Workers() {
  const data = useData(() => api("workers"), [], 1000);
  usePolling(data, 5000); // presence is a heartbeat key, not an event: read it again every 5 s
  return html`<h1>Workers</h1><${ErrorBox} error=${data.error} />
    ${data.data && (data.data.length ? html`<div class="cards">${data.data.map((w) => html`<${Instance}
      key=${w.instance} w=${w} />`)}</div>` : html`<p class="muted">No instance seen in the last hour.</p>`)}`;
}

function PauseType({ name, paused, onDone }) {
  const [problem, setProblem] = useState(null);
  const act = async () => {
    try {
      await api(`types/${encodeURIComponent(name)}/${paused ? "resume" : "pause"}`, { method: "POST" });
      onDone();
    } catch (err) {
      setProblem(err);
    }
  };
  return html`<button type="button" class=${paused ? "" : "secondary"} onClick=${act}
    aria-label=${`${paused ? "Resume" : "Pause"} type ${name}`}>${paused ? "Resume type" : "Pause type"}</button>
    <${ErrorBox} error=${problem} />`;
}

export function Schedules() {
  const data = useData(async () => {
    const [rows, types] = await Promise.all([api("schedules?count=3"), api("types")]);
    return { rows, paused: Object.fromEntries(types.map((t) => [t.name, !!t.paused])) };
  }, [], 1000);
  useLive((e) => e.event === "enqueued" || e.event === "paused" || e.event === "resumed" ? data.reload() : null);
  usePolling(data, 15000);
  const d = data.data;
  return html`<h1>Schedules</h1><${ErrorBox} error=${data.error} />
    <p class="muted">Pausing a scheduled type keeps its ticks queued but runs none until it is resumed.</p>
    ${d && (d.rows.length ? html`<div class="scroll"><table><thead><tr><th scope="col">Schedule</th><th scope="col">Type</th>
      <th scope="col">Cron</th><th scope="col">Status</th><th scope="col">Last fired</th><th scope="col">Next fires</th>
      <th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
      <tbody>${d.rows.map((s) => html`<tr key=${s.id}><td><code>${s.id}</code></td>
        <td><a href=${`#/jobs?type=${encodeURIComponent(s.job)}`}>${s.job}</a></td>
        <td><code>${s.cron}</code> ${s.timezone && html`<span class="muted">${s.timezone}</span>`}</td>
        <td>${d.paused[s.job] ? html`<span class="badge t-paused">paused</span>` : s.status}
          ${s.error && html`<div class="error">${s.error}</div>`}</td>
        <td><${Time} iso=${s.last_fired} /></td>
        <td>${(s.next || []).map((n) => html`<div><${Time} iso=${n} /></div>`)}</td>
        <td><${PauseType} name=${s.job} paused=${d.paused[s.job]} onDone=${data.now} /></td></tr>`)}</tbody>
      </table></div>` : html`<p class="muted">No schedule is published.</p>`)}`;
}

function KeyStatus({ type, k }) {
  const data = useData(async () => {
    const path = `keys/${encodeURIComponent(type)}/${encodeURIComponent(k)}`;
    const [status, waiters] = await Promise.all([api(path), api(`${path}/waiters?limit=100`)]);
    return { status, waiters };
  }, [type, k]);
  useLive((e) => (e.type === type ? data.reload() : null), [type, k]);
  if (!data.data) return html`<${ErrorBox} error=${data.error} />`;
  const { status, waiters } = data.data;
  return html`<${ErrorBox} error=${data.error} />
    <section aria-labelledby="holders-h"><h2 id="holders-h">Holders (${status.active.length})</h2>
    ${status.active.length ? html`<ul class="plain">${status.active.map((a) => html`<li><a href=${jobLink(a.id)}>
      <code>${a.id}</code></a> on <code>${a.instance || "?"}</code>, attempt ${a.attempt}, running ${seconds(a.running_s)},
      lease expires in ${seconds(a.lease_expires_in_s)}</li>`)}</ul>` : html`<p class="muted">Nobody holds it.</p>`}</section>
    <section aria-labelledby="waiters-h"><h2 id="waiters-h">Waiting (${status.queued})</h2>
    ${waiters.length ? html`<ol class="plain">${waiters.map((id) => html`<li><a href=${jobLink(id)}><code>${id}</code></a></li>`)}
      </ol>` : html`<p class="muted">Nobody waits.</p>`}
    <p class="muted">Last decision: ${status.last_decision || "—"}${status.last_reason ? ` (${status.last_reason})` : ""};
      stale takeovers: ${status.stale_takeovers}.</p></section>`;
}

export function Keys({ params }) {
  const types = useData(() => api("types"), []);
  const type = params.get("type") || "";
  const k = params.get("key") || "";
  const submit = (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    location.hash = `#/keys${query({ type: form.get("type"), key: form.get("key") })}`;
  };
  return html`<h1>Keys</h1>
    <form class="filters" onSubmit=${submit} aria-label="Look up a concurrency key">
      <label>Type <select name="type" required>
        <option value="">choose a type</option>
        ${(types.data || []).map((t) => html`<option value=${t.name} selected=${t.name === type}>${t.name}</option>`)}
      </select></label>
      <label>Key <input name="key" defaultValue=${k} required placeholder="concurrency key" /></label>
      <button type="submit">Show</button>
    </form>
    ${type && k ? html`<${KeyStatus} key=${type + "\n" + k} type=${type} k=${k} />`
      : html`<p class="muted">A job's key links here from its page and from the jobs list.</p>`}`;
}
