// Development only: a tiny in-memory imitation of the runner REST API
// (shared/API.md) that serves web/, so the dashboard can be worked on before
// `runner serve` exists. The real tests (../dashboard.test.mjs) never use it.
// Usage: node tests/browser/dev/mock-server.mjs [port] [--token T] [--throttled]
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import crypto from 'node:crypto';

const here = path.dirname(fileURLToPath(import.meta.url));
const webDir = path.resolve(here, '../../../web');
const args = process.argv.slice(2);
const port = Number(args.find((a) => /^\d+$/.test(a)) || 8099);
const token = args.includes('--token') ? args[args.indexOf('--token') + 1] : null;
const throttled = args.includes('--throttled');

const nodeId = 'NODE' + crypto.randomBytes(6).toString('hex').toUpperCase();
let seq = 0;
const newId = () => (Date.now().toString(36) + (seq++).toString(36).padStart(4, '0') + crypto.randomBytes(3).toString('hex')).toUpperCase();
const now = () => new Date().toISOString();

const pool = { state: throttled ? 'throttled' : 'running', target: 2 };
const workers = [];
const tasks = new Map();
const logs = new Map();  // id -> [{stream,data}]
const eventClients = new Set();
const logClients = new Map();  // id -> Set(res)
const ticks = new Map();  // id -> interval

function syncWorkers() {
  while (workers.length < pool.target) workers.push({ id: newId(), node_id: nodeId, state: 'idle', task_id: null, started_at: now(), heartbeat_at: now() });
  while (workers.length > pool.target) {
    const i = workers.findIndex((w) => w.state === 'idle');
    workers.splice(i >= 0 ? i : workers.length - 1, 1);
  }
}
syncWorkers();
setInterval(() => { for (const w of workers) w.heartbeat_at = now(); }, 1000);

function emit(name, data) {
  for (const res of eventClients) res.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
}

function status() {
  const q = { queued: 0, running: 0, succeeded: 0, failed: 0, cancelled: 0, timed_out: 0 };
  for (const t of tasks.values()) q[t.state]++;
  const busy = workers.filter((w) => w.state === 'busy').length;
  return {
    node_id: nodeId, mode: 'mixed', docker: { available: true, version: '20.10.24' },
    pool: { state: pool.state, target: pool.target, active: workers.length, idle: workers.length - busy, busy, starting: 0, stopping: 0 },
    queue: q,
    resources: { cpu_percent: 20 + Math.random() * 30, memory_used: 6e9 + Math.random() * 1e9, memory_total: 16e9, disk_used: 40e9, disk_total: 100e9 },
    backpressure: pool.state === 'throttled' ? { active: true, reason: 'cpu 97% >= 0% (cpu_high)' } : { active: false, reason: null },
    nodes: 1,
  };
}

function appendLog(id, stream, data) {
  logs.get(id).push({ stream, data });
  for (const res of logClients.get(id) || []) res.write(`event: log\ndata: ${JSON.stringify({ stream, data })}\n\n`);
}

function finish(t, state, error = null, exit = 0) {
  t.state = state;
  t.finished_at = now();
  t.exit_code = exit;
  t.error = error;
  t.usage = { cpu_seconds: 0.01, peak_memory: 1048576, duration: (Date.parse(t.finished_at) - Date.parse(t.started_at || t.created_at)) / 1000 };
  const w = workers.find((x) => x.task_id === t.id);
  if (w) { w.state = 'idle'; w.task_id = null; }
  for (const res of logClients.get(t.id) || []) { res.write(`event: end\ndata: ${JSON.stringify(t)}\n\n`); res.end(); }
  logClients.delete(t.id);
  emit(`task.${state}`, { task_id: t.id, state });
  setTimeout(schedule, 10);
}

function run(t, w) {
  t.state = 'running';
  t.started_at = now();
  t.worker_id = w.id;
  t.node_id = nodeId;
  t.isolation_used = 'process';
  w.state = 'busy';
  w.task_id = t.id;
  emit('task.started', { task_id: t.id, state: 'running' });
  const line = t.command.length === 3 && t.command[0] === 'sh' ? t.command[2] : t.command.join(' ');
  const sleep = /sleep (\d+)/.exec(line);
  const echoes = t.command[0] === 'echo' ? [t.command.slice(1).join(' ')]
    : line.startsWith('printf') ? [...line.matchAll(/'([^']*)'/g)].slice(1).map((m) => m[1])
    : [...line.matchAll(/echo (?:"([^"]*)"|'([^']*)'|([^;&|]*))/g)].map((m) => (m[1] ?? m[2] ?? m[3]).trim());
  let i = 0;
  const tick = setInterval(() => {
    if (t.state !== 'running') { clearInterval(tick); return; }
    if (i < echoes.length) { appendLog(t.id, 'stdout', echoes[i++] + '\n'); return; }
    if (sleep && Date.now() - Date.parse(t.started_at) < Number(sleep[1]) * 1000) return;
    clearInterval(tick);
    finish(t, 'succeeded');
  }, 300);
  ticks.set(t.id, tick);
}

function schedule() {
  if (pool.state !== 'running') return;
  for (const w of workers) {
    if (w.state !== 'idle') continue;
    const t = [...tasks.values()].filter((x) => x.state === 'queued').sort((a, b) => b.priority - a.priority || a.created_at.localeCompare(b.created_at))[0];
    if (!t) return;
    run(t, w);
  }
}

function send(res, code, body) {
  res.writeHead(code, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(body));
}
const fail = (res, code, c, m) => send(res, code, { error: { code: c, message: m } });

function readJson(req) {
  return new Promise((resolve) => {
    let s = '';
    req.on('data', (d) => { s += d; });
    req.on('end', () => { try { resolve(s ? JSON.parse(s) : {}); } catch { resolve(undefined); } });
  });
}

const TASK_KEYS = new Set(['command', 'image', 'isolation', 'env', 'limits', 'timeout', 'priority', 'queue', 'max_attempts', 'delay', 'depends_on', 'idempotency_key', 'labels']);

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  const p = url.pathname;
  if (p.startsWith('/api/') && token) {
    const h = req.headers.authorization || '';
    if (h !== `Bearer ${token}` && url.searchParams.get('token') !== token) return fail(res, 401, 'unauthorized', 'send Authorization: Bearer <token>');
  }
  if (p === '/healthz' || p === '/readyz') return send(res, 200, { ok: true });
  if (p === '/api/v1/status') return send(res, 200, status());
  if (p === '/api/v1/workers') return send(res, 200, { workers });
  if (p === '/api/v1/events') {
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    res.write(': hello\n\n');
    eventClients.add(res);
    req.on('close', () => eventClients.delete(res));
    return;
  }
  if (p === '/api/v1/pool/scale' && req.method === 'POST') {
    const b = await readJson(req);
    if (!b || !Number.isInteger(b.count) || b.count < 1 || b.count > 256) return fail(res, 400, 'validation_failed', 'count must be a whole number in [1, 256]');
    pool.target = b.count;
    syncWorkers();
    emit('pool.scaled', { target: pool.target });
    schedule();
    return send(res, 202, status());
  }
  if (p === '/api/v1/pool/stop' && req.method === 'POST') { pool.state = 'stopped'; emit('pool.throttled', {}); return send(res, 202, status()); }
  if (p === '/api/v1/pool/start' && req.method === 'POST') { pool.state = throttled ? 'throttled' : 'running'; schedule(); return send(res, 202, status()); }
  if (p === '/api/v1/tasks' && req.method === 'POST') {
    const b = await readJson(req);
    if (!b) return fail(res, 400, 'bad_request', 'body is not JSON');
    for (const k of Object.keys(b)) if (!TASK_KEYS.has(k)) return fail(res, 400, 'validation_failed', `unknown field "${k}"`);
    if (!Array.isArray(b.command) || !b.command.length) return fail(res, 400, 'validation_failed', 'command must be a non-empty array');
    if (b.priority !== undefined && (b.priority < -1000 || b.priority > 1000)) return fail(res, 400, 'validation_failed', 'priority: must be between -1000 and 1000');
    if (b.limits && b.limits.cpus > 64) return fail(res, 400, 'validation_failed', 'limits.cpus must be at most 64');
    const t = {
      id: newId(), state: 'queued', queue: b.queue || 'default', priority: b.priority || 0, command: b.command,
      image: b.image || 'runner-task:latest', isolation: b.isolation || 'auto', isolation_used: null, env: b.env || {},
      limits: b.limits || {}, timeout: b.timeout ?? 600, attempt: 1, max_attempts: 1, depends_on: [], idempotency_key: null,
      labels: b.labels || {}, worker_id: null, node_id: null, exit_code: null, error: null, usage: null,
      created_at: now(), started_at: null, finished_at: null, cancel_requested: false,
    };
    tasks.set(t.id, t);
    logs.set(t.id, []);
    emit('task.queued', { task_id: t.id, state: 'queued' });
    setTimeout(schedule, 200);
    return send(res, 201, t);
  }
  if (p === '/api/v1/tasks' && req.method === 'GET') {
    let list = [...tasks.values()].sort((a, b) => b.id.localeCompare(a.id));
    const st = url.searchParams.get('state');
    const q = url.searchParams.get('queue');
    if (st) list = list.filter((t) => t.state === st);
    if (q) list = list.filter((t) => t.queue === q);
    const cursor = url.searchParams.get('cursor');
    if (cursor) list = list.filter((t) => t.id < cursor);
    const limit = Number(url.searchParams.get('limit') || 50);
    const page = list.slice(0, limit);
    return send(res, 200, { tasks: page, next_cursor: list.length > limit ? page[page.length - 1].id : null });
  }
  let m = /^\/api\/v1\/tasks\/([^/]+)(\/cancel|\/logs)?$/.exec(p);
  if (m) {
    const t = tasks.get(m[1]);
    if (!t) return fail(res, 404, 'not_found', `no task ${m[1]}`);
    if (!m[2]) return send(res, 200, t);
    if (m[2] === '/cancel') {
      if (!['queued', 'running'].includes(t.state)) return fail(res, 409, 'conflict', `task already ${t.state}`);
      t.cancel_requested = true;
      if (t.state === 'queued') { t.started_at = now(); finish(t, 'cancelled', { code: 'cancelled', message: 'cancelled by request' }); }
      else setTimeout(() => { clearInterval(ticks.get(t.id)); finish(t, 'cancelled', { code: 'cancelled', message: 'cancelled by request' }, 137); }, 300);
      return send(res, 202, t);
    }
    if (url.searchParams.get('follow') === '1') {
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
      for (const l of logs.get(t.id)) res.write(`event: log\ndata: ${JSON.stringify(l)}\n\n`);
      if (['queued', 'running'].includes(t.state)) {
        if (!logClients.has(t.id)) logClients.set(t.id, new Set());
        logClients.get(t.id).add(res);
        req.on('close', () => logClients.get(t.id)?.delete(res));
      } else {
        res.end(`event: end\ndata: ${JSON.stringify(t)}\n\n`);
      }
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
    return res.end(logs.get(t.id).map((l) => l.data).join(''));
  }
  if (p.startsWith('/api/')) return fail(res, 404, 'not_found', 'no such endpoint');
  const file = p === '/' ? 'index.html' : p.slice(1);
  const full = path.join(webDir, file);
  if (!full.startsWith(webDir) || !fs.existsSync(full)) { res.writeHead(404); return res.end('not found'); }
  const type = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml' }[path.extname(full)] || 'application/octet-stream';
  res.writeHead(200, { 'Content-Type': `${type}; charset=utf-8` });
  res.end(fs.readFileSync(full));
});

server.listen(port, '127.0.0.1', () => console.log(`mock runner on http://127.0.0.1:${port}`));
process.on('SIGTERM', () => process.exit(0));
