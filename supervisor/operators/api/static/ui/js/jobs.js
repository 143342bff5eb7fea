// Jobs: filters (type, state, key, time range) kept in the URL's hash, search by id, request id,
// trace id, idempotency key or error text, cursor pages, and bulk actions on the filter (a dry
// run counts first). Dead letters: the same list, fixed on state dead, replay first.
import { useState } from "../vendor/hooks.module.js";
import { api, ErrorBox, html, jobLink, query, STATES, StateBadge, Time, useData, useLive } from "./core.js";

const FILTERS = ["type", "state", "key", "since", "until"];
const SEARCH_FIELDS = [["any", "anything"], ["id", "job id"], ["request_id", "request id"], ["trace_id", "trace id"],
  ["idempotency_key", "idempotency key"], ["error", "error text"]];
const BULK = {
  retry: "Retry (failed)", replay: "Replay (dead)", dismiss: "Dismiss (dead)", cancel: "Cancel",
  delete: "Delete records", purge: "Purge finished records",
};

const isoOf = (local) => (local ? new Date(local).toISOString() : undefined);

function navigate(page, values) {
  location.hash = `#/${page}${query(values)}`;
}

// The forms' fields are uncontrolled (defaultValue, selected): a live re-render must not undo typing.
function Filters({ page, params, fixedState, types }) {
  const submit = (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const values = {};
    for (const name of FILTERS) if (form.get(name)) values[name] = form.get(name);
    navigate(page, values);
  };
  return html`<form class="filters" onSubmit=${submit} aria-label="Filter jobs">
    <label>Type <select name="type">
      <option value="">every type</option>
      ${types.map((t) => html`<option value=${t.name} selected=${params.get("type") === t.name}>${t.name}</option>`)}
    </select></label>
    ${!fixedState && html`<label>State <select name="state">
      <option value="">every state</option>${STATES.map((s) => html`<option value=${s}
        selected=${params.get("state") === s}>${s}</option>`)}</select></label>`}
    <label>Key <input name="key" defaultValue=${params.get("key") || ""} placeholder="concurrency key" /></label>
    <label>Created from <input name="since" type="datetime-local" defaultValue=${params.get("since") || ""} /></label>
    <label>to <input name="until" type="datetime-local" defaultValue=${params.get("until") || ""} /></label>
    <button type="submit">Apply</button>
    <a class="button secondary" href=${`#/${page}`}>Clear</a>
  </form>`;
}

function Search({ page, params }) {
  const submit = (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const values = {};
    for (const name of FILTERS) if (params.get(name)) values[name] = params.get(name);
    values.q = String(form.get("q") || "").trim();
    values.field = form.get("field");
    navigate(page, values);
  };
  return html`<form class="search" role="search" onSubmit=${submit}>
    <label>Search <input name="q" type="search" defaultValue=${params.get("q") || ""}
      placeholder="job id, request id, trace id, idempotency key or error text" /></label>
    <label>in <select name="field">
      ${SEARCH_FIELDS.map(([v, label]) => html`<option value=${v}
        selected=${(params.get("field") || "any") === v}>${label}</option>`)}</select></label>
    <button type="submit">Search</button>
  </form>`;
}

function Bulk({ params, fixedState, defaultAction, onDone }) {
  const [action, setAction] = useState(defaultAction);
  const [error, setErrorText] = useState("");
  const [count, setCount] = useState(null);
  const [result, setResult] = useState(null);
  const [problem, setProblem] = useState(null);
  const [busy, setBusy] = useState(false);
  const filter = () => {
    const body = {};
    for (const name of ["type", "key"]) if (params.get(name)) body[name] = params.get(name);
    const state = fixedState || params.get("state");
    if (state) body.state = state;
    if (params.get("since")) body.since = isoOf(params.get("since"));
    if (params.get("until")) body.until = isoOf(params.get("until"));
    if (error.trim()) body.error = error.trim();
    return body;
  };
  const run = async (dryRun) => {
    setBusy(true);
    setProblem(null);
    try {
      const out = await api(`jobs/bulk/${action}`, { method: "POST", body: { ...filter(), dry_run: dryRun } });
      if (dryRun) setCount(out);
      else {
        setResult(out);
        setCount(null);
        onDone();
      }
    } catch (err) {
      setProblem(err);
    }
    setBusy(false);
  };
  const reset = (fn) => (e) => {
    fn(e.target.value);
    setCount(null);
    setResult(null);
  };
  return html`<details class="bulk"><summary>Bulk action on this filter</summary>
    <div class="bulk-body">
      <label>Action <select value=${action} onChange=${reset(setAction)}>
        ${Object.entries(BULK).map(([v, label]) => html`<option value=${v}>${label}</option>`)}</select></label>
      <label>Error contains <input value=${error} onInput=${reset(setErrorText)} placeholder="optional" /></label>
      <button type="button" disabled=${busy} onClick=${() => run(true)}>Count matching jobs</button>
      ${count && html`<p role="status" class="bulk-count">${count.matched} job(s) match
        ${Object.keys(count.by_state || {}).length ? ` (${Object.entries(count.by_state).map(([s, n]) => `${s}: ${n}`)
          .join(", ")})` : ""}.</p>
        ${count.matched > 0 && html`<button type="button" class="danger" disabled=${busy} onClick=${() => run(false)}>
          ${action[0].toUpperCase() + action.slice(1)} ${count.matched} job(s)</button>`}`}
      ${result && html`<p role="status" class="bulk-result">${result.action}: ${result.done} done,
        ${result.skipped} skipped (their state changed meanwhile), ${result.batches} batch(es),
        longest call ${result.longest_call_ms} ms.</p>`}
      <${ErrorBox} error=${problem} />
    </div></details>`;
}

function RowActions({ job, onDone }) {
  const [problem, setProblem] = useState(null);
  const act = (action) => async () => {
    try {
      await api(`jobs/${encodeURIComponent(job.id)}/${action}`, { method: "POST" });
      onDone();
    } catch (err) {
      setProblem(err);
    }
  };
  if (job.state !== "dead") return null;
  return html`<button type="button" onClick=${act("replay")} aria-label=${`Replay ${job.id}`}>Replay</button>
    <button type="button" class="secondary" onClick=${act("dismiss")} aria-label=${`Dismiss ${job.id}`}>Dismiss</button>
    <${ErrorBox} error=${problem} />`;
}

export function JobTable({ jobs, matched, onDone, actions = false }) {
  if (!jobs.length) return html`<p class="muted">No job matches.</p>`;
  return html`<div class="scroll"><table class="jobs">
    <thead><tr><th scope="col">Job</th><th scope="col">Type</th><th scope="col">State</th><th scope="col">Created</th>
      <th scope="col" class="num">Attempts</th><th scope="col">Key</th><th scope="col">Error</th>
      ${matched && html`<th scope="col">Matched</th>`}${actions && html`<th scope="col"><span class="sr-only">Actions</span></th>`}
    </tr></thead>
    <tbody>${jobs.map((j) => html`<tr key=${j.id} data-job=${j.id} data-state=${j.state}>
      <td><a href=${jobLink(j.id)}><code>${j.id}</code></a></td><td>${j.name}</td>
      <td><${StateBadge} state=${j.state} /></td><td><${Time} iso=${j.created} /></td>
      <td class="num">${j.deliveries}</td>
      <td>${j.concurrency_key && html`<a href=${`#/keys${query({ type: j.name, key: j.concurrency_key })}`}>
        ${j.concurrency_key}</a>`}</td>
      <td class="err">${(j.error || "").split("\n")[0].slice(0, 160)}</td>
      ${matched && html`<td>${matched[j.id]}</td>`}
      ${actions && html`<td class="actions"><${RowActions} job=${j} onDone=${onDone} /></td>`}
    </tr>`)}</tbody></table></div>`;
}

function JobList({ page, params, fixedState, title, defaultAction, help }) {
  const [cursors, setCursors] = useState([null]); // cursors[i]: what loads page i
  const key = params.toString();
  const types = useData(() => api("types"), []);
  const q = params.get("q");
  const list = useData(() => {
    if (q) {
      return api(`search${query({ q, field: params.get("field") || "any", type: params.get("type") })}`);
    }
    const state = fixedState || params.get("state");
    return api(`jobs${query({ type: params.get("type"), state, key: params.get("key"),
      since: isoOf(params.get("since")), until: isoOf(params.get("until")), limit: 50,
      cursor: cursors[cursors.length - 1] })}`);
  }, [key, cursors.length]);
  useLive((e) => {
    const type = params.get("type");
    if (cursors.length === 1 && !q && (!type || e.type === type || e.event === "reconnected")) list.reload();
  });
  const data = list.data;
  return html`<h1>${title}</h1>
    ${help && html`<p class="muted">${help}</p>`}
    <${Filters} page=${page} params=${params} fixedState=${fixedState} types=${types.data || []} />
    <${Search} page=${page} params=${params} />
    <${Bulk} params=${params} fixedState=${fixedState} defaultAction=${defaultAction} onDone=${list.now} />
    <${ErrorBox} error=${list.error} />
    ${q && data && html`<p class="muted" role="status">Search for “${q}”: ${data.jobs.length} found
      (${data.scanned} records scanned${data.complete ? "" : "; only the newest were read: narrow it by type"}).
      <a href=${`#/${page}`}>Back to the list</a></p>`}
    ${data ? html`<${JobTable} jobs=${data.jobs} matched=${q ? data.matched : null} onDone=${list.now}
      actions=${!!fixedState || params.get("state") === "dead"} />` : html`<p class="muted">Loading…</p>`}
    ${data && data.corrupt && data.corrupt.length > 0 && html`<p class="error">${data.corrupt.length} record(s)
      skipped: not written by job-supervisor (first: ${data.corrupt[0].message}).</p>`}
    ${!q && html`<nav class="pager" aria-label="Pages of jobs">
      <button type="button" disabled=${cursors.length === 1} onClick=${() => setCursors(cursors.slice(0, -1))}>
        ← Newer</button>
      <span>Page ${cursors.length}</span>
      <button type="button" disabled=${!data || !data.next_cursor}
        onClick=${() => setCursors([...cursors, data.next_cursor])}>Older →</button></nav>`}`;
}

export const Jobs = ({ params }) => html`<${JobList} key=${params.toString()} page="jobs" params=${params}
  title="Jobs" defaultAction=${params.get("state") === "failed" ? "retry" : "replay"} />`;

export const DeadLetters = ({ params }) => html`<${JobList} key=${params.toString()} page="dead" params=${params}
  fixedState="dead" title="Dead letters" defaultAction="replay"
  help="Jobs that failed every attempt they were allowed. Open one to see why (its error and stack trace). Replay runs
    it again with the same payload; Dismiss puts it away for good. A bulk action does either for every job of the
    filter, after counting them." />`;
