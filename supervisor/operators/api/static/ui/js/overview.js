// Overview: every type with its depth by state, runtime, schedule, paused flag and serving
// instances, sparklines of the last hour from the per-minute history, and totals across types.
import { useEffect, useRef, useState } from "../vendor/hooks.module.js";
import { api, ErrorBox, html, jobLink, Time, useData, useLive } from "./core.js";

const COLUMNS = [
  ["waiting", "Waiting", (c) => c.waiting || 0], ["pending", "Pending", (c) => (c.ready || 0) + (c.sched || 0)], ["active", "Active", (c) => c.active || 0],
  ["completed", "Completed", (c) => c.completed || 0], ["failed", "Failed", (c) => c.failed || 0],
  ["dead", "Dead", (c) => c.dead || 0],
  ["other", "Other", (c) => (c.cancelled || 0) + (c.expired || 0) + (c.dismissed || 0)],
];

const failures = (p) => (p.failed || 0) + (p.dead || 0);
const FAILURE_EVENTS = new Set(["failed", "dead", "retry"]);

/** The newest failed attempts: read once from /executions, then prepended as events arrive. */
function RecentFailures() {
  const [items, setItems] = useState(null);
  const add = (events) => setItems((list) => {
    const seen = new Set();
    return [...events, ...(list || [])].filter((e) => !seen.has(e.stream_id) && seen.add(e.stream_id)).slice(0, 8);
  });
  useEffect(() => {
    api("executions?limit=300").then((d) => add(d.executions.filter((e) => FAILURE_EVENTS.has(e.event))),
      () => add([]));
  }, []);
  useLive((e) => FAILURE_EVENTS.has(e.event) && add([e]));
  if (!items) return null;
  return html`<section aria-labelledby="failures-h" class="failures"><h2 id="failures-h">Recent failures</h2>
    ${items.length ? html`<ul class="plain">${items.map((e) => html`<li key=${e.stream_id}>
      <${Time} iso=${e.time} /> <span class=${`badge o-${e.event}`}>${e.event}</span>${" "}
      <a href=${jobLink(e.job_id)}><code>${e.job_id}</code></a> ${e.type}, attempt ${e.attempt}${e.error ? ": " : ""}
      <span class="error">${(e.error || "").split("\n")[0].slice(0, 200)}</span></li>`)}</ul>`
      : html`<p class="muted">None in the recent events.</p>`}</section>`;
}

/** A small uPlot line chart; `series` = [{label, get, color}]. */
export function Chart({ points, series, width = 120, height = 30, axes = false, label }) {
  const box = useRef(null);
  useEffect(() => {
    if (!window.uPlot || !box.current || !points || !points.length) return undefined;
    const xs = points.map((p) => Date.parse(p.minute) / 1000);
    const data = [xs, ...series.map((s) => points.map((p) => {
      const v = s.get(p);
      return v === undefined ? null : v;
    }))];
    const plot = new window.uPlot({
      width, height, legend: { show: axes }, cursor: { show: axes, y: false }, select: { show: false },
      scales: { x: { time: true } }, padding: axes ? undefined : [2, 0, 2, 0],
      axes: axes ? [{ stroke: "#667" }, { stroke: "#667", size: 44 }] : [{ show: false }, { show: false }],
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 1.5, spanGaps: true,
        points: { show: !!s.dots, size: 4, fill: s.color } }))],
    }, data, box.current);
    return () => plot.destroy();
  }, [points, width, height]);
  return html`<div class="chart" ref=${box} role="img" aria-label=${label}></div>`;
}

function Totals({ rows, history }) {
  const sum = (fn) => rows.reduce((n, t) => n + fn(t.counts || {}), 0);
  const totals = history && history.totals;
  const done = totals ? totals.reduce((n, p) => n + (p.completed || 0), 0) : null;
  const failed = totals ? totals.reduce((n, p) => n + failures(p), 0) : null;
  return html`<section aria-labelledby="totals-h" class="totals">
    <h2 id="totals-h">All types</h2>
    <dl class="figures">
      ${COLUMNS.map(([key, label, fn]) => html`<div><dt>${label}</dt><dd data-total=${key}>${sum(fn)}</dd></div>`)}
      <div><dt>Types</dt><dd>${rows.length}</dd></div>
      ${done !== null && html`<div><dt>Completed, last hour</dt><dd data-hour="completed">${done}</dd></div>
        <div><dt>Failed or dead, last hour</dt><dd>${failed}</dd></div>`}
    </dl>
    ${totals && totals.length ? html`<div class="charts">
      <figure><figcaption>Jobs per minute (completed, failed or dead)</figcaption>
        <${Chart} points=${totals} axes width=${360} height=${150} label="Jobs per minute, last hour"
          series=${[{ label: "completed", get: (p) => p.completed, color: "#1a7f37" },
                    { label: "failed/dead", get: failures, color: "#cf222e" }]} /></figure>
      <figure><figcaption>Run time per minute (ms: p50, p95, p99)</figcaption>
        <${Chart} points=${totals} axes width=${360} height=${150} label="Run-time percentiles, last hour"
          series=${[{ label: "p50", get: (p) => p.run_ms && p.run_ms.p50, color: "#0969da", dots: true },
                    { label: "p95", get: (p) => p.run_ms && p.run_ms.p95, color: "#9a6700", dots: true },
                    { label: "p99", get: (p) => p.run_ms && p.run_ms.p99, color: "#8250df", dots: true }]} /></figure>
    </div>` : html`<p class="muted">No per-minute history yet.</p>`}
  </section>`;
}

function PauseButton({ type, onDone }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const act = async () => {
    setBusy(true);
    try {
      await api(`types/${encodeURIComponent(type.name)}/${type.paused ? "resume" : "pause"}`, { method: "POST" });
      onDone();
    } catch (err) {
      setError(err);
    }
    setBusy(false);
  };
  return html`<button type="button" class=${`small ${type.paused ? "" : "secondary"}`} disabled=${busy} onClick=${act}
    title=${type.paused ? "Let instances start this type's jobs again"
      : "Stop instances from starting this type's jobs: running ones finish, new ones wait"}
    aria-label=${`${type.paused ? "Resume" : "Pause"} ${type.name}`}>${type.paused ? "Resume" : "Pause"}</button>
    <${ErrorBox} error=${error} />`;
}

function TypeRow({ type, schedules, points, reload }) {
  const c = type.counts || {};
  const policy = type.policy || {};
  const status = type.paused ? "paused" : type.served ? "serving" : "not served";
  const name = encodeURIComponent(type.name);
  return html`<tr data-type=${type.name}>
    <th scope="row"><a href=${`#/jobs?type=${name}`}>${type.name}</a>
      ${type.error && html`<div class="error">${type.error}</div>`}</th>
    <td><span class=${`badge t-${status.replace(" ", "-")}`} data-status=${status}>${status}</span>
      <div class="muted small">${(type.served_by || []).join(", ") || (type.last_served
        ? `last: ${type.last_served.instance}` : "")}</div>
      <${PauseButton} type=${type} onDone=${reload} /></td>
    <td>${policy.runtime || "—"}</td>
    <td>${schedules.length ? schedules.map((s) => html`<code>${s.cron}</code> `) : "—"}</td>
    ${COLUMNS.map(([key, , fn]) => html`<td class="num" data-count=${key}>
      ${key === "dead" || key === "failed" ? html`<a href=${`#/jobs?type=${name}&state=${key}`}>${fn(c)}</a>` : fn(c)}</td>`)}
    <td><${Chart} points=${points} label=${`${type.name}: completed per minute`}
      series=${[{ get: (p) => p.completed, color: "#1a7f37" }]} /></td>
    <td><${Chart} points=${points} label=${`${type.name}: failed or dead per minute`}
      series=${[{ get: failures, color: "#cf222e" }]} /></td>
    <td><${Chart} points=${points} label=${`${type.name}: run-time p95 per minute`}
      series=${[{ get: (p) => p.run_ms && p.run_ms.p95, color: "#9a6700", dots: true }]} /></td>
  </tr>`;
}

export function Overview() {
  const types = useData(async () => {
    const [rows, schedules] = await Promise.all([api("types"), api("schedules").catch(() => [])]);
    return { rows, schedules };
  });
  const history = useData(() => api("history?minutes=60").catch(() => null), [], 3000);
  useLive(() => {
    types.reload();
    history.reload(); // coalesced: at most one read per 3 s
  });
  useEffect(() => {
    const every = setInterval(() => history.now(), 30000); // a new minute of history
    return () => clearInterval(every);
  }, []);
  if (!types.data) return html`<h1>Overview</h1><${ErrorBox} error=${types.error} />`;
  const { rows, schedules } = types.data;
  const perType = (history.data && history.data.types) || {};
  return html`<h1>Overview</h1>
    <${ErrorBox} error=${types.error} />
    <${Totals} rows=${rows} history=${history.data} />
    <section aria-labelledby="types-h">
      <h2 id="types-h">Job types</h2>
      <p class="muted">Pause a misbehaving type to stop new runs (running jobs finish, new jobs wait in the queue);
        a type's name lists its jobs, a failed or dead count the jobs that need you.</p>
      ${rows.length === 0 ? html`<p class="muted">No job type is published yet: start an instance with
        handlers in <code>jobs/</code> or <code>tasks/</code>.</p>` : html`<div class="scroll"><table class="types">
        <thead><tr><th scope="col">Type</th><th scope="col">Status</th><th scope="col">Runtime</th>
          <th scope="col">Schedule</th>${COLUMNS.map(([, label]) => html`<th scope="col" class="num">${label}</th>`)}
          <th scope="col">Done/min</th><th scope="col">Failed/min</th><th scope="col">p95 run</th></tr></thead>
        <tbody>${rows.map((t) => html`<${TypeRow} key=${t.name} type=${t} points=${perType[t.name]}
          schedules=${schedules.filter((s) => s.job === t.name)} reload=${types.now} />`)}</tbody>
      </table></div>`}
    </section>
    <${RecentFailures} />`;
}
