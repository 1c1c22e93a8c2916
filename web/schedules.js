// The Schedules panel: each schedule's timing, next run and last task (a link
// to the task panel), with pause, resume and trigger now. Reloaded on
// schedule.* events and every 10 s.
import { api } from './api.js';

const $ = (id) => document.getElementById(id);

function cell(text, cls) {
  const td = document.createElement('td');
  if (cls) td.className = cls;
  td.textContent = text === null || text === undefined || text === '' ? '–' : String(text);
  return td;
}

function when(s) {
  return s.cron ? `${s.cron} (${s.timezone})` : `every ${s.every} s`;
}

function fmt(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function say(text, isError = false) {
  const m = $('schedule-message');
  m.textContent = text;
  m.classList.toggle('error', isError);
}

async function act(s, action) {
  try {
    if (action === 'trigger') {
      const t = await api(`/api/v1/schedules/${encodeURIComponent(s.name)}/trigger`, { method: 'POST' });
      say(`${s.name}: task ${t.id} created`);
    } else {
      const body = { cron: s.cron, every: s.every, timezone: s.timezone, task: s.task,
        overlap: s.overlap, catch_up: s.catch_up, paused: action === 'pause' };
      await api(`/api/v1/schedules/${encodeURIComponent(s.name)}`, { method: 'PUT', body });
      say(`${s.name}: ${action === 'pause' ? 'paused' : 'resumed'}`);
    }
  } catch (e) {
    say(`${s.name}: ${e.message || e}`, true);
  }
  loadSchedules();
}

function button(text, onClick, testid) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.setAttribute('data-testid', testid);
  b.addEventListener('click', onClick);
  return b;
}

function render(list) {
  const tbody = $('schedule-table').querySelector('tbody');
  while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
  $('schedule-empty').hidden = list.length > 0;
  for (const s of list) {
    const tr = document.createElement('tr');
    tr.setAttribute('data-schedule', s.name);
    tr.appendChild(cell(s.name, 'mono'));
    tr.appendChild(cell(when(s), 'mono'));
    // Paused: no tasks, but the next slot is still shown (as the API does).
    tr.appendChild(cell(s.paused ? `paused · next ${fmt(s.next_run_at)}` : fmt(s.next_run_at)));
    const last = cell(s.last_task_id ? '' : '–', 'mono');
    if (s.last_task_id) {
      const a = document.createElement('a');
      a.href = `#/tasks/${s.last_task_id}`;
      a.textContent = s.last_task_id.slice(-8);
      a.title = s.last_task_id;
      last.textContent = '';
      last.appendChild(a);
    }
    tr.appendChild(last);
    const actions = document.createElement('td');
    actions.appendChild(s.paused
      ? button('Resume', () => act(s, 'resume'), 'schedule-resume')
      : button('Pause', () => act(s, 'pause'), 'schedule-pause'));
    actions.appendChild(button('Run now', () => act(s, 'trigger'), 'schedule-trigger'));
    tr.appendChild(actions);
    tbody.appendChild(tr);
  }
}

let loading = false;
export async function loadSchedules() {
  if (loading) return;
  loading = true;
  try {
    const page = await api('/api/v1/schedules');
    render(page.schedules || []);
  } catch { /* the connection state shows elsewhere */ } finally {
    loading = false;
  }
}

export function setupSchedules() {
  loadSchedules();
  setInterval(() => { if (!document.hidden) loadSchedules(); }, 10000);
}
