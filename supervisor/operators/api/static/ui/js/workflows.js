// Workflows and batches: the list of workflows, a workflow's graph (a layered drawing in SVG, each
// node a link to its job, states updated live) with Cancel, a batch's counts and callbacks, and the
// links a job page shows (its workflow, batch, dependencies and dependents).
import { useEffect, useRef, useState } from "../vendor/hooks.module.js";
import { api, ErrorBox, html, jobLink, StateBadge, Time, useData, useLive } from "./core.js";

const LIVE_STATES = new Set(["waiting", "pending", "active", "retry"]);
const MAX_DRAWN = 400; // steps; a bigger graph is listed, not drawn
const NODE = { w: 172, h: 46, gx: 56, gy: 16, pad: 8 };

const iso = (ms) => (ms ? new Date(Number(ms)).toISOString() : null);
const wfLink = (id) => `#/workflow/${encodeURIComponent(id)}`;
export const batchLink = (id) => `#/batch/${encodeURIComponent(id)}`;

function Counts({ counts }) {
  const entries = Object.entries(counts || {});
  return html`<span class="counts">${entries.map(([state, n]) => html`<span class=${`badge s-${state}`}
    data-jobs=${state}>${n} ${state}</span> `)}</span>`;
}

/** Open a workflow or a batch by its id. */
function OpenById() {
  const [kind, setKind] = useState("workflow");
  const [id, setId] = useState("");
  const go = (e) => {
    e.preventDefault();
    if (id.trim()) location.hash = kind === "batch" ? batchLink(id.trim()) : wfLink(id.trim());
  };
  return html`<form class="search" onSubmit=${go} aria-label="Open by id">
    <label>Open<select value=${kind} onChange=${(e) => setKind(e.target.value)}>
      <option value="workflow">workflow</option><option value="batch">batch</option></select></label>
    <label>Id<input value=${id} onInput=${(e) => setId(e.target.value)} placeholder="wf-… or b-…" /></label>
    <button type="submit">Open</button></form>`;
}

export function Workflows() {
  // Each row reads its workflow's jobs: on events, at most one read of the list per 3 s.
  const list = useData(() => api("workflows?limit=50"), [], 3000);
  useLive(() => list.reload());
  const rows = list.data ? list.data.workflows : null;
  return html`<h1>Workflows</h1>
    <${ErrorBox} error=${list.error} />
    <p class="muted">Graphs of jobs made in one call (chain, group, chord, any DAG), newest first; a workflow's
      state comes from its jobs. Open one to see its graph, each job's state live, and to cancel it.</p>
    <${OpenById} />
    ${!rows ? html`<p class="muted">Loading…</p>` : rows.length === 0
      ? html`<p class="muted">No workflow yet: <code>client.workflow(chain(...))</code> makes one.</p>`
      : html`<div class="scroll"><table class="workflows">
        <thead><tr><th scope="col">Workflow</th><th scope="col">Name</th><th scope="col">State</th>
          <th scope="col" class="num">Jobs</th><th scope="col">Jobs by state</th><th scope="col">Created</th></tr></thead>
        <tbody>${rows.map((w) => html`<tr key=${w.id} data-workflow=${w.id}>
          <th scope="row"><a href=${wfLink(w.id)}><code>${w.id}</code></a></th><td>${w.name || "—"}</td>
          <td><${StateBadge} state=${w.state} /></td>
          <td class="num">${Object.values(w.jobs || {}).reduce((a, b) => a + b, 0)}</td>
          <td><${Counts} counts=${w.jobs} /></td><td><${Time} iso=${iso(w.created)} /></td></tr>`)}</tbody>
      </table></div>`}`;
}

/** Columns by longest path from a root (Kahn's order: no recursion on a long chain), each column
 * ordered by its nodes' parents' mean row, so that edges cross less. */
export function layout(steps) {
  const keys = Object.keys(steps);
  const indeg = {}, children = {}, layer = {};
  keys.forEach((k) => { indeg[k] = 0; children[k] = []; });
  keys.forEach((k) => (steps[k].after || []).forEach((a) => {
    if (a in steps) { indeg[k]++; children[a].push(k); }
  }));
  const order = keys.filter((k) => !indeg[k]);
  order.forEach((k) => { layer[k] = 0; });
  for (let i = 0; i < order.length; i++) {
    for (const c of children[order[i]]) {
      layer[c] = Math.max(layer[c] || 0, layer[order[i]] + 1);
      if (--indeg[c] === 0) order.push(c);
    }
  }
  keys.forEach((k) => { if (!(k in layer)) layer[k] = 0; });
  const columns = [];
  keys.forEach((k) => (columns[layer[k]] ||= []).push(k));
  const row = {};
  columns.forEach((col) => {
    const mean = (k) => {
      const ps = (steps[k].after || []).filter((a) => a in row);
      return ps.length ? ps.reduce((n, p) => n + row[p], 0) / ps.length : 0;
    };
    col.sort((a, b) => mean(a) - mean(b)).forEach((k, i) => { row[k] = i; });
  });
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  const pos = {};
  columns.forEach((col, x) => col.forEach((k, i) => {
    const shift = ((tallest - col.length) * (NODE.h + NODE.gy)) / 2;
    pos[k] = { x: NODE.pad + x * (NODE.w + NODE.gx), y: NODE.pad + shift + i * (NODE.h + NODE.gy) };
  }));
  return { pos, width: 2 * NODE.pad + columns.length * (NODE.w + NODE.gx) - NODE.gx,
    height: 2 * NODE.pad + tallest * (NODE.h + NODE.gy) - NODE.gy };
}

const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

function Graph({ steps }) {
  const { pos, width, height } = layout(steps);
  const edges = [];
  for (const [k, s] of Object.entries(steps)) {
    for (const a of s.after || []) {
      if (!(a in pos)) continue;
      const x1 = pos[a].x + NODE.w, y1 = pos[a].y + NODE.h / 2, x2 = pos[k].x - 2, y2 = pos[k].y + NODE.h / 2;
      const mx = (x1 + x2) / 2;
      edges.push(html`<path key=${`${a}>${k}`} class=${`edge e-${steps[a].state}`} marker-end="url(#wf-arrow)"
        d=${`M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`} />`);
    }
  }
  return html`<div class="scroll graph"><svg width=${width} height=${height} viewBox=${`0 0 ${width} ${height}`}
    role="group" aria-label="The workflow's graph: each step links to its job">
    <defs><marker id="wf-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7"
      orient="auto"><path class="arrow" d="M0,0 L10,5 L0,10 z" /></marker></defs>
    ${edges}
    ${Object.entries(steps).map(([k, s]) => html`<a key=${k} href=${jobLink(s.id)} class="node" data-step=${k}
      data-state=${s.state} aria-label=${`${k} (${s.name}): ${s.state}`}>
      <title>${`${k} · ${s.name} · ${s.id} · ${s.state}`}</title>
      <rect class=${`node-box n-${s.state}`} x=${pos[k].x} y=${pos[k].y} width=${NODE.w} height=${NODE.h} rx="6" />
      <text class="node-key" x=${pos[k].x + 8} y=${pos[k].y + 18}>${clip(k, 22)}</text>
      <text class="node-state" x=${pos[k].x + 8} y=${pos[k].y + 36}>${s.state}</text></a>`)}
  </svg></div>`;
}

function CancelWorkflow({ wf, onDone }) {
  const [asking, setAsking] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const keep = useRef(null); // the question takes the focus on its harmless answer
  useEffect(() => { if (asking && keep.current) keep.current.focus(); }, [asking]);
  if (wf.state !== "running") return null;
  const live = Object.values(wf.steps).filter((s) => LIVE_STATES.has(s.state)).length;
  const go = async () => {
    setBusy(true);
    setError(null);
    try {
      await api(`workflows/${encodeURIComponent(wf.id)}/cancel`, { method: "POST",
        body: { reason: "workflow cancelled from the dashboard" } });
      setAsking(false);
      onDone();
    } catch (err) {
      setError(err);
    }
    setBusy(false);
  };
  if (!asking) {
    return html`<div class="job-actions"><button type="button" class="danger" onClick=${() => setAsking(true)}>
      Cancel workflow…</button></div>`;
  }
  return html`<div class="confirm" role="alertdialog" aria-labelledby="wf-confirm-q">
    <p id="wf-confirm-q">Cancel this workflow? Its ${live} unfinished job${live === 1 ? "" : "s"}: waiting and pending
      ones are cancelled at once, running ones are asked to stop. This cannot be undone.</p>
    <button type="button" class="danger" disabled=${busy} onClick=${go}>Yes, cancel the workflow</button>
    ${" "}<button type="button" class="secondary" ref=${keep} onClick=${() => setAsking(false)}>Keep it running</button>
    <${ErrorBox} error=${error} /></div>`;
}

function StepTable({ steps }) {
  return html`<div class="scroll"><table class="steps">
    <thead><tr><th scope="col">Step</th><th scope="col">Type</th><th scope="col">Job</th><th scope="col">State</th>
      <th scope="col">Waits for</th></tr></thead>
    <tbody>${Object.entries(steps).map(([k, s]) => html`<tr key=${k} data-step-row=${k}>
      <th scope="row">${k}</th><td>${s.name}</td><td><a href=${jobLink(s.id)}><code>${s.id}</code></a></td>
      <td><${StateBadge} state=${s.state} /></td><td>${(s.after || []).join(", ") || "—"}</td></tr>`)}</tbody>
  </table></div>`;
}

export function WorkflowPage({ id }) {
  const wf = useData(() => api(`workflows/${encodeURIComponent(id)}`), [id], 500); // one read per 0.5 s at most
  const ids = useRef(new Set());
  ids.current = new Set(wf.data ? Object.values(wf.data.steps).map((s) => s.id) : []);
  useLive((e) => (e.event === "reconnected" || ids.current.has(e.job_id)) && wf.reload(), [id]);
  const w = wf.data;
  if (!w) return html`<h1>Workflow <code>${id}</code></h1><${ErrorBox} error=${wf.error} />
    ${!wf.error && html`<p class="muted">Loading…</p>`}`;
  const n = Object.keys(w.steps).length;
  const counts = {};
  Object.values(w.steps).forEach((s) => { counts[s.state] = (counts[s.state] || 0) + 1; });
  return html`<h1>Workflow <code>${w.id}</code> <span data-workflow-state=${w.state}><${StateBadge} state=${w.state} />
    </span></h1>
    <${ErrorBox} error=${wf.error} />
    <p>${w.name && html`<strong>${w.name}</strong>, `}${n} step${n === 1 ? "" : "s"}, created <${Time} iso=${iso(w.created)} />:${" "}
      <${Counts} counts=${counts} /></p>
    <${CancelWorkflow} wf=${w} onDone=${wf.now} />
    <section aria-labelledby="graph-h"><h2 id="graph-h">Graph</h2>
      ${n <= MAX_DRAWN ? html`<${Graph} steps=${w.steps} />`
        : html`<p class="muted">${n} steps are too many to draw: the table lists them.</p>`}</section>
    <section aria-labelledby="steps-h"><h2 id="steps-h">Steps</h2><${StepTable} steps=${w.steps} /></section>`;
}

const CALLBACK_STATE = (cb) => (cb.fired ? "fired" : cb.fired === false ? "not fired" : "not yet due");

export function BatchPage({ id }) {
  const batch = useData(() => api(`batches/${encodeURIComponent(id)}`), [id], 1000);
  useLive(() => batch.reload(), [id]); // its members are not listed here: any event may be one of them
  const b = batch.data;
  if (!b) return html`<h1>Batch <code>${id}</code></h1><${ErrorBox} error=${batch.error} />
    ${!batch.error && html`<p class="muted">Loading…</p>`}`;
  const figures = [["total", "Total"], ["pending", "Pending"], ["completed", "Completed"], ["failed", "Failed"]];
  return html`<h1>Batch <code>${b.id}</code> <span class="badge" data-batch-state=${b.state}>${b.state}</span></h1>
    <${ErrorBox} error=${batch.error} />
    <p>${b.description && html`${b.description}, `}created <${Time} iso=${iso(b.created)} />
      ${b.finished ? html`, done <${Time} iso=${iso(b.finished)} />` : ""}.${" "}
      <span class="muted">Open: jobs may still be added; closed: its callbacks fire once the last job settles.</span></p>
    <dl class="figures">${figures.map(([k, label]) => html`<div><dt>${label}</dt><dd data-batch=${k}>${b[k]}</dd></div>`)}
    </dl>
    <section aria-labelledby="callbacks-h"><h2 id="callbacks-h">Callbacks</h2>
      ${(b.callbacks || []).length === 0 ? html`<p class="muted">None.</p>` : html`<ul class="plain">
        ${b.callbacks.map((cb) => html`<li data-callback=${cb.which}><code>${cb.which}</code>: ${cb.name},${" "}
          <span class=${`badge ${cb.fired ? "s-completed" : ""}`} data-fired=${String(cb.fired)}>${CALLBACK_STATE(cb)}</span>
          ${cb.job && html` <a href=${jobLink(cb.job)}><code>${cb.job}</code></a>`}</li>`)}</ul>`}
    </section>`;
}

function JobList({ items, empty }) {
  if (!items.length) return html`<span class="muted">${empty}</span>`;
  return html`<ul class="plain">${items.map((d) => html`<li key=${d.id} data-link-job=${d.id}>
    <a href=${jobLink(d.id)}><code>${d.id}</code></a> ${d.name} <${StateBadge} state=${d.state} />
    ${d.outcome && d.outcome !== d.state ? html` <span class="muted">(heard: ${d.outcome})</span>` : ""}</li>`)}</ul>`;
}

/** The job page's workflow section: shown when the job is in a workflow or batch, or has links. */
export function JobLinks({ id, version }) {
  const links = useData(() => api(`jobs/${encodeURIComponent(id)}/links`).catch(() => null), [id], 500);
  const seen = useRef(new Set());
  const mounted = useRef(false);
  useEffect(() => { // the job itself changed (on mount, useData has just loaded it)
    if (mounted.current) links.reload();
    mounted.current = true;
  }, [version]);
  useLive((e) => seen.current.has(e.job_id) && links.reload(), [id]);
  const l = links.data;
  if (!l) return null;
  seen.current = new Set([...l.dependencies, ...l.dependents].map((d) => d.id));
  if (!l.workflow && !l.batch && !l.dependencies.length && !l.dependents.length && !l.unsettled) return null;
  return html`<section aria-labelledby="links-h"><h2 id="links-h">Workflow</h2><dl class="facts">
    ${l.workflow && html`<dt>Workflow</dt><dd><a href=${wfLink(l.workflow.id)}><code>${l.workflow.id}</code></a>,
      step <code>${l.workflow.step}</code></dd>`}
    ${l.batch && html`<dt>Batch</dt><dd><a href=${batchLink(l.batch)}><code>${l.batch}</code></a></dd>`}
    <dt>Depends on</dt><dd class="deps"><${JobList} items=${l.dependencies} empty="nothing" />
      ${l.unsettled > 0 && html`<p class="muted">Still waiting on ${l.unsettled}
        ${l.workflow ? "" : " (a job's record keeps only the dependencies that settled)"}</p>`}</dd>
    <dt>Dependents</dt><dd class="dependents"><${JobList} items=${l.dependents} empty="none" /></dd>
    ${l.truncated && html`<dt></dt><dd class="muted">Only the first entries are listed.</dd>`}
  </dl></section>`;
}
