// The Queues panel: each queue's counts, policy and throttle state, with
// pause/resume and an editor for the policy (PUT replaces it whole).
// Reloaded on queue.updated events and every 5 s.
import { api } from './api.js';

const $ = (id) => document.getElementById(id);

function cell(text, cls) {
  const td = document.createElement('td');
  if (cls) td.className = cls;
  td.textContent = text === null || text === undefined || text === '' ? '–' : String(text);
  return td;
}

function say(text, isError = false) {
  const m = $('queue-message');
  m.textContent = text;
  m.classList.toggle('error', isError);
}

function policyOf(q) {
  return { max_running: q.max_running, max_running_per_group: q.max_running_per_group,
    rate_limit: q.rate_limit, paused: q.paused };
}

async function put(name, body, done) {
  try {
    await api(`/api/v1/queues/${encodeURIComponent(name)}`, { method: 'PUT', body });
    say(`${name}: ${done}`);
  } catch (e) {
    say(`${name}: ${e.message || e}`, true);
  }
  loadQueues();
}

function button(text, onClick, testid) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.setAttribute('data-testid', testid);
  b.addEventListener('click', onClick);
  return b;
}

function edit(q) {
  $('queue-name').value = q.name;
  $('queue-max').value = q.max_running ?? '';
  $('queue-per-group').value = q.max_running_per_group ?? '';
  $('queue-rate').value = q.rate_limit ? `${q.rate_limit.count}/${q.rate_limit.per}` : '';
  $('queue-paused').checked = q.paused;
}

function render(list) {
  const tbody = $('queue-table').querySelector('tbody');
  while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
  $('queue-empty').hidden = list.length > 0;
  for (const q of list) {
    const tr = document.createElement('tr');
    tr.setAttribute('data-queue', q.name);
    tr.appendChild(cell(q.name, 'mono'));
    tr.appendChild(cell(q.queued, 'num'));
    tr.appendChild(cell(q.running, 'num'));
    tr.appendChild(cell(q.groups, 'num'));
    tr.appendChild(cell(q.max_running, 'num'));
    tr.appendChild(cell(q.max_running_per_group, 'num'));
    tr.appendChild(cell(q.rate_limit ? `${q.rate_limit.count} / ${q.rate_limit.per} s` : ''));
    tr.appendChild(cell(q.throttled ?? 'no'));
    const actions = document.createElement('td');
    actions.appendChild(q.paused
      ? button('Resume', () => put(q.name, { ...policyOf(q), paused: false }, 'resumed'), 'queue-resume')
      : button('Pause', () => put(q.name, { ...policyOf(q), paused: true }, 'paused'), 'queue-pause'));
    actions.appendChild(button('Edit', () => edit(q), 'queue-edit'));
    tr.appendChild(actions);
    tbody.appendChild(tr);
  }
}

function readForm() {
  const num = (id) => {
    const v = $(id).value.trim();
    return v === '' ? null : Number(v);
  };
  const body = { max_running: num('queue-max'), max_running_per_group: num('queue-per-group'),
    rate_limit: null, paused: $('queue-paused').checked };
  const rate = $('queue-rate').value.trim();
  if (rate) {
    const [count, per] = rate.split('/');
    body.rate_limit = { count: Number(count), per: Number(per ?? 1) };
  }
  return body;
}

let loading = false;
export async function loadQueues() {
  if (loading) return;
  loading = true;
  try {
    const page = await api('/api/v1/queues');
    render(page.queues || []);
  } catch { /* the connection state shows elsewhere */ } finally {
    loading = false;
  }
}

export function setupQueues() {
  $('queue-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = $('queue-name').value.trim();
    if (!name) { say('name: give the queue to set', true); return; }
    put(name, readForm(), 'policy saved');
  });
  loadQueues();
  setInterval(() => { if (!document.hidden) loadQueues(); }, 5000);
}
