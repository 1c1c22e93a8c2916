// The runner dashboard. Plain ES modules, no framework. Every value that comes
// from the API is put on the page with textContent (never innerHTML), so task
// output, commands and labels show as text.

import { api, ApiError, sseUrl } from './api.js';
import { LiveChart } from './chart.js';
import { loadSchedules, setupSchedules } from './schedules.js';

const POLL_MS = 2000;
const TASK_PAGE = 20;
const FINISHED = new Set(['succeeded', 'failed', 'cancelled', 'timed_out']);
const LOG_CAP = 2 * 1024 * 1024;  // characters kept in the log view

const $ = (id) => document.getElementById(id);

function setText(id, value) {
  const e = typeof id === 'string' ? $(id) : id;
  if (e) e.textContent = value === null || value === undefined || value === '' ? '–' : String(value);
}

function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }

function make(tag, { text, cls, attrs } = {}) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (attrs) for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '–';
  if (n === 0) return '0';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return '–';
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} m ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} m`;
}

function fmtTime(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const now = new Date();
  const time = d.toLocaleTimeString([], { hour12: false });
  return d.toDateString() === now.toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

function ageSeconds(iso) {
  if (!iso) return null;
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return null;
  return Math.max(0, (Date.now() - t) / 1000);
}

function fmtCommand(cmd) {
  if (!Array.isArray(cmd)) return String(cmd ?? '');
  if (cmd.length === 3 && cmd[0] === 'sh' && cmd[1] === '-c') return cmd[2];
  return cmd.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
}

function shortId(id) { return id ? String(id).slice(-8) : '–'; }

function taskDuration(t) {
  if (t.usage && typeof t.usage.duration === 'number' && FINISHED.has(t.state)) return t.usage.duration;
  if (t.started_at) {
    const end = t.finished_at ? new Date(t.finished_at).getTime() : Date.now();
    return Math.max(0, (end - new Date(t.started_at).getTime()) / 1000);
  }
  return null;
}

function showMessage(id, text, isError = false) {
  const e = $(id);
  e.textContent = text || '';
  e.classList.toggle('error', Boolean(isError));
}

function errorText(e) {
  if (e instanceof ApiError) return e.code && !e.code.startsWith('http_') ? `${e.code}: ${e.message}` : e.message;
  return String(e && e.message ? e.message : e);
}

// ---------------------------------------------------------------- connection

const conn = { sse: false, poll: null };

function renderConn() {
  const e = $('conn-status');
  let state;
  let label;
  if (conn.poll === null && !conn.sse) { state = 'connecting'; label = 'connecting…'; }
  else if (conn.sse && conn.poll !== false) { state = 'connected'; label = 'live'; }
  else { state = 'disconnected'; label = 'disconnected – reconnecting…'; }
  if (e.dataset.state !== state) {
    e.dataset.state = state;
    e.textContent = label;
    document.body.classList.toggle('offline', state === 'disconnected');
  }
}

// ---------------------------------------------------------------- status

const chart = new LiveChart($('chart'), $('chart-legend'));
const finishedHistory = [];
let lastSample = 0;
let scaleTouched = false;

function pct(used, total) { return total > 0 ? (100 * used) / total : null; }

function renderGauge(id, percent, detail) {
  const g = $(id);
  const v = percent === null || percent === undefined ? null : Math.max(0, Math.min(100, percent));
  g.setAttribute('aria-valuenow', v === null ? '0' : v.toFixed(0));
  g.querySelector('.gauge-fill').style.width = `${v === null ? 0 : v}%`;
  g.dataset.level = v === null ? 'none' : v >= 90 ? 'high' : v >= 75 ? 'warn' : 'ok';
  g.querySelector('.gauge-value').textContent = v === null ? 'n/a' : `${v.toFixed(0)}%${detail ? ' · ' + detail : ''}`;
}

function renderStatus(s) {
  setText('node-id', s.node_id ? `node ${shortId(s.node_id)}` : '');
  $('node-id').title = s.node_id || '';
  const pool = s.pool || {};
  const ps = $('pool-state');
  ps.textContent = pool.state || 'unknown';
  ps.dataset.state = pool.state || '';
  const bp = s.backpressure || {};
  setText('backpressure-reason', bp.active ? (bp.reason || 'active') : 'none');
  $('backpressure-reason').dataset.active = bp.active ? 'true' : 'false';
  setText('pool-mode', s.mode);
  const d = s.docker || {};
  setText('docker-status', d.available ? `available${d.version ? ' · ' + d.version : ''}` : 'unavailable');
  $('docker-status').dataset.available = d.available ? 'true' : 'false';
  setText('pool-nodes', s.nodes);
  for (const k of ['target', 'active', 'idle', 'busy', 'starting', 'stopping']) setText(`pool-${k}`, pool[k] ?? 0);
  const input = $('scale-input');
  if (!scaleTouched && document.activeElement !== input && pool.target !== undefined) input.value = pool.target;

  const q = s.queue || {};
  for (const k of ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out']) setText(`count-${k}`, q[k] ?? 0);

  const r = s.resources || {};
  const memPct = pct(r.memory_used, r.memory_total);
  const diskPct = pct(r.disk_used, r.disk_total);
  renderGauge('gauge-cpu', typeof r.cpu_percent === 'number' ? r.cpu_percent : null, '');
  renderGauge('gauge-memory', memPct, r.memory_total ? `${fmtBytes(r.memory_used)} / ${fmtBytes(r.memory_total)}` : '');
  renderGauge('gauge-disk', diskPct, r.disk_total ? `${fmtBytes(r.disk_used)} / ${fmtBytes(r.disk_total)}` : '');

  const now = Date.now();
  const finished = (q.succeeded || 0) + (q.failed || 0) + (q.cancelled || 0) + (q.timed_out || 0);
  // Throughput: tasks finished per minute over the last minute of samples
  // (at least a 10 s base, so one task right after start is not a spike).
  finishedHistory.push({ t: now, n: finished });
  while (finishedHistory.length > 2 && now - finishedHistory[1].t >= 60000) finishedHistory.shift();
  const base = finishedHistory[0];
  const rate = Math.max(0, finished - base.n) / (Math.max(10000, now - base.t) / 60000);
  if (now - lastSample < 1500) return;  // event-triggered polls do not crowd the chart
  lastSample = now;
  chart.add({ t: now, cpu: r.cpu_percent || 0, mem: memPct || 0, queued: q.queued || 0, rate });
}

function renderWorkers(list) {
  const tbody = $('worker-table').querySelector('tbody');
  clear(tbody);
  setText('worker-count', `(${list.length})`);
  for (const w of list) {
    const tr = make('tr', { attrs: { 'data-worker-id': w.id, 'data-state': w.state || '' } });
    const idCell = make('td', { cls: 'mono', text: shortId(w.id) });
    idCell.title = w.id;
    tr.appendChild(idCell);
    const nodeCell = make('td', { cls: 'mono opt', text: shortId(w.node_id) });
    nodeCell.title = w.node_id || '';
    tr.appendChild(nodeCell);
    const st = make('td');
    st.appendChild(make('span', { cls: 'badge', text: w.state || '?', attrs: { 'data-state': w.state || '' } }));
    tr.appendChild(st);
    const taskCell = make('td', { cls: 'mono' });
    if (w.task_id) {
      const b = make('button', { cls: 'link', text: shortId(w.task_id), attrs: { type: 'button', title: w.task_id } });
      b.addEventListener('click', () => openTask(w.task_id));
      taskCell.appendChild(b);
    } else {
      taskCell.textContent = '–';
    }
    tr.appendChild(taskCell);
    const age = ageSeconds(w.heartbeat_at);
    const hb = make('td', { text: age === null ? '–' : `${fmtSeconds(age)} ago` });
    if (age !== null && age > 30) hb.classList.add('stale');
    tr.appendChild(hb);
    tbody.appendChild(tr);
  }
}

let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    const [s, w] = await Promise.all([api('/api/v1/status'), api('/api/v1/workers')]);
    conn.poll = true;
    renderStatus(s);
    renderWorkers((w && w.workers) || []);
  } catch (e) {
    conn.poll = false;
  } finally {
    polling = false;
    renderConn();
  }
}

// ---------------------------------------------------------------- pool controls

async function poolAction(label, path, body) {
  showMessage('pool-message', `${label}…`);
  try {
    const s = await api(path, { method: 'POST', body });
    showMessage('pool-message', `${label}: done.`);
    if (s && s.pool) renderStatus(s);
    poll();
  } catch (e) {
    showMessage('pool-message', `${label} failed: ${errorText(e)}`, true);
  }
}

function confirmForceStop() {
  const dialog = $('confirm-dialog');
  return new Promise((resolve) => {
    dialog.returnValue = '';
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

function setupPool() {
  $('scale-input').addEventListener('input', () => { scaleTouched = true; });
  $('scale-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const raw = $('scale-input').value.trim();
    const count = Number(raw);
    if (!raw || !Number.isInteger(count)) {
      showMessage('pool-message', 'Enter a whole number of workers.', true);
      return;
    }
    await poolAction(`Scale to ${count}`, '/api/v1/pool/scale', { count });
    scaleTouched = false;
  });
  $('pool-start').addEventListener('click', () => poolAction('Start', '/api/v1/pool/start'));
  $('pool-stop').addEventListener('click', () => poolAction('Stop', '/api/v1/pool/stop', { force: false }));
  $('pool-force-stop').addEventListener('click', async () => {
    if (await confirmForceStop()) poolAction('Force stop', '/api/v1/pool/stop', { force: true });
  });
}

// ---------------------------------------------------------------- task table

const tasks = { state: '', queue: '', group: '', cursors: [null], page: 0, next: null, loading: false, again: false };

// The query the table should show now: filters and page.
function taskQuery() {
  const params = new URLSearchParams({ limit: String(TASK_PAGE) });
  if (tasks.state) params.set('state', tasks.state);
  if (tasks.queue) params.set('queue', tasks.queue);
  if (tasks.group) params.set('group', tasks.group);
  const cursor = tasks.cursors[tasks.page];
  if (cursor) params.set('cursor', cursor);
  return params.toString();
}

async function loadTasks() {
  if (tasks.loading) { tasks.again = true; return; }
  tasks.loading = true;
  try {
    const query = taskQuery();
    const r = await api(`/api/v1/tasks?${query}`);
    // The operator changed the filter or page while this was in flight: the
    // answer is stale, and the reload queued behind it shows the right one.
    if (query !== taskQuery()) return;
    tasks.next = r.next_cursor ?? r.next ?? null;
    renderTasks(r.tasks || []);
    $('task-table').dataset.query = query;
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 0)) setText('tasks-page', `could not load tasks: ${errorText(e)}`);
  } finally {
    tasks.loading = false;
    if (tasks.again) { tasks.again = false; loadTasks(); }
  }
}

let tableTimer = null;
function scheduleTasks() {
  if (tableTimer) return;
  tableTimer = setTimeout(() => { tableTimer = null; loadTasks(); }, 250);
}

function renderTasks(list) {
  const tbody = $('task-table').querySelector('tbody');
  clear(tbody);
  $('task-empty').hidden = list.length > 0;
  for (const t of list) {
    const tr = make('tr', { attrs: { 'data-task-id': t.id, 'data-state': t.state } });
    if (t.id === selected.id) tr.classList.add('selected');
    const idCell = make('td', { cls: 'mono' });
    const b = make('button', { cls: 'link', text: shortId(t.id), attrs: { type: 'button', title: t.id, 'aria-label': `Open task ${t.id}` } });
    b.addEventListener('click', () => openTask(t.id));
    idCell.appendChild(b);
    tr.appendChild(idCell);
    const st = make('td');
    st.appendChild(make('span', { cls: 'badge', text: t.state, attrs: { 'data-state': t.state } }));
    tr.appendChild(st);
    const cmd = make('td', { cls: 'mono cmd', text: fmtCommand(t.command) });
    cmd.title = fmtCommand(t.command);
    tr.appendChild(cmd);
    tr.appendChild(make('td', { cls: 'opt', text: t.queue }));
    tr.appendChild(make('td', { cls: 'opt', text: t.group ?? '—' }));
    tr.appendChild(make('td', { cls: 'opt num', text: t.priority ?? 0 }));
    tr.appendChild(make('td', { cls: 'opt', text: fmtTime(t.created_at) }));
    tr.appendChild(make('td', { cls: 'opt num', text: fmtSeconds(taskDuration(t)) }));
    tbody.appendChild(tr);
  }
  $('tasks-prev').disabled = tasks.page === 0;
  $('tasks-first').disabled = tasks.page === 0;
  $('tasks-next').disabled = !tasks.next;
  $('tasks-page').textContent = `page ${tasks.page + 1}`;
}

function setupTasks() {
  $('task-filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    tasks.state = $('filter-state').value;
    tasks.queue = $('filter-queue').value.trim();
    tasks.group = $('filter-group').value.trim();
    tasks.cursors = [null];
    tasks.page = 0;
    loadTasks();
  });
  $('filter-state').addEventListener('change', () => $('task-filters').requestSubmit());
  $('tasks-next').addEventListener('click', () => {
    if (!tasks.next) return;
    tasks.cursors[tasks.page + 1] = tasks.next;
    tasks.cursors.length = tasks.page + 2;
    tasks.page++;
    loadTasks();
  });
  $('tasks-prev').addEventListener('click', () => {
    if (tasks.page > 0) { tasks.page--; loadTasks(); }
  });
  $('tasks-first').addEventListener('click', () => { tasks.page = 0; loadTasks(); });
}

// ---------------------------------------------------------------- task panel

const selected = { id: null, task: null, logs: null, retry: null, size: 0 };

function fact(dl, name, value) {
  const div = make('div');
  div.appendChild(make('dt', { text: name }));
  const dd = make('dd', { text: value === null || value === undefined || value === '' ? '–' : value });
  div.appendChild(dd);
  dl.appendChild(div);
  return dd;
}

function renderTask(t) {
  selected.task = t;
  setText('task-detail-id', t.id);
  const st = $('task-detail-state');
  st.textContent = t.state;
  st.dataset.state = t.state;
  const dl = $('task-facts');
  clear(dl);
  const cmd = fact(dl, 'Command', Array.isArray(t.command) ? JSON.stringify(t.command) : t.command);
  cmd.classList.add('mono', 'wrap');
  cmd.id = 'task-detail-command';
  fact(dl, 'Queue', t.queue);
  fact(dl, 'Group', t.group ?? '—');
  fact(dl, 'Priority', t.priority);
  fact(dl, 'Image', t.image);
  fact(dl, 'Isolation', t.isolation_used ? `${t.isolation} → ${t.isolation_used}` : t.isolation);
  const l = t.limits || {};
  const limits = [
    l.cpus ? `${l.cpus} CPU` : null,
    l.memory ? `${fmtBytes(l.memory)} memory` : null,
    l.disk ? `${fmtBytes(l.disk)} disk` : null,
    l.pids ? `${l.pids} pids` : null,
  ].filter(Boolean).join(', ');
  fact(dl, 'Limits', limits || 'none');
  fact(dl, 'Timeout', t.timeout ? fmtSeconds(t.timeout) : 'none');
  fact(dl, 'Attempt', `${t.attempt ?? 0} of ${t.max_attempts ?? 1}`);
  fact(dl, 'Exit code', t.exit_code);
  const u = t.usage || {};
  fact(dl, 'Usage', t.usage ? `${fmtSeconds(u.cpu_seconds)} CPU, peak ${fmtBytes(u.peak_memory)}, ${fmtSeconds(u.duration)} wall` : null);
  fact(dl, 'Worker', t.worker_id);
  fact(dl, 'Node', t.node_id);
  fact(dl, 'Created', fmtTime(t.created_at));
  fact(dl, 'Started', fmtTime(t.started_at));
  fact(dl, 'Finished', fmtTime(t.finished_at));
  const labels = t.labels && Object.keys(t.labels).length ? Object.entries(t.labels).map(([k, v]) => `${k}=${v}`).join(', ') : null;
  fact(dl, 'Labels', labels).classList.add('wrap');
  if (t.env && Object.keys(t.env).length) fact(dl, 'Env', Object.keys(t.env).join(', ')).classList.add('wrap');
  if (t.secrets && t.secrets.length) fact(dl, 'Secrets', t.secrets.join(', ')).classList.add('wrap');
  if (t.depends_on && t.depends_on.length) fact(dl, 'Depends on', t.depends_on.join(', ')).classList.add('mono', 'wrap');
  if (t.cancel_requested && !FINISHED.has(t.state)) fact(dl, 'Cancel', 'requested');
  const err = $('task-error');
  err.textContent = t.error ? `${t.error.code}: ${t.error.message || ''}` : '';
  err.hidden = !t.error;
  $('task-cancel').disabled = FINISHED.has(t.state);
  for (const tr of $('task-table').querySelectorAll('tbody tr')) {
    tr.classList.toggle('selected', tr.dataset.taskId === t.id);
  }
}

function stopLogs() {
  if (selected.logs) { selected.logs.close(); selected.logs = null; }
  if (selected.retry) { clearTimeout(selected.retry); selected.retry = null; }
}

function appendLog(stream, data) {
  const pre = $('task-logs');
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
  const span = make('span', { text: data });
  if (stream === 'stderr') span.className = 'stderr';
  pre.appendChild(span);
  selected.size += data.length;
  while (selected.size > LOG_CAP && pre.firstChild) {
    selected.size -= pre.firstChild.textContent.length;
    pre.removeChild(pre.firstChild);
  }
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

function resetLogs(state) {
  clear($('task-logs'));
  selected.size = 0;
  $('task-logs-state').textContent = state || '';
  $('task-logs').dataset.state = state || '';
}

async function loadFullLogs(id) {
  try {
    const text = await api(`/api/v1/tasks/${encodeURIComponent(id)}/logs`, { text: true });
    if (selected.id !== id) return;
    resetLogs('(complete)');
    $('task-logs').dataset.state = 'complete';
    if (text) appendLog('stdout', text);
  } catch (e) {
    if (selected.id === id) $('task-logs-state').textContent = `(could not load logs: ${errorText(e)})`;
  }
}

function followLogs(id) {
  stopLogs();
  resetLogs('(following live)');
  $('task-logs').dataset.state = 'following';
  const es = new EventSource(sseUrl(`/api/v1/tasks/${encodeURIComponent(id)}/logs?follow=1`));
  selected.logs = es;
  es.addEventListener('log', (ev) => {
    if (selected.logs !== es) return;
    let d;
    try { d = JSON.parse(ev.data); } catch { d = { stream: 'stdout', data: ev.data }; }
    appendLog(d.stream, typeof d.data === 'string' ? d.data : JSON.stringify(d.data));
  });
  es.addEventListener('end', (ev) => {
    if (selected.logs !== es) return;
    es.close();
    selected.logs = null;
    $('task-logs-state').textContent = '(ended)';
    $('task-logs').dataset.state = 'ended';
    try {
      const t = JSON.parse(ev.data);
      if (t && t.id === id) renderTask(t);
    } catch { refreshSelected(); }
    scheduleTasks();
  });
  es.onopen = () => {
    if (selected.logs === es && $('task-logs').dataset.state === 'reconnecting') {
      $('task-logs-state').textContent = '(following live)';
      $('task-logs').dataset.state = 'following';
    }
  };
  es.onerror = async () => {
    if (selected.logs !== es) return;
    if (es.readyState === EventSource.CONNECTING) {
      // The browser resumes the stream itself (Last-Event-ID: no line twice).
      $('task-logs-state').textContent = '(reconnecting…)';
      $('task-logs').dataset.state = 'reconnecting';
      return;
    }
    // The browser gave up (HTTP error): look at the task and decide.
    es.close();
    selected.logs = null;
    $('task-logs-state').textContent = '(reconnecting…)';
    try {
      const t = await api(`/api/v1/tasks/${encodeURIComponent(id)}`);
      if (selected.id !== id) return;
      renderTask(t);
      if (FINISHED.has(t.state)) { loadFullLogs(id); return; }
    } catch { /* retry below */ }
    if (selected.id === id) selected.retry = setTimeout(() => { if (selected.id === id) followLogs(id); }, 2000);
  };
}

async function openTask(id, { fromHash = false } = {}) {
  if (!id) return;
  if (!fromHash && location.hash !== `#/tasks/${id}`) {
    history.pushState(null, '', `#/tasks/${id}`);
  }
  const panel = $('task-panel');
  const changed = selected.id !== id;
  selected.id = id;
  panel.hidden = false;
  if (changed) {
    stopLogs();
    resetLogs('');
    clear($('task-facts'));
    setText('task-detail-id', id);
    $('task-detail-state').textContent = '…';
    $('task-error').textContent = '';
    showMessage('task-message', '');
  }
  try {
    const t = await api(`/api/v1/tasks/${encodeURIComponent(id)}`);
    if (selected.id !== id) return;
    renderTask(t);
    if (changed || (!selected.logs && !FINISHED.has(t.state))) {
      if (FINISHED.has(t.state)) loadFullLogs(id); else followLogs(id);
    }
  } catch (e) {
    if (selected.id !== id) return;
    $('task-detail-state').textContent = 'error';
    $('task-error').hidden = false;
    $('task-error').textContent = errorText(e);
  }
  if (changed) panel.scrollIntoView({ block: 'start', behavior: 'instant' });
}

function closeTask() {
  stopLogs();
  selected.id = null;
  selected.task = null;
  $('task-panel').hidden = true;
  if (location.hash.startsWith('#/tasks/')) history.pushState(null, '', location.pathname + location.search);
  for (const tr of $('task-table').querySelectorAll('tbody tr.selected')) tr.classList.remove('selected');
}

async function refreshSelected() {
  const id = selected.id;
  if (!id) return;
  try {
    const t = await api(`/api/v1/tasks/${encodeURIComponent(id)}`);
    if (selected.id !== id) return;
    const wasFinished = selected.task && FINISHED.has(selected.task.state);
    renderTask(t);
    if (FINISHED.has(t.state) && !wasFinished && !selected.logs) loadFullLogs(id);
  } catch { /* shown on next poll */ }
}

function routeFromHash() {
  const m = location.hash.match(/^#\/tasks\/([A-Za-z0-9_-]+)$/);
  if (m) openTask(m[1], { fromHash: true });
  else if (selected.id) closeTask();
}

function setupTaskPanel() {
  $('task-close').addEventListener('click', closeTask);
  $('task-cancel').addEventListener('click', async () => {
    const id = selected.id;
    if (!id) return;
    $('task-cancel').disabled = true;
    showMessage('task-message', 'Cancelling…');
    try {
      const t = await api(`/api/v1/tasks/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
      showMessage('task-message', 'Cancel requested.');
      if (t && t.id === id) renderTask(t);
      scheduleTasks();
    } catch (e) {
      showMessage('task-message', `Cancel failed: ${errorText(e)}`, true);
      $('task-cancel').disabled = false;
    }
  });
  window.addEventListener('popstate', routeFromHash);
  window.addEventListener('hashchange', routeFromHash);
}

// ---------------------------------------------------------------- submit

export function parseCommand(line) {
  const s = line.trim();
  if (!s) throw new Error('Enter a command.');
  if (s.startsWith('[')) {
    let a;
    try { a = JSON.parse(s); } catch { throw new Error('The command looks like JSON but is not valid JSON.'); }
    if (!Array.isArray(a) || a.length === 0 || !a.every((x) => typeof x === 'string')) {
      throw new Error('A JSON command must be a non-empty array of strings.');
    }
    return a;
  }
  return ['sh', '-c', s];
}

function numberField(id, { integer = false, min = null } = {}) {
  const raw = $(id).value.trim();
  if (raw === '') return undefined;
  const n = Number(raw);
  const label = document.querySelector(`label[for="${id}"]`)?.textContent || id;
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n))) throw new Error(`${label}: enter a ${integer ? 'whole ' : ''}number.`);
  if (min !== null && n < min) throw new Error(`${label}: must be at least ${min}.`);
  return n;
}

const MIB = 1024 * 1024;

function buildTask() {
  const body = { command: parseCommand($('submit-command').value) };
  const image = $('submit-image').value.trim();
  if (image) body.image = image;
  const isolation = $('submit-isolation').value;
  if (isolation && isolation !== 'auto') body.isolation = isolation;
  const queue = $('submit-queue').value.trim();
  if (queue) body.queue = queue;
  const limits = {};
  const cpus = numberField('submit-cpus', { min: 0 });
  if (cpus !== undefined) limits.cpus = cpus;
  const mem = numberField('submit-memory', { min: 0 });
  if (mem !== undefined) limits.memory = Math.round(mem * MIB);
  const disk = numberField('submit-disk', { min: 0 });
  if (disk !== undefined) limits.disk = Math.round(disk * MIB);
  const pids = numberField('submit-pids', { integer: true, min: 0 });
  if (pids !== undefined) limits.pids = pids;
  if (Object.keys(limits).length) body.limits = limits;
  const timeout = numberField('submit-timeout', { min: 0 });
  if (timeout !== undefined) body.timeout = timeout;
  const priority = numberField('submit-priority', { integer: true });
  if (priority !== undefined) body.priority = priority;
  return body;
}

function setupSubmit() {
  $('submit-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    showMessage('submit-error', '');
    showMessage('submit-result', '');
    let body;
    try { body = buildTask(); } catch (e) {
      showMessage('submit-error', e.message, true);
      return;
    }
    const button = $('submit-button');
    button.disabled = true;
    try {
      const t = await api('/api/v1/tasks', { method: 'POST', body });
      const res = $('submit-result');
      clear(res);
      res.appendChild(document.createTextNode('Submitted '));
      const b = make('button', { cls: 'link mono', text: t.id, attrs: { type: 'button', 'data-task-id': t.id } });
      b.addEventListener('click', () => openTask(t.id));
      res.appendChild(b);
      res.appendChild(document.createTextNode(` (${t.state}).`));
      scheduleTasks();
      openTask(t.id);
    } catch (e) {
      showMessage('submit-error', errorText(e), true);
    } finally {
      button.disabled = false;
    }
  });
}

// ---------------------------------------------------------------- live events

const EVENTS = [
  'task.queued', 'task.started', 'task.succeeded', 'task.failed', 'task.cancelled',
  'task.timed_out', 'task.retrying', 'worker.started', 'worker.stopped', 'worker.failed',
  'pool.scaled', 'pool.throttled', 'pool.resumed', 'schedule.created', 'schedule.updated',
  'schedule.deleted', 'schedule.fired', 'schedule.skipped',
];

let events = null;
let eventsRetry = null;
let eventsDelay = 1000;

function eventTaskId(data) {
  if (!data || typeof data !== 'object') return null;
  return data.task_id || (data.task && data.task.id) || (data.id && data.state ? data.id : null);
}

function onEvent(name, ev) {
  let data = null;
  try { data = JSON.parse(ev.data); } catch { /* not JSON */ }
  if (name.startsWith('task.')) {
    scheduleTasks();
    const id = eventTaskId(data);
    if (selected.id && (!id || id === selected.id)) refreshSelected();
    schedulePoll();
  } else {
    if (name.startsWith('schedule.')) loadSchedules();
    schedulePoll();
  }
}

let pollTimer = null;
function schedulePoll() {
  if (pollTimer) return;
  pollTimer = setTimeout(() => { pollTimer = null; poll(); }, 200);
}

function connectEvents() {
  if (eventsRetry) { clearTimeout(eventsRetry); eventsRetry = null; }
  if (events) events.close();
  const es = new EventSource(sseUrl('/api/v1/events'));
  events = es;
  es.onopen = () => {
    if (events !== es) return;
    eventsDelay = 1000;
    const wasDown = !conn.sse;
    conn.sse = true;
    renderConn();
    if (wasDown) { poll(); loadTasks(); if (selected.id) refreshSelected(); }
  };
  for (const name of EVENTS) es.addEventListener(name, (ev) => onEvent(name, ev));
  es.onmessage = (ev) => onEvent('message', ev);
  es.onerror = () => {
    if (events !== es) return;
    conn.sse = false;
    renderConn();
    // A dropped stream is retried by the browser itself (resuming with
    // Last-Event-ID); onopen then refreshes everything.
    if (es.readyState !== EventSource.CLOSED) return;
    // On an HTTP error (503 while the server starts, 401) the browser gives up
    // for good: take over, retrying with backoff; a poll meanwhile asks for the
    // token on 401.
    es.close();
    events = null;
    eventsRetry = setTimeout(async () => {
      eventsRetry = null;
      await poll();
      connectEvents();
    }, eventsDelay);
    eventsDelay = Math.min(eventsDelay * 2, 8000);
  };
}

// ---------------------------------------------------------------- start

async function main() {
  setupPool();
  setupTasks();
  setupTaskPanel();
  setupSubmit();
  setupSchedules();
  chart.draw();
  await poll();  // asks for the token first if the server wants one
  connectEvents();
  loadTasks();
  routeFromHash();
  setInterval(poll, POLL_MS);
  setInterval(() => { if (!document.hidden) loadTasks(); }, 10000);
  setInterval(() => { if (selected.id && selected.task && !FINISHED.has(selected.task.state)) refreshSelected(); }, 5000);
}

main();
