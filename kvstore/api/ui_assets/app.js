// kvstore /ui: polls /v1/stats and /v1/pod/stats, keeps the last minutes in memory, draws SVG.
// No build step, no library, no network beyond this server. With credentials on (production
// mode) it signs its GETs with SigV4 (sigv4.js) from an access key id and secret typed into the
// sign-in form and kept in this tab's sessionStorage; the secret itself is never sent.
"use strict";

const PERIOD_MS = 2000;
const WINDOW_S = 300;
const CREDS_KEY = "kvstore-ui-credentials";
const REGION = (document.querySelector('meta[name="kvstore-region"]') || {}).content || "us-east-1";
const samples = []; // {t, stats, ops}
let clockOffsetMs = 0; // server time - this clock, learnt from a RequestTimeTooSkewed answer
let stopped = false; // signed out or refused: no polling until the form is sent again
let epoch = 0; // bumped by sign-in and sign-out: answers to requests sent before are dropped

function $(id) { return document.getElementById(id); }

function fmtBytes(n) {
  if (!isFinite(n)) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}
function fmtRate(bytesPerS) { return (bytesPerS / 1e6).toFixed(1) + " MB/s"; }
function fmtPct(x) { return x === null ? "-" : (100 * x).toFixed(1) + "%"; }
function fmtMs(s) {
  if (s === null) return "-";
  return s === Infinity ? "> 10 s" : "≤ " + (1000 * s).toFixed(2) + " ms";
}
function fmtInt(n) { return Number(n).toLocaleString("en-US"); }
function fmtDuration(s) {
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = Math.floor(s % 60);
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + r + "s";
}

// The q-quantile of a histogram given as [[le, count], ...] (counts per bucket, not cumulative)
// with `total` operations: the upper bound of the bucket where the quantile falls.
function quantile(buckets, total, q) {
  if (total <= 0) return null;
  let seen = 0;
  for (const [le, n] of buckets) {
    seen += n;
    if (seen >= q * total) return le;
  }
  return Infinity;
}

// Interval figures of a kind of operation ("get", "put", "lookup": every front end's op whose
// name ends so, e.g. S3 "get" and bulk "bulk_get") between two /v1/stats answers.
function opWindow(prev, cur, kind) {
  let count = 0, bytes = 0, buckets = null;
  for (const [op, b] of Object.entries(cur.ops)) {
    if (op !== kind && !op.endsWith("_" + kind)) continue;
    const a = prev && prev.ops[op];
    count += b.count - (a ? a.count : 0);
    bytes += b.bytes - (a ? a.bytes : 0);
    const per = b.buckets.map(([le, c], i) => {
      const before = a ? a.buckets[i][1] : 0, below = i ? b.buckets[i - 1][1] : 0;
      const belowBefore = a && i ? a.buckets[i - 1][1] : 0;
      return [le, (c - below) - (before - belowBefore)];
    });
    buckets = buckets ? buckets.map(([le, n], i) => [le, n + per[i][1]]) : per;
  }
  return { count, bytes, p50: buckets ? quantile(buckets, count, 0.5) : null,
           p99: buckets ? quantile(buckets, count, 0.99) : null };
}

function hitRate(prev, cur) {
  const d = (k) => cur.stats[k] - (prev ? prev.stats[k] : 0);
  const hits = d("hits_dram") + d("hits_flash"), misses = d("misses");
  return hits + misses > 0 ? hits / (hits + misses) : null;
}

function drawChart(svg, series, opts) {
  // series: [[{t, v}], ...]; plain SVG polylines over the window
  const W = 400, H = 120, now = Date.now() / 1000;
  let max = opts.max || 0;
  for (const s of series) for (const p of s) if (p.v !== null && p.v > max) max = p.v;
  if (max <= 0) max = 1;
  const parts = [];
  series.forEach((s, i) => {
    const pts = s.filter((p) => p.v !== null && isFinite(p.v))
      .map((p) => [W * (1 - (now - p.t) / WINDOW_S), H - 4 - (H - 16) * (p.v / max)])
      .filter(([x]) => x >= 0)
      .map(([x, y]) => x.toFixed(1) + "," + y.toFixed(1));
    parts.push(`<polyline class="l${i}" points="${pts.join(" ")}"/>`);
  });
  parts.push(`<text x="2" y="10">${opts.label(max)}</text>`);
  svg.innerHTML = parts.join("");
}

function render(pod) {
  const cur = samples[samples.length - 1], prev = samples.length > 1 ? samples[samples.length - 2] : null;
  const st = cur.stats;
  $("ready").textContent = cur.ready ? "ready" : "not ready";
  $("ready").className = "pill " + (cur.ready ? "ok" : "bad");
  $("device").textContent = cur.device;
  $("uptime").textContent = fmtDuration(cur.uptime);
  $("refreshed").textContent = new Date().toLocaleTimeString();
  $("flash-used").textContent = fmtBytes(st.flash_used_bytes);
  $("flash-capacity").textContent = fmtBytes(st.flash_capacity_bytes);
  $("flash-bar").style.width = (100 * st.flash_used_bytes / st.flash_capacity_bytes) + "%";
  $("dram-used").textContent = fmtBytes(st.dram_used_bytes);
  $("dram-capacity").textContent = fmtBytes(st.dram_capacity_bytes);
  $("dram-bar").style.width = (100 * st.dram_used_bytes / Math.max(1, st.dram_capacity_bytes)) + "%";
  $("blocks").textContent = fmtInt(st.blocks);
  $("blocks").dataset.value = st.blocks;
  $("namespaces-count").textContent = fmtInt(st.namespaces);
  $("evicted-blocks").textContent = fmtInt(st.evicted_blocks);
  const total = st.hits_dram + st.hits_flash + st.misses;
  $("hit-rate-total").textContent = fmtPct(total ? (st.hits_dram + st.hits_flash) / total : null);
  const dt = prev ? cur.t - prev.t : cur.uptime;
  const hr = hitRate(prev, cur);
  $("hit-rate").textContent = hr === null ? "no reads" : fmtPct(hr);
  const read = (st.bytes_read - (prev ? prev.stats.bytes_read : 0)) / Math.max(dt, 1e-3);
  const written = (st.bytes_written - (prev ? prev.stats.bytes_written : 0)) / Math.max(dt, 1e-3);
  $("read-rate").textContent = fmtRate(read);
  $("write-rate").textContent = fmtRate(written);
  const get = opWindow(prev, cur, "get"), put = opWindow(prev, cur, "put");
  $("ops-rate").textContent = (get.count / Math.max(dt, 1e-3)).toFixed(0) + " GET/s, " +
    (put.count / Math.max(dt, 1e-3)).toFixed(0) + " PUT/s";
  $("get-p50").textContent = fmtMs(get.p50);
  $("get-p99").textContent = fmtMs(get.p99);
  $("lookup-p99").textContent = fmtMs(opWindow(prev, cur, "lookup").p99);
  if (prev) cur.window = { hr, read, written, p50: get.p50, p99: get.p99 };

  const rows = Object.entries(cur.namespaces).sort((a, b) => b[1].bytes - a[1].bytes);
  $("ns-table").tBodies[0].innerHTML = rows.map(([name, u]) =>
    `<tr data-ns="${name}"><td>${name}</td><td class="num" data-blocks="${u.blocks}">` +
    `${fmtInt(u.blocks)}</td><td class="num" data-bytes="${u.bytes}">${fmtBytes(u.bytes)}</td>` +
    `<td class="num">${fmtPct(u.bytes / st.flash_capacity_bytes)}</td></tr>`).join("");

  const w = samples.filter((s) => s.window);
  drawChart($("chart-hit"), [w.map((s) => ({ t: s.t, v: s.window.hr }))],
            { max: 1, label: () => "100%" });
  drawChart($("chart-tput"), [w.map((s) => ({ t: s.t, v: s.window.read / 1e6 })),
                              w.map((s) => ({ t: s.t, v: s.window.written / 1e6 }))],
            { label: (m) => m.toFixed(1) + " MB/s" });
  drawChart($("chart-lat"), [w.map((s) => ({ t: s.t, v: s.window.p50 === null ? null : 1e3 * s.window.p50 })),
                             w.map((s) => ({ t: s.t, v: s.window.p99 === null ? null : 1e3 * s.window.p99 }))],
            { label: (m) => m.toFixed(2) + " ms" });

  if (pod && pod.kind !== "none") {
    $("pod-section").hidden = false;
    $("node").textContent = "node " + pod.self;
    $("pod-kind").textContent = "(" + pod.kind + ", " + pod.nodes.length + " nodes)";
    $("pod-table").tBodies[0].innerHTML = pod.nodes.map((n) =>
      `<tr data-node="${n.node_id}" data-blocks="${n.reachable ? n.blocks : ""}">` +
      `<td>${n.self ? "<b>" + n.node_id + "</b>" : n.node_id}</td>` +
      `<td><a href="${n.http}/ui">${n.http}</a></td>` +
      (n.reachable
        ? `<td class="num">${fmtInt(n.blocks)}</td>` +
          `<td class="num">${fmtBytes(n.flash_used_bytes)} / ${fmtBytes(n.capacity_bytes)}</td>` +
          `<td class="num">${fmtPct(n.hit_rate)}</td>` +
          `<td class="num">${fmtInt(n.forwarded_requests)}</td><td>up</td>`
        : `<td></td><td></td><td></td><td></td><td class="error">${n.error || "unreachable"}</td>`) +
      `</tr>`).join("");
  } else {
    $("node").textContent = location.host;
  }
}

class HttpError extends Error {
  constructor(path, status, name, message) {
    super(path + ": HTTP " + status + (name ? " " + name : "") + (message ? ": " + message : ""));
    this.status = status;
  }
}

function loadCreds() {
  try {
    const c = JSON.parse(sessionStorage.getItem(CREDS_KEY));
    return c && c.accessKey && c.secret ? c : null;
  } catch (e) {
    return null;
  }
}

async function getJSON(path, retried) {
  const creds = loadCreds();
  let headers = {};
  if (creds) {
    if (!SigV4.available()) throw new Error(INSECURE);
    headers = await SigV4.headers(creds, REGION, path, location.host,
                                  new Date(Date.now() + clockOffsetMs));
  }
  const r = await fetch(path, { cache: "no-store", credentials: "omit", headers });
  if (!r.ok) {
    let name = "", message = "";
    try {
      const body = await r.json();
      name = body.error.name;
      message = body.error.message;
    } catch (e) { /* not a kvstore error body */ }
    const date = r.headers.get("date");
    if (name === "RequestTimeTooSkewed" && !retried && date) {
      clockOffsetMs = Date.parse(date) - Date.now(); // sign again on the server's clock
      return getJSON(path, true);
    }
    throw new HttpError(path, r.status, name, message);
  }
  return r.json();
}

const INSECURE = "This page cannot sign requests here: the browser offers WebCrypto " +
  "(crypto.subtle) only in a secure context, i.e. https, or http on localhost or 127.0.0.1. " +
  "Open it over https (kvstore serve --tls-cert/--tls-key), through an SSH tunnel to " +
  "localhost, or use a server in development mode.";

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

// Refused (no credentials, or wrong ones): no data on the page, the form, and the reason.
function refused(e) {
  const creds = loadCreds();
  stopped = true;
  samples.length = 0;
  $("data").hidden = true;
  delete document.body.dataset.loaded;
  sessionStorage.removeItem(CREDS_KEY); // a refused secret is not kept
  if (creds) $("access-key").value = creds.accessKey;
  $("secret-key").value = "";
  $("signin").hidden = false;
  $("signout").hidden = true;
  $("auth-status").textContent = "not signed in";
  const insecure = !SigV4.available();
  for (const el of $("signin").elements) el.disabled = insecure;
  document.body.dataset.auth = insecure ? "insecure" : creds ? "failed" : "required";
  showError(insecure ? INSECURE + " (" + e.message + ")"
                     : (creds ? "Sign-in refused: " : "This server asks for credentials: ") +
                       e.message);
}

async function tick() {
  if (stopped) return;
  const mine = epoch;
  try {
    const [s, pod] = await Promise.all([getJSON("/v1/stats"),
                                        getJSON("/v1/pod/stats").catch(() => null)]);
    if (stopped || mine !== epoch) return; // signed in or out while these were on their way
    samples.push({ t: Date.now() / 1000, stats: s.stats, ops: s.ops, namespaces: s.namespaces,
                   ready: s.ready, device: s.device, uptime: s.uptime_seconds });
    while (samples.length && samples[0].t < Date.now() / 1000 - WINDOW_S) samples.shift();
    $("data").hidden = false;
    render(pod);
    const creds = loadCreds();
    $("signin").hidden = true;
    $("signout").hidden = !creds;
    $("auth-status").textContent = creds ? "signed in as " + creds.accessKey
                                         : "development mode: no credentials needed";
    document.body.dataset.auth = creds ? "signed" : "open";
    $("error").hidden = true;
    document.body.dataset.loaded = "1";
  } catch (e) {
    if (mine !== epoch) return;
    if (e instanceof HttpError && (e.status === 401 || e.status === 403)) refused(e);
    else showError(String(e.message || e));
  }
}

$("signin").addEventListener("submit", (ev) => {
  ev.preventDefault(); // the inputs have no names: even a real submit would carry nothing
  const accessKey = $("access-key").value.trim(), secret = $("secret-key").value;
  if (!accessKey || !secret) return showError("Give an access key id and a secret key.");
  sessionStorage.setItem(CREDS_KEY, JSON.stringify({ accessKey, secret }));
  $("secret-key").value = "";
  stopped = false;
  epoch++;
  tick();
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(CREDS_KEY);
  stopped = false;
  epoch++;
  samples.length = 0;
  tick();
});

$("period").textContent = PERIOD_MS / 1000;
$("window").textContent = WINDOW_S / 60;
tick();
setInterval(tick, PERIOD_MS);
