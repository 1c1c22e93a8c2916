// Test harness for the dashboard suite: a real `runner serve` on a fresh
// database of the test cluster, and Debian's chromium driven by playwright-core.
// Every resource it makes (process, database, temp dir, browser) is released by
// the returned stop()/close(), which the tests call on every path.
import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
export const artifacts = path.join(here, 'artifacts');

// What this suite runs on, for the message when it cannot run: Node.js, the
// playwright-core found (and the Node.js versions it accepts), Chromium.
export function versions() {
  let pw = 'not installed';
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(here, 'node_modules/playwright-core/package.json'), 'utf8'));
    pw = `${pkg.version} (engines: node ${pkg.engines ? pkg.engines.node : '?'})`;
  } catch { /* not installed */ }
  const bin = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
  let browser = `not found at ${bin}`;
  try {
    browser = execFileSync(bin, ['--version'], { timeout: 20000, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
  } catch (e) { if (fs.existsSync(bin)) browser = `${bin} --version failed: ${e.message}`; }
  return `node ${process.version}, playwright-core ${pw}, chromium: ${browser}`;
}
const howToFix = 'run scripts/setup test (installs Debian\'s chromium and nodejs, and the playwright-core of '
  + 'tests/browser/package-lock.json, which runs on Node.js 18)';

// playwright-core, loaded here so that a failure says what was found. Its
// engines field is checked first: a newer release may load on an older Node.js
// and fail later in ways that do not name the cause.
let chromium;
try {
  const pkg = JSON.parse(fs.readFileSync(path.join(here, 'node_modules/playwright-core/package.json'), 'utf8'));
  const min = /^>=\s*(\d+)/.exec((pkg.engines && pkg.engines.node) || '');
  if (min && Number(process.versions.node.split('.')[0]) < Number(min[1])) {
    throw new Error(`playwright-core ${pkg.version} needs Node.js ${pkg.engines.node}`);
  }
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  throw new Error(`browser tests cannot run: playwright-core does not load (${e.message}).\n`
    + `Found: ${versions()}.\nFix: ${howToFix}`);
}
fs.mkdirSync(artifacts, { recursive: true });

export function runnerBin() {
  if (process.env.RUNNER_BIN) return process.env.RUNNER_BIN;
  for (const dir of ['asan', 'dev', 'api']) {
    const p = path.join(root, 'build', dir, 'runner');
    if (fs.existsSync(p)) return p;
  }
  throw new Error('no runner binary: build it and set RUNNER_BIN=/path/to/runner');
}

function pgHost() {
  const h = process.env.RUNNER_TEST_PGHOST || (fs.existsSync('/tmp/runner-dev/pgsock') ? '/tmp/runner-dev/pgsock' : '');
  if (!h) throw new Error('RUNNER_TEST_PGHOST is not set: start the services (eval "$(scripts/services start)")');
  return h;
}

function psql(sql) {
  execFileSync('psql', ['-h', pgHost(), '-U', process.env.RUNNER_TEST_PGUSER || 'postgres', '-d', 'postgres',
    '-v', 'ON_ERROR_STOP=1', '-qAtc', sql], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30000 });
}

// A fresh database on the test cluster; drop() removes it (even with sessions left).
export function createDatabase() {
  const name = `runner_browser_${crypto.randomBytes(5).toString('hex')}`;
  psql(`CREATE DATABASE ${name}`);
  const user = process.env.RUNNER_TEST_PGUSER || 'postgres';
  return {
    name,
    url: `postgresql://${user}@${encodeURIComponent(pgHost())}/${name}`,
    drop() {
      try { psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`); } catch (e) { console.error(`drop ${name}: ${e.message}`); }
    },
  };
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// One Docker Engine API call over the unix socket; resolves {status, body}.
function docker(method, p) {
  const socketPath = (process.env.RUNNER_TEST_DOCKER_HOST || 'unix:///var/run/docker.sock').replace(/^unix:\/\//, '');
  return new Promise((resolve) => {
    const req = http.request({ socketPath, path: p, method, timeout: 10000 }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', () => resolve({ status: 0, body: '' }));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

// Removes (and reports) task containers a stopped runner's node left behind.
async function removeLeftovers(nodeId, name) {
  if (!nodeId) return;
  const filters = encodeURIComponent(JSON.stringify({ label: [`io.runner.node=${nodeId}`] }));
  const r = await docker('GET', `/containers/json?all=1&filters=${filters}`);
  let list = [];
  try { list = JSON.parse(r.body); } catch { return; }
  for (const c of list) {
    console.error(`runner ${name} left container ${c.Id.slice(0, 12)} (${c.Names}); removing it`);
    await docker('DELETE', `/containers/${c.Id}?force=1`);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls fn until it returns a truthy value or the deadline passes.
export async function waitFor(fn, { timeout = 30000, interval = 200, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(interval);
  }
}

// Starts `runner serve` on a free port with a fresh database. `args`/`env` add
// flags (e.g. --api-token) or RUNNER_* settings. `ready` is the path that must
// answer 200 before the runner counts as up.
export async function startRunner(name, { args = [], env = {}, ready = '/readyz', port, database, dataDir, mockArgs = [] } = {}) {
  // DASHBOARD_DEV_MOCK=1 is for working on the page only (dev/mock-server.mjs);
  // the suite proper always runs the real binary.
  const mock = process.env.DASHBOARD_DEV_MOCK === '1';
  const db = database || (mock ? { name: 'mock', url: 'mock', drop() {} } : createDatabase());
  const dir = dataDir || fs.mkdtempSync(path.join(os.tmpdir(), `runner-browser-${name}-`));
  const listenPort = port || await freePort();
  const url = `http://127.0.0.1:${listenPort}`;
  const logPath = path.join(artifacts, `runner-${name}.log`);
  const log = fs.openSync(logPath, 'a');
  const argv = ['serve', '--listen', `127.0.0.1:${listenPort}`, '--database-url', db.url,
    '--workers', '2', '--data-dir', dir, ...args];
  fs.writeSync(log, `\n== ${new Date().toISOString()} ${mock ? 'MOCK' : runnerBin()} ${argv.join(' ')}\n`);
  const child = mock
    ? spawn(process.execPath, [path.join(here, 'dev/mock-server.mjs'), String(listenPort), ...mockArgs], { stdio: ['ignore', log, log] })
    : spawn(runnerBin(), argv, {
    env: { ...process.env, ...env },
    stdio: ['ignore', log, log],
  });
  fs.closeSync(log);
  let exited = null;
  child.on('exit', (code, signal) => { exited = { code, signal }; });

  const runner = {
    name, url, port: listenPort, db, dataDir: dir, child, logPath,
    // SIGTERM (graceful drain); a second SIGTERM after 15 s stops at once,
    // killing the tasks (and their containers); SIGKILL only as a last resort.
    async stop({ dropDb = true, removeDir = true } = {}) {
      const waitExit = async (ms) => {
        const deadline = Date.now() + ms;
        while (!exited && Date.now() < deadline) await sleep(100);
      };
      if (!exited) {
        child.kill('SIGTERM');
        await waitExit(15000);
        if (!exited) { child.kill('SIGTERM'); await waitExit(15000); }
        if (!exited) { child.kill('SIGKILL'); await waitExit(5000); }
        if (exited && exited.code !== 0) {
          console.error(`runner ${name} exited ${JSON.stringify(exited)} on SIGTERM; see ${logPath}`);
        }
      }
      await removeLeftovers(runner.nodeId, name);
      if (dropDb) db.drop();
      if (removeDir) fs.rmSync(dir, { recursive: true, force: true });
    },
    async api(p, { method = 'GET', body, token } = {}) {
      const headers = {};
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      if (token) headers.Authorization = `Bearer ${token}`;
      const res = await fetch(url + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      const text = await res.text();
      let json = null;
      try { json = JSON.parse(text); } catch { /* text */ }
      return { status: res.status, json, text };
    },
  };
  try {
    await waitFor(async () => {
      if (exited) throw new Error(`runner exited (${JSON.stringify(exited)}); see ${logPath}`);
      const r = await fetch(url + ready).catch(() => null);
      return r && r.status === 200;
    }, { timeout: 60000, interval: 250, what: `${url}${ready}` });
  } catch (e) {
    const tail = fs.readFileSync(logPath, 'utf8').split('\n').slice(-30).join('\n');
    await runner.stop({ dropDb: !database, removeDir: !dataDir });
    throw new Error(`${e.message}\n--- runner log tail:\n${tail}`);
  }
  const tokenAt = args.indexOf('--api-token');
  const status = await runner.api('/api/v1/status', { token: tokenAt >= 0 ? args[tokenAt + 1] : undefined }).catch(() => null);
  runner.nodeId = status && status.json ? status.json.node_id : null;
  return runner;
}

// Debian's chromium with a fresh profile (--user-data-dir, passed by
// playwright as launchPersistentContext's directory); never a downloaded browser.
export async function launchBrowser() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'runner-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
      headless: true,
      timeout: 60000,
      viewport: { width: 1280, height: 900 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
        '--disable-component-update', '--no-first-run', '--disable-sync'],
    });
  } catch (e) {
    fs.rmSync(userDataDir, { recursive: true, force: true });
    throw new Error(`browser tests cannot run: Chromium does not start (${e.message}).\n`
      + `Found: ${versions()}.\nFix: ${howToFix}`);
  }
  for (const p of context.pages()) await p.close().catch(() => {});
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

// A new tab that records console errors, uncaught exceptions and any native dialog.
export async function newPage(browser, { width = 1280, height = 900 } = {}) {
  const page = await browser.context.newPage();
  await page.setViewportSize({ width, height });
  page.setDefaultTimeout(30000);
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('dialog', (d) => { errors.push(`unexpected dialog: ${d.type()} ${d.message()}`); d.dismiss().catch(() => {}); });
  return { page, errors };
}
