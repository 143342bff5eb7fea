// One job: state, payload, result, live progress, every attempt with its stack trace, output
// lines, parent and child links, request and trace ids, and the actions its state allows.
import { useState } from "../vendor/hooks.module.js";
import { api, ErrorBox, html, jobLink, pretty, StateBadge, Time, useData, useLive } from "./core.js";
import { JobLinks } from "./workflows.js";

// Which operator actions each state allows (the transitions of supervisor/engine/states.py).
const ACTIONS = {
  pending: ["cancel"], waiting: ["cancel"], retry: ["cancel"], active: ["cancel"],
  failed: ["retry"], dead: ["replay", "dismiss"],
};

function Progress({ progress }) {
  if (!progress) return null;
  const pct = Number(progress.percent);
  return html`<section aria-labelledby="progress-h"><h2 id="progress-h">Progress</h2>
    <p class="progress"><progress max="100" value=${Number.isFinite(pct) ? pct : undefined}
      aria-label="Progress">${pct}%</progress>
      <span data-progress=${pct}>${Number.isFinite(pct) ? `${pct}%` : ""}</span>
      ${progress.step && html` <span class="muted">step ${progress.step}</span>`}
      ${progress.message && html` <span>${progress.message}</span>`}</p></section>`;
}

function Attempts({ attempts }) {
  if (!attempts.length) return html`<p class="muted">No attempt yet.</p>`;
  return html`<ol class="attempts">${attempts.map((a) => html`<li data-attempt=${a.attempt}>
    <p><strong>Attempt ${a.attempt}</strong>: <span class=${`badge o-${a.outcome}`}>${a.outcome}</span>${" "}
      on <code>${a.instance || "?"}</code>, started <${Time} iso=${a.started} />,${" "}
      ${a.ended ? `ran ${((Date.parse(a.ended) - Date.parse(a.started)) / 1000).toFixed(3)} s` : "running"}</p>
    ${a.error && html`<pre class="error-text">${a.error}</pre>`}
    ${a.traceback && html`<details open><summary>Stack trace</summary><pre class="traceback">${a.traceback}</pre></details>`}
  </li>`)}</ol>`;
}

function Actions({ job, onDone }) {
  const [problem, setProblem] = useState(null);
  const [busy, setBusy] = useState(false);
  const act = (action) => async () => {
    setBusy(true);
    setProblem(null);
    try {
      await api(`jobs/${encodeURIComponent(job.id)}/${action}`, { method: "POST" });
      onDone();
    } catch (err) {
      setProblem(err);
    }
    setBusy(false);
  };
  const allowed = ACTIONS[job.state] || [];
  return html`<div class="job-actions">${allowed.map((a) => html`<button type="button" disabled=${busy}
    class=${a === "cancel" || a === "dismiss" ? "secondary" : ""} onClick=${act(a)}>
    ${a[0].toUpperCase() + a.slice(1)}</button> `)}
    ${allowed.length === 0 && html`<span class="muted">No action applies to a ${job.state} job.</span>`}
    <${ErrorBox} error=${problem} /></div>`;
}

function Children({ id }) {
  const kids = useData(() => api(`search?q=${encodeURIComponent(id)}&field=parent&limit=100`), [id], 2000);
  if (!kids.data || !kids.data.jobs.length) return null;
  return html`<dt>Children</dt><dd><ul class="plain">${kids.data.jobs.map((k) => html`<li>
    <a href=${jobLink(k.id)}><code>${k.id}</code></a> ${k.name} <${StateBadge} state=${k.state} /></li>`)}</ul></dd>`;
}

function Facts({ job }) {
  const ctx = job.context || {};
  return html`<dl class="facts">
    <dt>Type</dt><dd><a href=${`#/jobs?type=${encodeURIComponent(job.name)}`}>${job.name}</a></dd>
    <dt>Created</dt><dd><${Time} iso=${job.created} /></dd>
    ${job.run_at && html`<dt>Runs at</dt><dd><${Time} iso=${job.run_at} /></dd>`}
    ${job.started && html`<dt>Started</dt><dd><${Time} iso=${job.started} /></dd>`}
    ${job.finished && html`<dt>Finished</dt><dd><${Time} iso=${job.finished} /></dd>`}
    ${job.deadline && html`<dt>Deadline</dt><dd><${Time} iso=${job.deadline} /></dd>`}
    <dt>Deliveries</dt><dd>${job.deliveries}</dd><dt>Priority</dt><dd>${job.priority}</dd>
    ${job.instance && html`<dt>Instance</dt><dd><code>${job.instance}</code></dd>`}
    ${ctx.request_id && html`<dt>Request id</dt><dd><code>${ctx.request_id}</code></dd>`}
    ${ctx.trace_id && html`<dt>Trace id</dt><dd><code>${ctx.trace_id}</code></dd>`}
    ${job.idempotency_key && html`<dt>Idempotency key</dt><dd><code>${job.idempotency_key}</code></dd>`}
    ${job.concurrency_key && html`<dt>Concurrency key</dt><dd><a href=${`#/keys?type=${encodeURIComponent(job.name)}`
      + `&key=${encodeURIComponent(job.concurrency_key)}`}><code>${job.concurrency_key}</code></a></dd>`}
    ${job.parent && html`<dt>Parent</dt><dd><a href=${jobLink(job.parent)}><code>${job.parent}</code></a></dd>`}
    <${Children} id=${job.id} />
    ${job.cancel_requested && html`<dt>Cancel requested</dt><dd>${job.cancel_requested}</dd>`}
  </dl>`;
}

export function JobPage({ id }) {
  const job = useData(() => api(`jobs/${encodeURIComponent(id)}`), [id], 300);
  const logs = useData(() => api(`jobs/${encodeURIComponent(id)}/logs?last=500`).catch(() => null), [id], 1000);
  const [progress, setProgress] = useState(null);
  useLive((e) => {
    if (e.event === "reconnected" || e.job_id === id) {
      if (e.event === "progress" && e.progress) setProgress(e.progress); // shown at once, no read
      else {
        job.reload();
        logs.reload();
      }
    }
  }, [id]);
  const reload = () => {
    job.now();
    logs.now();
  };
  const j = job.data;
  if (!j) return html`<h1>Job <code>${id}</code></h1><${ErrorBox} error=${job.error} />
    ${!job.error && html`<p class="muted">Loading…</p>`}`;
  const shown = progress && j.state === "active" ? progress : j.progress;
  return html`<h1>Job <code>${j.id}</code> <${StateBadge} state=${j.state} /></h1>
    <${ErrorBox} error=${job.error} />
    <${Actions} job=${j} onDone=${reload} />
    <div class="job-grid">
      <section aria-labelledby="facts-h"><h2 id="facts-h">Details</h2><${Facts} job=${j} /></section>
      <section aria-labelledby="payload-h"><h2 id="payload-h">Payload</h2><pre class="payload">${pretty(j.payload)}</pre>
        ${j.result !== null && j.result !== undefined && html`<h2>Result</h2><pre class="result">${pretty(j.result)}</pre>`}
        ${j.error && html`<h2>Error</h2><pre class="error-text job-error">${j.error}</pre>`}
      </section>
    </div>
    <${JobLinks} id=${j.id} version=${j.state} />
    <${Progress} progress=${shown} />
    <section aria-labelledby="attempts-h"><h2 id="attempts-h">Attempts</h2><${Attempts} attempts=${j.attempts || []} />
    </section>
    ${j.actions && j.actions.length > 0 && html`<section aria-labelledby="history-h"><h2 id="history-h">Operator
      actions</h2><ul class="plain">${j.actions.map((a) => html`<li>${a.action} by ${a.source}${a.by ? ` (${a.by})` : ""},
      <${Time} iso=${a.at} /></li>`)}</ul></section>`}
    <section aria-labelledby="logs-h"><h2 id="logs-h">Output</h2>
      ${logs.data && logs.data.lines.length ? html`<pre class="logs">${logs.data.lines.join("\n")}</pre>`
        : html`<p class="muted">No output lines.</p>`}</section>`;
}
