// gpufn console: a small single-page app over gpufn's public REST API (nothing private).
// Views are functions of the hash route; each returns a cleanup that stops its refresh timer.
// Charts are uPlot, YAML is js-yaml (both vendored from npm, see console/package.json).

const $ = (sel, root = document) => root.querySelector(sel);
const view = $("#view");
const REFRESH_MS = 2000;

// Charts by id, for the browser tests (they read the plotted data to see a cold start appear).
window.gpufnCharts = {};

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function h(html) {
  const t = document.createElement("template");
  t.innerHTML = html.trim();
  return t.content.firstElementChild;
}

// ---------------------------------------------------------------- Token
// The console holds the caller's API token in sessionStorage (this tab only, gone when it closes)
// and sends it as a header: no cookie, so no other page can make the browser use it.
// `/console#token=...` logs in directly: the fragment never reaches a server, and it is moved to
// sessionStorage and cleared from the address bar at once.
const TOKEN_KEY = "gpufn-token";
let me = null; // GET /api/v1/whoami: the token's role and what it allows

function takeTokenFromHash() {
  if (!location.hash.startsWith("#token=")) return;
  const t = decodeURIComponent(location.hash.slice("#token=".length));
  if (t) {
    sessionStorage.setItem(TOKEN_KEY, t);
    me = null; // another token: ask again what it may do
  }
  history.replaceState(null, "", location.pathname + location.search + "#/");
}

function authHeaders(headers = {}) {
  const t = sessionStorage.getItem(TOKEN_KEY);
  return t ? { ...headers, authorization: `Bearer ${t}` } : headers;
}

async function api(method, path, body, contentType = "application/json") {
  const opts = { method, headers: authHeaders() };
  if (body !== undefined) {
    opts.body = typeof body === "string" ? body : JSON.stringify(body);
    opts.headers["content-type"] = contentType;
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (r.status === 401) {
    // No token, or one that was revoked or expired: ask for one.
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    showLogin(json?.error?.message);
    const err = new Error(json?.error?.message || "a token is needed");
    err.status = 401;
    throw err;
  }
  if (!r.ok) {
    const err = new Error(json?.error?.message || `${r.status} ${text}`);
    err.status = r.status;
    err.details = json?.error?.details || [];
    err.field = json?.error?.field;
    throw err;
  }
  return json;
}

const fmt = {
  ms: (v) => (v == null ? "–" : v < 10 ? v.toFixed(2) + " ms" : v < 1000 ? v.toFixed(0) + " ms" : (v / 1000).toFixed(2) + " s"),
  pct: (v) => (v == null ? "–" : (v * 100).toFixed(1) + " %"),
  usd: (v) => (v == null ? "–" : "$" + (v < 1 ? v.toFixed(6) : v.toFixed(2))),
  time: (s) => (s ? new Date(s).toLocaleTimeString() : "–"),
  num: (v) => (v == null ? "–" : Number(v).toLocaleString()),
};

function stateCounts(st) {
  return ["starting", "ready", "busy", "draining"]
    .filter((k) => st[k] > 0)
    .map((k) => `<span class="pill ${k}">${st[k]} ${k}</span>`)
    .join(" ") || '<span class="muted">0 instances</span>';
}

async function usageWindow(name, seconds) {
  const now = Math.floor(Date.now() / 1000);
  const u = await api("GET", `/api/v1/functions/${encodeURIComponent(name)}/usage?from=${now - seconds}&to=${now + 1}&step_s=${seconds + 1}`);
  return u.buckets.reduce((a, b) => ({ inv: a.inv + b.invocations, cold: a.cold + b.cold_starts }), { inv: 0, cold: 0 });
}

// ---------------------------------------------------------------- Functions

async function functionsView(root) {
  root.append(h(`<div>
    <div class="row"><h1 style="flex:1;margin:0">Functions</h1><a class="btn needs-deploy" href="#/deploy">Deploy a function</a></div>
    <div class="panel"><table id="fn-table">
      <thead><tr><th>Name</th><th>GPU</th><th class="num">Concurrency</th><th>Instances</th>
      <th class="num">Invocations 1h / 24h</th><th class="num">Cold starts 1h / 24h</th>
      <th class="num">Latency p50 / p99</th><th class="num">Cost so far</th></tr></thead>
      <tbody><tr><td colspan="8" class="muted">loading…</td></tr></tbody></table></div>
  </div>`));
  const tbody = $("#fn-table tbody", root);
  async function refresh() {
    const fns = await api("GET", "/api/v1/functions");
    if (!fns.length) {
      tbody.innerHTML = `<tr><td colspan="8" class="muted">No functions yet. <a href="#/deploy">Deploy one</a>.</td></tr>`;
      return;
    }
    const rows = await Promise.all(fns.map(async (f) => {
      const [full, hour, day] = await Promise.all([
        api("GET", `/api/v1/functions/${encodeURIComponent(f.name)}`),
        usageWindow(f.name, 3600),
        usageWindow(f.name, 86400),
      ]);
      const st = full.stats || {};
      const rate = (u) => (u.inv ? fmt.pct(u.cold / u.inv) : "–");
      return `<tr data-fn="${esc(f.name)}">
        <td><a href="#/f/${encodeURIComponent(f.name)}">${esc(f.name)}</a> <span class="muted">r${f.revision}</span></td>
        <td>${esc(f.spec.gpu?.type || "any")} · ${f.spec.gpu?.memory_gb} GB</td>
        <td class="num">${f.spec.instance_concurrency}</td>
        <td class="instances">${stateCounts(f.status)}</td>
        <td class="num">${fmt.num(hour.inv)} / ${fmt.num(day.inv)}</td>
        <td class="num">${fmt.num(hour.cold)} (${rate(hour)}) / ${fmt.num(day.cold)} (${rate(day)})</td>
        <td class="num">${fmt.ms(st.latency_p50_ms)} / ${fmt.ms(st.latency_p99_ms)}</td>
        <td class="num">${fmt.usd(st.cost_usd)}</td></tr>`;
    }));
    tbody.innerHTML = rows.join("");
  }
  await refresh();
  return refresh;
}

// ---------------------------------------------------------------- Deploy / spec editor

const TEMPLATE = `name: my-function
runtime: process                     # or: container (image: ..., port: ...)
command: ["python3", "server.py"]    # your web server; it listens on $PORT
workdir: /path/to/your/app
gpu: {type: tesla-t4, memory_gb: 4}
instance_concurrency: 1
health_check: {path: /health, startup_timeout_s: 600}
scaling: {min_instances: 0, max_instances: 4, idle_timeout_s: 300}
`;

// The line of a dotted field (`gpu.memory_gb`, `command[0]`) in a YAML text: the line of its last
// key found in order, or of its top-level key, so an error can be shown next to its field.
function lineOfField(text, field) {
  const lines = text.split("\n");
  const keys = field.replace(/\[\d+\]/g, "").split(".").filter(Boolean);
  let at = -1;
  for (const key of keys) {
    const re = new RegExp(`(^|[\\s{,])${key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\s*:`);
    const from = Math.max(at, 0);
    const i = lines.findIndex((l, n) => n >= from && re.test(l));
    if (i >= 0) at = i;
  }
  return at;
}

function specEditor(root, initial, onDeployed) {
  const box = h(`<div>
    <div class="editor"><div class="gutter"></div><textarea class="code" spellcheck="false"></textarea></div>
    <div class="row" style="margin-top:8px"><button class="deploy-btn">Deploy</button><span class="deploy-msg"></span></div>
    <ul class="errors"></ul></div>`);
  root.append(box);
  const ta = $("textarea", box);
  const gutter = $(".gutter", box);
  ta.value = initial;
  let errLines = new Set();
  const paintGutter = () => {
    const n = ta.value.split("\n").length;
    gutter.innerHTML = Array.from({ length: n }, (_, i) => `<div class="${errLines.has(i) ? "err" : ""}">${i + 1}</div>`).join("");
    gutter.scrollTop = ta.scrollTop;
  };
  ta.addEventListener("input", () => { errLines = new Set(); paintGutter(); });
  ta.addEventListener("scroll", () => { gutter.scrollTop = ta.scrollTop; });
  paintGutter();
  $(".deploy-btn", box).addEventListener("click", async () => {
    const msg = $(".deploy-msg", box);
    const list = $(".errors", box);
    list.innerHTML = "";
    msg.className = "deploy-msg muted";
    msg.textContent = "deploying… (a container image is pulled first)";
    try {
      const f = await api("POST", "/api/v1/functions", ta.value, "application/yaml");
      msg.className = "deploy-msg ok-msg";
      msg.textContent = `deployed ${f.name}, revision ${f.revision}`;
      errLines = new Set();
      paintGutter();
      onDeployed?.(f);
    } catch (e) {
      msg.className = "deploy-msg bad-msg";
      msg.textContent = "not deployed";
      const details = e.details?.length ? e.details : [{ field: e.field || "(document)", message: e.message }];
      errLines = new Set();
      for (const d of details) {
        const line = lineOfField(ta.value, d.field);
        if (line >= 0) errLines.add(line);
        list.append(h(`<li data-field="${esc(d.field)}"><code>${esc(d.field)}</code>: ${esc(d.message)}${line >= 0 ? ` <span class="muted">(line ${line + 1})</span>` : ""}</li>`));
      }
      paintGutter();
    }
  });
  return box;
}

async function deployView(root) {
  root.append(h(`<div><h1>Deploy a function</h1>
    <div class="panel"><p class="muted" style="margin-top:0">The spec as in <code>gpufn.yaml</code>. Every broken rule is listed with its field.</p><div id="editor"></div></div></div>`));
  specEditor($("#editor", root), TEMPLATE, (f) => { location.hash = `#/f/${encodeURIComponent(f.name)}`; });
  return null;
}

// ---------------------------------------------------------------- Function page

const PHASES = [
  ["gpu_allocate_ms", "GPU allocate", "var(--p1)"],
  ["image_pull_ms", "image pull", "var(--p2)"],
  ["start_ms", "start", "var(--p3)"],
  ["ready_ms", "ready (app load)", "var(--p4)"],
  ["initialize_ms", "initializer", "var(--p6)"],
  ["first_response_ms", "first response", "var(--p5)"],
];

function chart(el, id, title, series, data) {
  const opts = {
    title, width: Math.max(el.clientWidth - 8, 300), height: 200,
    scales: { x: { time: true } },
    series: [{}, ...series],
    axes: [{}, { size: 50 }],
  };
  const plot = new uPlot(opts, data, el);
  window.gpufnCharts[id] = plot;
  return plot;
}

async function functionView(root, name) {
  const enc = encodeURIComponent(name);
  root.append(h(`<div>
    <div class="row"><h1 style="flex:1;margin:0">${esc(name)} <span class="muted" id="rev"></span></h1>
      <span id="fn-state"></span><button class="secondary needs-deploy" id="delete-btn">Delete</button></div>
    <div class="grid">
      <div class="panel"><h2>Requests and cold starts (last 30 min)</h2><div id="chart-requests"></div></div>
      <div class="panel"><h2>Billed GB-seconds (last 30 min)</h2><div id="chart-gbs"></div></div>
    </div><div style="height:16px"></div>
    <div class="grid">
      <div class="panel"><h2>Instances</h2><table id="inst-table"><thead><tr><th>Instance</th><th>State</th>
        <th class="num">Card</th><th class="num">In flight</th><th class="num">Served</th><th>Started</th></tr></thead><tbody></tbody></table>
        <dl class="kv" id="stats" style="margin-top:12px"></dl></div>
      <div class="panel"><h2>Cold-start phases (latest first)</h2>
        <div class="legend">${PHASES.map(([, l, c]) => `<span><i style="background:${c}"></i>${l}</span>`).join("")}</div>
        <div id="phases"><span class="muted">no cold starts yet</span></div></div>
    </div><div style="height:16px"></div>
    <div class="grid">
      <div class="panel needs-invoke" id="invoke-panel"><h2>Invoke</h2>
        <div class="row"><select id="inv-method"><option>GET</option><option>POST</option><option>PUT</option><option>DELETE</option></select>
          <input id="inv-path" value="/" style="flex:1" placeholder="/path?query">
          <button id="inv-send">Send</button></div>
        <textarea id="inv-headers" class="code" style="min-height:40px" placeholder="content-type: application/json"></textarea>
        <textarea id="inv-body" class="code" style="min-height:70px;margin-top:6px" placeholder="request body"></textarea>
        <div id="inv-result" style="margin-top:8px"></div></div>
      <div class="panel needs-deploy"><h2>Spec</h2><div id="spec-editor"></div></div>
    </div><div style="height:16px"></div>
    <div class="grid">
      <div class="panel"><h2>Recent async tasks</h2><table id="task-table"><thead><tr><th>Task</th><th>State</th>
        <th class="num">Attempts</th><th>Created</th></tr></thead><tbody></tbody></table></div>
      <div class="panel"><h2>Instance logs</h2><div class="row"><select id="log-inst"></select><button class="secondary" id="log-load">Show</button></div>
        <pre id="log-text" class="muted">choose an instance</pre></div>
    </div></div>`));

  let f;
  try {
    f = await api("GET", `/api/v1/functions/${enc}`);
  } catch (e) {
    root.innerHTML = `<div class="panel bad-msg">${esc(e.message)}</div>`;
    return null;
  }
  // Unset optional fields come back as null; leave them out of what the user edits.
  const prune = (v) => (Array.isArray(v) ? v.map(prune)
    : v && typeof v === "object" ? Object.fromEntries(Object.entries(v).filter(([, x]) => x !== null).map(([k, x]) => [k, prune(x)]))
    : v);
  const yaml = window.jsyaml.dump(prune(f.spec), { lineWidth: 100, noRefs: true });
  specEditor($("#spec-editor", root), yaml, () => refresh());

  $("#delete-btn", root).addEventListener("click", async () => {
    if (!confirm(`Delete ${name}? Requests in flight finish; instances stop.`)) return;
    await api("DELETE", `/api/v1/functions/${enc}`);
    location.hash = "#/";
  });

  $("#inv-send", root).addEventListener("click", async () => {
    const out = $("#inv-result", root);
    const method = $("#inv-method", root).value;
    let path = $("#inv-path", root).value.trim() || "/";
    if (!path.startsWith("/")) path = "/" + path;
    const headers = {};
    for (const line of $("#inv-headers", root).value.split("\n")) {
      const i = line.indexOf(":");
      if (i > 0) headers[line.slice(0, i).trim()] = line.slice(i + 1).trim();
    }
    const body = $("#inv-body", root).value;
    out.innerHTML = '<span class="muted">waiting… (a cold start can take a while)</span>';
    const t0 = performance.now();
    try {
      const r = await fetch(`/function/${enc}${path}`, { method, headers: authHeaders(headers), body: method === "GET" || method === "DELETE" ? undefined : body });
      const text = await r.text();
      const ms = performance.now() - t0;
      const cold = r.headers.get("x-gpufn-cold-start") === "true";
      const hdrs = [...r.headers.entries()].map(([k, v]) => `${k}: ${v}`).join("\n");
      out.innerHTML = `<div class="row"><b class="inv-status ${r.ok ? "ok-msg" : "bad-msg"}">${r.status} ${esc(r.statusText)}</b>
        <span class="pill ${cold ? "cold" : "warm"} inv-cold">${cold ? "cold start" : "warm"}</span>
        <span class="muted">${fmt.ms(ms)} · instance ${esc(r.headers.get("x-gpufn-instance-id") || "–")}</span></div>
        <pre class="inv-headers">${esc(hdrs)}</pre><pre class="inv-body" style="margin-top:6px">${esc(text.slice(0, 20000))}</pre>`;
      refresh();
    } catch (e) {
      out.innerHTML = `<span class="bad-msg">${esc(e.message)}</span>`;
    }
  });

  $("#log-load", root).addEventListener("click", async () => {
    const id = $("#log-inst", root).value;
    if (!id) return;
    const r = await fetch(`/api/v1/functions/${enc}/instances/${encodeURIComponent(id)}/logs?tail=200`, { headers: authHeaders() });
    $("#log-text", root).textContent = await r.text();
    $("#log-text", root).className = "";
  });

  let reqChart = null;
  let gbChart = null;
  const knownInstances = new Set();

  async function refresh() {
    const now = Math.floor(Date.now() / 1000);
    const [full, insts, usage, colds, tasks] = await Promise.all([
      api("GET", `/api/v1/functions/${enc}`),
      api("GET", `/api/v1/functions/${enc}/instances`),
      api("GET", `/api/v1/functions/${enc}/usage?from=${now - 1800}&to=${now + 30}&step_s=30`),
      api("GET", `/api/v1/functions/${enc}/cold-starts?limit=10`),
      api("GET", `/api/v1/tasks?function=${enc}&limit=10`),
    ]);
    $("#rev", root).textContent = `revision ${full.revision}`;
    $("#fn-state", root).innerHTML = stateCounts(full.status);
    const st = full.stats || {};
    $("#stats", root).innerHTML = `
      <dt>Invocations</dt><dd>${fmt.num(st.invocations)}</dd>
      <dt>Cold starts</dt><dd class="cold-count">${fmt.num(st.cold_starts)} (${fmt.pct(st.cold_start_rate)})</dd>
      <dt>Latency p50 / p99</dt><dd>${fmt.ms(st.latency_p50_ms)} / ${fmt.ms(st.latency_p99_ms)}</dd>
      <dt>Cold start p50 / p99</dt><dd>${fmt.ms(st.cold_start_p50_ms)} / ${fmt.ms(st.cold_start_p99_ms)}</dd>
      <dt>Billed</dt><dd>${fmt.num(st.billed_seconds)} s · ${(st.gb_seconds ?? 0).toFixed(0)} GB-s</dd>
      <dt>Cost so far</dt><dd>${fmt.usd(st.cost_usd)}</dd>${full.status.keep_alive
        ? `<dt>Keep-alive</dt><dd class="keep-alive">${esc(full.status.keep_alive)}</dd>` : ""}${full.status.provisioning
        ? `<dt>Provisioned</dt><dd class="provisioning">${fmt.num(full.status.min_instances)} now: ${esc(full.status.provisioning)}</dd>` : ""}${(full.spec?.scaling?.schedules || []).length
        ? `<dt>Schedules</dt><dd class="schedules">${full.spec.scaling.schedules.map((x) =>
            `${esc(x.name)}: <code>${esc(x.cron)}</code> ${esc(x.timezone || "UTC")} → ${fmt.num(x.min_instances)}`).join("<br>")}</dd>` : ""}`;
    $("#inst-table tbody", root).innerHTML = insts.length
      ? insts.map((i) => `<tr><td>${esc(i.id)}</td><td><span class="pill ${i.state}">${i.state}</span></td>
          <td class="num">${i.gpu}</td><td class="num">${i.in_flight}</td><td class="num">${i.served}</td>
          <td>${fmt.time(i.started_at)}</td></tr>`).join("")
      : `<tr><td colspan="6" class="muted no-instances">no instances (scaled to zero)</td></tr>`;
    for (const i of insts) knownInstances.add(i.id);
    for (const c of colds) knownInstances.add(c.instance);
    const sel = $("#log-inst", root);
    if (sel.options.length !== knownInstances.size) {
      const cur = sel.value;
      sel.innerHTML = [...knownInstances].map((id) => `<option>${esc(id)}</option>`).join("");
      if (cur) sel.value = cur;
    }
    // Phases: one stacked bar per cold start, scaled to the slowest.
    if (colds.length) {
      const max = Math.max(...colds.map((c) => PHASES.reduce((a, [k]) => a + (c[k] || 0), 0)), 1);
      $("#phases", root).innerHTML = colds.map((c) => {
        const total = PHASES.reduce((a, [k]) => a + (c[k] || 0), 0);
        const parts = PHASES.map(([k, l, col]) => `<span title="${l}: ${fmt.ms(c[k])}" style="width:${(100 * (c[k] || 0)) / max}%;background:${col}"></span>`).join("");
        return `<div class="phase-row" style="margin-bottom:8px"><div class="row" style="margin:0 0 2px;font-size:12px"><span>${esc(c.instance)}</span>
          <span class="muted">${fmt.time(c.at)} · ${fmt.ms(total)}</span></div><div class="stack">${parts}</div></div>`;
      }).join("");
    }
    $("#task-table tbody", root).innerHTML = tasks.length
      ? tasks.map((t) => `<tr><td>${esc(t.task_id)}</td><td>${esc(t.state)}</td><td class="num">${t.attempts}</td><td>${fmt.time(t.created_at)}</td></tr>`).join("")
      : `<tr><td colspan="4" class="muted">no tasks</td></tr>`;
    // Charts.
    const xs = usage.buckets.map((b) => b.t_ms / 1000);
    const reqData = [xs, usage.buckets.map((b) => b.invocations), usage.buckets.map((b) => b.cold_starts)];
    const gbData = [xs, usage.buckets.map((b) => b.gb_seconds)];
    if (!reqChart) {
      reqChart = chart($("#chart-requests", root), "requests", "", [
        { label: "requests", stroke: "#4c6ef5", fill: "rgba(76,110,245,.12)", points: { show: false } },
        { label: "cold starts", stroke: "#e67700", width: 2, points: { show: true, size: 6 } },
      ], reqData);
      gbChart = chart($("#chart-gbs", root), "gb_seconds", "", [
        { label: "GB-s", stroke: "#2b8a3e", fill: "rgba(43,138,62,.12)", points: { show: false } },
      ], gbData);
    } else {
      reqChart.setData(reqData);
      gbChart.setData(gbData);
    }
  }
  await refresh();
  return refresh;
}

// ---------------------------------------------------------------- GPUs and quota

async function gpusView(root) {
  root.append(h(`<div><h1>GPUs and quota</h1>
    <div class="panel"><h2>Quota</h2><div class="row">
      <span>GPU-card quota</span><input id="quota-input" type="number" min="0" style="width:90px">
      <button id="quota-save" class="needs-administer">Save</button><span id="quota-msg" class="muted"></span></div>
      <div id="quota-used" class="muted"></div></div>
    <div class="panel"><h2>Cards</h2><table id="gpu-table"><thead><tr><th class="num">Card</th><th>Type</th>
      <th class="num">Memory</th><th class="num">Billed GB</th><th>Instance</th><th>Function</th><th></th></tr></thead><tbody></tbody></table></div></div>`));
  const q0 = await api("GET", "/api/v1/quota");
  $("#quota-input", root).value = q0.cards;
  $("#quota-save", root).addEventListener("click", async () => {
    const msg = $("#quota-msg", root);
    try {
      const q = await api("PUT", "/api/v1/quota", { cards: Number($("#quota-input", root).value) });
      msg.className = "ok-msg";
      msg.textContent = `saved: ${q.cards} cards`;
    } catch (e) {
      msg.className = "bad-msg";
      msg.textContent = e.message;
    }
    refresh();
  });
  async function refresh() {
    const [gpus, q] = await Promise.all([api("GET", "/api/v1/gpus"), api("GET", "/api/v1/quota")]);
    $("#quota-used", root).textContent = `${q.used} of ${q.cards} cards in use; ${q.total_cards} cards on this machine`;
    $("#gpu-table tbody", root).innerHTML = gpus.map((g) => `<tr><td class="num">${g.index}</td><td>${esc(g.type)}</td>
      <td class="num">${g.memory_gb} GB</td><td class="num">${g.allocated_gb || 0}</td>
      <td>${esc(g.instance || "–")}</td><td>${g.function ? `<a href="#/f/${encodeURIComponent(g.function)}">${esc(g.function)}</a>` : "–"}</td>
      <td>${g.simulated ? '<span class="pill">simulated</span>' : ""}</td></tr>`).join("");
  }
  await refresh();
  return refresh;
}

// ---------------------------------------------------------------- Cost

async function costView(root) {
  root.append(h(`<div><h1>Cost: serverless vs a dedicated GPU server</h1>
    <div class="panel"><div class="row">
      <label>Invocations / day <input id="c-inv" type="number" min="0" value="3600" style="width:110px"></label>
      <label>Duration (s) <input id="c-dur" type="number" min="0" step="0.1" value="1" style="width:80px"></label>
      <label>GPU memory (GB) <input id="c-gb" type="number" min="1" value="4" style="width:70px"></label>
      <label>Dedicated USD / hour <input id="c-ded" type="number" min="0" step="0.1" value="2" style="width:80px"></label>
      <button id="c-go">Estimate</button></div>
      <div class="row"><span class="muted">The product document's examples:</span>
        <button class="secondary" id="c-ex1">Example 1: 3 600 calls/day</button>
        <button class="secondary" id="c-ex2">Example 2: 50 000 calls/day</button></div></div>
    <div class="grid"><div class="panel"><h2>Per day</h2><dl class="kv" id="c-out"></dl></div>
      <div class="panel"><h2>What it means</h2><p id="c-words"></p></div></div></div>`));
  async function go() {
    const q = new URLSearchParams({
      invocations: $("#c-inv", root).value, duration_s: $("#c-dur", root).value,
      gpu_memory_gb: $("#c-gb", root).value, dedicated_usd_per_hour: $("#c-ded", root).value,
    });
    try {
      const e = await api("GET", `/api/v1/estimate?${q}`);
      $("#c-out", root).innerHTML = `
        <dt>Serverless (gpufn)</dt><dd class="big c-serverless">$${e.serverless_usd_per_day.toFixed(4)}</dd>
        <dt>Dedicated server</dt><dd class="big c-dedicated">$${e.dedicated_usd_per_day.toFixed(2)}</dd>
        <dt>GPU utilization</dt><dd>${e.gpu_utilization_pct.toFixed(2)} %</dd>
        <dt>Saving</dt><dd class="c-saving">${e.saving_pct.toFixed(2)} %</dd>
        <dt>Break-even</dt><dd>${Math.round(e.break_even_invocations_per_day).toLocaleString()} invocations / day</dd>`;
      $("#c-words", root).textContent = e.saving_pct >= 0
        ? `Paying per GB-second saves ${e.saving_pct.toFixed(1)} % against keeping a card all day; it stays cheaper up to ${Math.round(e.break_even_invocations_per_day).toLocaleString()} invocations a day.`
        : `At this load a dedicated card is cheaper: serverless costs ${(-e.saving_pct).toFixed(1)} % more.`;
    } catch (err) {
      $("#c-out", root).innerHTML = `<dd class="bad-msg">${esc(err.message)}</dd>`;
    }
  }
  const example = (n) => () => {
    $("#c-inv", root).value = n; $("#c-dur", root).value = 1; $("#c-gb", root).value = 4; $("#c-ded", root).value = 2;
    go();
  };
  $("#c-go", root).addEventListener("click", go);
  $("#c-ex1", root).addEventListener("click", example(3600));
  $("#c-ex2", root).addEventListener("click", example(50000));
  await go();
  return null;
}

// ---------------------------------------------------------------- Router

let timer = null;

function showLogin(reason) {
  clearInterval(timer);
  window.gpufnCharts = {};
  document.body.dataset.ready = "login";
  document.body.dataset.can = "";
  $("#who").textContent = "";
  $("#logout").hidden = true;
  view.innerHTML = "";
  const root = h(`<div class="panel login"><h1>Sign in</h1>
    <p class="muted">Paste an API token. The first admin token is in <code>&lt;data-dir&gt;/admin.token</code>
    on the gpufn machine; <code>gpufn token create --role viewer</code> makes others.</p>
    <form id="login-form" class="row"><input id="login-token" type="password" autocomplete="off" placeholder="gpufn_..." style="flex:1">
    <button type="submit">Sign in</button></form>
    <div id="login-msg" class="bad-msg">${esc(reason && reason !== "this call needs a token: send Authorization: Bearer <token> (gpufn token create, or <data-dir>/admin.token)" ? reason : "")}</div></div>`);
  view.append(root);
  $("#login-form", root).addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("#login-token", root).value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    me = null;
    route();
  });
}

async function whoami() {
  if (me) return me;
  me = await api("GET", "/api/v1/whoami");
  $("#who").textContent = `${me.role}${me.functions ? ` · ${me.functions}*` : ""} · token ${me.token_id}`;
  $("#logout").hidden = false;
  document.body.dataset.can = Object.keys(me.can).filter((k) => me.can[k]).join(" ");
  // Show only what the token may use.
  for (const a of document.querySelectorAll("header nav a")) {
    const need = a.dataset.need;
    a.hidden = need ? !me.can[need] : false;
  }
  return me;
}

async function route() {
  clearInterval(timer);
  window.gpufnCharts = {};
  view.innerHTML = "";
  takeTokenFromHash();
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    showLogin();
    return;
  }
  try {
    await whoami();
  } catch (e) {
    if (e.status !== 401) view.innerHTML = `<div class="panel bad-msg">${esc(e.message)}</div>`;
    return;
  }
  const hash = location.hash || "#/";
  const root = document.createElement("div");
  view.append(root);
  let nav = "functions";
  let load;
  if (hash.startsWith("#/f/")) load = () => functionView(root, decodeURIComponent(hash.slice(4)));
  else if (hash === "#/deploy") { nav = "deploy"; load = () => deployView(root); }
  else if (hash === "#/gpus") { nav = "gpus"; load = () => gpusView(root); }
  else if (hash === "#/cost") { nav = "cost"; load = () => costView(root); }
  else load = () => functionsView(root);
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.nav === nav);
  try {
    const refresh = await load();
    document.body.dataset.ready = hash;
    if (refresh) {
      timer = setInterval(() => refresh().catch((e) => { $("#server-status").textContent = e.message; }), REFRESH_MS);
    }
  } catch (e) {
    if (e.status !== 401) root.innerHTML = `<div class="panel bad-msg">${esc(e.message)}</div>`;
  }
}

$("#logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  showLogin();
});
window.addEventListener("hashchange", route);
route();
