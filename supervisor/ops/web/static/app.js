// The status page: polls /api/state and /api/logs, renders with textContent only (a prompt
// or a log line is text, never markup), and offers the actions once the operator has given
// the action secret, which it keeps for this tab only and sends in a header, never a URL.
"use strict";

const STATE_POLL_MS = 1000;
const LOG_POLL_MS = 2000;
const LOG_KEEP = 1000;
const SECRET_KEY = "studio-worker-action-secret";
const SECRET_HEADER = "X-Worker-Secret";

let secret = sessionStorage.getItem(SECRET_KEY);
let unlocked = false;
let lastState = null;
let logAfter = 0;
let logLines = [];

const $ = (id) => document.getElementById(id);

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fillTable(id, items, fill, empty) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  if (!items.length) {
    const row = body.insertRow();
    const td = cell(row, empty, "muted");
    td.colSpan = $(id).querySelectorAll("th").length;
    return;
  }
  for (const item of items) fill(body.insertRow(), item);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function clock(unix) {
  return new Date(unix * 1000).toLocaleTimeString();
}

function sessionText(lane, extra) {
  if (lane.ended) return `stopped: ${lane.ended}`;
  const attempt = extra && extra.reconnect_attempt;
  if (lane.session !== "welcomed" && attempt) return `reconnecting (attempt ${attempt}, ${lane.session})`;
  return lane.session;
}

function overall(state) {
  const s = state.status;
  if (s.shutting_down) return ["shutting down", "warn"];
  if (!s.lanes.some((l) => l.session === "welcomed")) return ["disconnected", "bad"];
  if (s.paused) return ["paused", "warn"];
  return state.jobs.length ? ["busy", "busy"] : ["idle", "ok"];
}

function renderHeader(state) {
  const [text, cls] = overall(state);
  $("overall").textContent = text;
  $("overall").className = `badge ${cls}`;
  $("version").textContent = state.version;
  const s = state.status;
  $("worker").textContent = `worker ${s.worker_id || "(not registered)"} · pid ${s.pid}`;
  $("unlock").hidden = !state.actions || unlocked;
  $("lock").hidden = !unlocked;
  if (state.secret_file) $("secret-hint").textContent = `the file ${state.secret_file} on the worker`;
}

function renderLanes(state) {
  const extras = Object.fromEntries(state.lanes.map((l) => [l.name, l]));
  fillTable("lanes", state.status.lanes, (row, lane) => {
    const extra = extras[lane.name] || {};
    row.dataset.lane = lane.name;
    cell(row, lane.name);
    cell(row, lane.worker_id);
    cell(row, sessionText(lane, extra), lane.session === "welcomed" ? "ok" : "warn");
    cell(row, lane.paused ? "paused" : "accepting", lane.paused ? "warn" : "");
    cell(row, lane.seconds_since_heartbeat_ack === null ? "–" : seconds(lane.seconds_since_heartbeat_ack));
    cell(row, lane.reconnects);
    cell(row, extra.vram_threshold_gb === null || extra.vram_threshold_gb === undefined ? "–" : `${extra.vram_threshold_gb} GB`);
    cell(row, lane.slots.join(", "));
  }, "no lanes");
  renderLaneChoice(state);
}

function renderLaneChoice(state) {
  const select = $("action-lane");
  if (!select) return;
  const names = state.status.lanes.map((l) => l.name);
  const have = Array.from(select.options).slice(1).map((o) => o.value);
  if (names.join() !== have.join()) {
    while (select.options.length > 1) select.remove(1);
    for (const name of names) select.add(new Option(name, name));
  }
  const gb = $("threshold-gb");
  const current = state.lanes.length ? state.lanes[0].vram_threshold_gb : null;
  if (gb.value === "" && document.activeElement !== gb && current !== null) gb.value = current;
  select.hidden = names.length < 2;
  select.labels.forEach((label) => { label.hidden = names.length < 2; });
}

function renderJobs(state) {
  const box = $("jobs");
  box.replaceChildren();
  if (!state.jobs.length) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "none";
    box.appendChild(p);
    return;
  }
  for (const job of state.jobs) {
    const div = document.createElement("div");
    div.className = "job";
    div.dataset.jobId = job.job_id;
    const head = document.createElement("div");
    head.className = "job-head";
    head.textContent = `${job.job_id} · ${job.kind} · ${job.model} · ${job.slot} · ${seconds(job.running_s)}`;
    const bar = document.createElement("progress");
    bar.className = "bar";
    bar.max = Math.max(1, job.total);
    bar.value = Math.min(job.step, bar.max);
    bar.dataset.step = job.step;
    bar.dataset.total = job.total;
    const label = document.createElement("span");
    label.className = "phase";
    const amount = job.unit === "bytes" ? `${bytes(job.step)} / ${bytes(job.total)}` : `${job.step} / ${job.total} ${job.unit}`;
    label.textContent = `${job.phase} ${job.total ? amount : ""}${job.detail ? ` · ${job.detail}` : ""}`;
    const prompt = document.createElement("div");
    prompt.className = "prompt";
    prompt.textContent = job.prompt_preview;
    div.append(head, bar, label, prompt);
    box.appendChild(div);
  }
}

function renderHistory(state) {
  fillTable("history", state.history, (row, job) => {
    row.dataset.jobId = job.job_id;
    cell(row, clock(job.finished_at));
    cell(row, job.job_id);
    cell(row, job.kind);
    cell(row, job.model);
    cell(row, job.slot);
    cell(row, job.outcome, job.outcome === "done" ? "ok" : "bad");
    cell(row, seconds(job.duration_s));
    cell(row, job.cause);
  }, "no finished jobs yet");
}

function renderSlots(state) {
  fillTable("slots", state.status.slots, (row, slot) => {
    row.dataset.slot = slot.slot;
    cell(row, slot.slot);
    cell(row, slot.engine);
    cell(row, slot.gpu === null ? "cpu" : `${slot.gpu}${slot.gpu_name ? ` (${slot.gpu_name})` : ""}`);
    const parked = slot.parked_for_s ? ` (parked ${seconds(slot.parked_for_s)})` : "";
    cell(row, slot.state + parked, slot.state === "failed" ? "bad" : "");
    cell(row, slot.pid);
    cell(row, slot.jobs_done);
    const causes = Object.entries(slot.restart_causes).map(([c, n]) => `${c}=${n}`).join(", ");
    cell(row, slot.restarts ? `${slot.restarts} (${causes})` : "0");
    cell(row, bytes(slot.rss_bytes));
    cell(row, bytes(slot.vram_bytes));
    cell(row, slot.models.map((m) => `${m.load_key} (${bytes(m.size_bytes)})`).join(", ") || "–");
  }, "no slots");
}

function renderGpus(state) {
  const s = state.status;
  $("gpu-source").textContent = s.gpu_source ? `(${s.gpu_source})` : "";
  fillTable("gpus", s.gpus, (row, gpu) => {
    cell(row, gpu.index);
    cell(row, gpu.name);
    cell(row, bytes(gpu.used_bytes));
    cell(row, bytes(gpu.total_bytes));
    cell(row, gpu.health, gpu.health === "healthy" ? "ok" : "bad");
    cell(row, gpu.evictions);
  }, "no GPUs known (CPU only, or no NVIDIA driver)");
}

function renderCharts(state) {
  const minutes = state.minutes;
  const at = (i) => (i >= 0 ? clock(minutes[i].minute * 60) + ": " : "");
  drawBars($("chart-jobs"), minutes.map((m) => m.jobs), (i, v) => `${at(i)}${v} job(s)`, "bar-jobs");
  drawBars($("chart-duration"), minutes.map((m) => (m.jobs ? m.seconds_sum / m.jobs : 0)),
    (i, v) => `${at(i)}${seconds(v)}`, "bar-duration");
}

function render(state) {
  lastState = state;
  renderHeader(state);
  renderLanes(state);
  renderJobs(state);
  renderCharts(state);
  renderHistory(state);
  renderSlots(state);
  renderGpus(state);
}

function showBanner(text) {
  $("banner").hidden = !text;
  $("banner").textContent = text || "";
}

async function pollState() {
  try {
    const response = await fetch("/api/state", { cache: "no-store" });
    if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
    render(await response.json());
    showBanner("");
    $("freshness").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    showBanner(`cannot reach the supervisor: ${err.message}`);
  }
  setTimeout(pollState, STATE_POLL_MS);
}

function renderLogs() {
  $("logs").textContent = logLines
    .map((l) => `${clock(l.ts)} ${l.level.toUpperCase().padEnd(7)} ${l.logger}: ${l.lane ? `[${l.lane}] ` : ""}${l.message}`)
    .join("\n");
}

async function pollLogs() {
  try {
    const level = $("log-level").value;
    const response = await fetch(`/api/logs?after=${logAfter}&level=${level}`, { cache: "no-store" });
    if (response.ok) {
      const { lines } = await response.json();
      if (lines.length) {
        const box = $("logs");
        const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
        logLines = logLines.concat(lines).slice(-LOG_KEEP);
        logAfter = lines[lines.length - 1].seq;
        renderLogs();
        if (atBottom) box.scrollTop = box.scrollHeight;
      }
    }
  } catch (err) {
    // The state poll reports an unreachable supervisor; the log poll just tries again.
  }
  setTimeout(pollLogs, LOG_POLL_MS);
}

async function act(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", [SECRET_HEADER]: secret || "" },
    body: JSON.stringify(body || {}),
  });
  let reply;
  try {
    reply = await response.json();
  } catch (err) {
    reply = { ok: false, message: `${response.status} ${response.statusText}` };
  }
  if (response.status === 403 && path !== "/api/actions/check") lock();
  return reply;
}

function setUnlocked(value) {
  unlocked = value;
  $("secret-form").hidden = true;
  const slot = $("actions-slot");
  if (unlocked && !$("actions")) {
    slot.appendChild($("actions-template").content.cloneNode(true));
    wireActions();
  } else if (!unlocked) {
    slot.replaceChildren();
  }
  if (lastState) render(lastState);
}

function lock() {
  secret = null;
  sessionStorage.removeItem(SECRET_KEY);
  setUnlocked(false);
}

async function tryUnlock(candidate) {
  secret = candidate;
  const reply = await act("/api/actions/check");
  if (reply.ok) {
    sessionStorage.setItem(SECRET_KEY, candidate);
    setUnlocked(true);
    return true;
  }
  secret = null;
  sessionStorage.removeItem(SECRET_KEY);
  return false;
}

function showMessage(reply) {
  // A refused secret has taken the actions away: say why where the secret is asked for.
  const box = $("action-message") || $("secret-hint");
  if (!$("action-message")) $("secret-form").hidden = false;
  box.textContent = reply.message;
  box.className = `message ${reply.ok ? "ok" : "bad"}`;
}

function laneBody() {
  const lane = $("action-lane") ? $("action-lane").value : "";
  return lane ? { lane } : {};
}

function wireActions() {
  $("pause").addEventListener("click", async () => showMessage(await act("/api/actions/pause", laneBody())));
  $("resume").addEventListener("click", async () => showMessage(await act("/api/actions/resume", laneBody())));
  $("threshold-set").addEventListener("click", async () => {
    const gb = Number($("threshold-gb").value);
    if ($("threshold-gb").value === "" || !Number.isFinite(gb)) {
      showMessage({ ok: false, message: "threshold must be >= 0" });
      return;
    }
    showMessage(await act("/api/actions/threshold", { gb, ...laneBody() }));
  });
}

function wire() {
  $("unlock").addEventListener("click", () => {
    $("secret-form").hidden = false;
    $("secret-input").focus();
  });
  $("lock").addEventListener("click", lock);
  $("secret-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const ok = await tryUnlock($("secret-input").value.trim());
    $("secret-input").value = "";
    if (!ok) {
      $("secret-form").hidden = false;
      $("secret-hint").textContent = "that is not the secret; it is in the file " + ((lastState && lastState.secret_file) || "beside the control socket");
    }
  });
  $("log-level").addEventListener("change", () => {
    logAfter = 0;
    logLines = [];
    renderLogs();
  });
}

wire();
if (secret) tryUnlock(secret);
pollState();
pollLogs();
