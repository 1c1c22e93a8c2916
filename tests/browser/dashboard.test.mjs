// The dashboard in a real browser (Debian's chromium via playwright-core)
// against a real `runner serve` with the real PostgreSQL and dockerd.
//   node --test tests/browser/dashboard.test.mjs      (RUNNER_BIN=/path/to/runner)
// Runner logs and screenshots land in tests/browser/artifacts/.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { artifacts, launchBrowser, newPage, startRunner, waitFor, sleep } from './harness.mjs';

let browser;
const tempDirs = [];

// A YAML config with the given pressure thresholds (runner/config_loader.cpp
// keys; YAML only). A high mark of 100 disables that check.
function pressureConfig(p) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'runner-browser-cfg-'));
  tempDirs.push(dir);
  const file = path.join(dir, 'runner.yaml');
  fs.writeFileSync(file, ['pressure:', ...Object.entries(p).map(([k, v]) => `  ${k}: ${v}`), ''].join('\n'));
  return file;
}
// The suite shares 2 busy cores with builds: never let host load throttle the
// runners that must run tasks.
const NO_PRESSURE = { cpuHigh: 100, cpuLow: 99, memoryHigh: 100, memoryLow: 99, diskHigh: 100, diskLow: 99 };

before(async () => { browser = await launchBrowser(); });
after(async () => {
  if (browser) await browser.close();
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
});

// Opens the dashboard and waits until it is live (status shown, events open).
async function openDashboard(runner, opts) {
  const tab = await newPage(browser, opts);
  await tab.page.goto(runner.url + '/');
  return tab;
}

async function waitLive(page) {
  await page.waitForSelector('#conn-status[data-state="connected"]', { timeout: 30000 });
  await page.waitForFunction(() => document.querySelector('#pool-state').dataset.state !== '');
}

async function submitFromForm(page, command, fields = {}) {
  await page.fill('#submit-command', command);
  for (const [id, value] of Object.entries(fields)) await page.fill(`#submit-${id}`, String(value));
  await page.click('#submit-button');
  const link = await page.waitForSelector('#submit-result button[data-task-id]', { timeout: 15000 });
  return link.getAttribute('data-task-id');
}

const detailState = (page) => page.textContent('#task-detail-state');

describe('dashboard against a runner', () => {
  let runner;
  let tab;

  before(async () => {
    runner = await startRunner('main', { args: ['--config', pressureConfig(NO_PRESSURE)] });
    tab = await openDashboard(runner);
  });
  after(async () => {
    if (tab) await tab.page.close().catch(() => {});
    if (runner) await runner.stop();
  });

  it('loads with the pool, host and queue shown and no console errors', async () => {
    const { page, errors } = tab;
    await waitLive(page);
    assert.equal(await page.textContent('#pool-state'), 'running');
    assert.match(await page.textContent('#pool-mode'), /^(docker|process|mixed)$/);
    assert.match(await page.textContent('#docker-status'), /available|unavailable/);
    await page.waitForFunction(() => document.querySelector('#pool-target').textContent === '2');
    await page.waitForFunction(() => document.querySelectorAll('#worker-table tbody tr').length >= 2);
    await page.waitForFunction(() => /\d+%/.test(document.querySelector('#gauge-cpu .gauge-value').textContent));
    // a few poll rounds, then nothing may have gone wrong
    await page.waitForFunction(() => document.querySelectorAll('#chart polyline').length >= 2, null, { timeout: 15000 });
    assert.deepEqual(errors, []);
  });

  it('runs a task submitted from the form and follows its logs live', async () => {
    const { page, errors } = tab;
    const id = await submitFromForm(page, 'echo first-line; sleep 4; echo second-line');
    // the task page opens on the new task and the table lists it
    await page.waitForSelector(`#task-table tbody tr[data-task-id="${id}"]`);
    assert.equal(await page.textContent('#task-detail-id'), id);
    // the first line shows while the task still runs: logs are live, not fetched at the end
    await page.waitForFunction(() => {
      const logs = document.querySelector('#task-logs').textContent;
      const state = document.querySelector('#task-detail-state').textContent;
      return logs.includes('first-line') && !logs.includes('second-line') && state === 'running';
    }, null, { timeout: 30000 });
    assert.equal(await page.getAttribute('#task-logs', 'data-state'), 'following');
    await page.waitForFunction(() => document.querySelector('#task-logs').textContent.includes('second-line'), null, { timeout: 30000 });
    await page.waitForFunction(() => document.querySelector('#task-detail-state').textContent === 'succeeded');
    await page.waitForSelector(`#task-table tbody tr[data-task-id="${id}"][data-state="succeeded"]`);
    assert.equal((await page.textContent('#task-logs')).trim(), 'first-line\nsecond-line');
    const t = (await runner.api(`/api/v1/tasks/${id}`)).json;
    assert.equal(t.state, 'succeeded');
    assert.deepEqual(t.command, ['sh', '-c', 'echo first-line; sleep 4; echo second-line']);
    assert.deepEqual(errors, []);
  });

  it('shows the API validation error of a bad submission', async () => {
    const { page } = tab;
    await page.fill('#submit-command', 'echo never');
    await page.fill('#submit-priority', '5000');
    await page.click('#submit-button');
    await page.waitForFunction(() => /validation_failed: priority/.test(document.querySelector('#submit-error').textContent));
    await page.fill('#submit-priority', '');
  });

  it('cancels a running task from the task page', async () => {
    const { page } = tab;
    const id = await submitFromForm(page, 'sleep 30');
    await page.waitForFunction(() => document.querySelector('#task-detail-state').textContent === 'running', null, { timeout: 30000 });
    assert.equal(await page.isEnabled('#task-cancel'), true);
    await page.click('#task-cancel');
    await page.waitForFunction(() => document.querySelector('#task-detail-state').textContent === 'cancelled', null, { timeout: 30000 });
    assert.equal(await page.isEnabled('#task-cancel'), false);
    const t = (await runner.api(`/api/v1/tasks/${id}`)).json;
    assert.equal(t.state, 'cancelled');
    assert.equal(t.error && t.error.code, 'cancelled');
    await page.waitForSelector(`#task-table tbody tr[data-task-id="${id}"][data-state="cancelled"]`);
  });

  it('shows task output, commands and labels as text, never as HTML', async () => {
    const { page } = tab;
    const payload = `<script>window.__xss=1</script><img src=x onerror="window.__xss=2">`;
    const id = await submitFromForm(page, `printf '%s\\n' '${payload}'`);
    await page.waitForFunction(() => document.querySelector('#task-detail-state').textContent === 'succeeded', null, { timeout: 30000 });
    await page.waitForFunction((p) => document.querySelector('#task-logs').textContent.includes(p), payload);
    assert.equal(await page.locator('#task-logs img, #task-logs script').count(), 0);
    const row = page.locator(`#task-table tbody tr[data-task-id="${id}"] td.cmd`);
    assert.ok((await row.textContent()).includes(payload));
    assert.equal(await page.locator('#task-table img, #task-facts img').count(), 0);

    // labels and a JSON-array command submitted through the API
    const r = await runner.api('/api/v1/tasks', { method: 'POST', body: {
      command: ['echo', '<b>bold</b>'], labels: { team: '<img src=x onerror="window.__xss=3">' },
    } });
    assert.equal(r.status, 201, r.text);
    await page.goto(`${runner.url}/#/tasks/${r.json.id}`);
    await page.waitForFunction(() => document.querySelector('#task-detail-state').textContent === 'succeeded', null, { timeout: 30000 });
    await page.waitForFunction(() => document.querySelector('#task-logs').textContent.includes('<b>bold</b>'));
    assert.ok((await page.textContent('#task-facts')).includes('team=<img src=x onerror="window.__xss=3">'));
    assert.equal(await page.locator('#task-logs b, #task-facts img, #task-table b').count(), 0);
    await sleep(300);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
  });

  it('shows a task\'s secret names and masked output, never a secret value', async () => {
    const { page, errors } = tab;
    // the tab is shared: an earlier test's expected 400 is already recorded
    const errorsBefore = errors.length;
    const value = 's3cr3t-value-xyz';
    const r = await runner.api('/api/v1/tasks', { method: 'POST', body: {
      command: ['sh', '-c', 'echo "key=$API_KEY"'], secrets: { API_KEY: value },
    } });
    assert.equal(r.status, 201, r.text);
    assert.ok(!r.text.includes(value), r.text);
    await page.goto(`${runner.url}/#/tasks/${r.json.id}`);
    await page.waitForFunction((id) => document.querySelector('#task-detail-id').textContent === id, r.json.id);
    await page.waitForFunction(() => document.querySelector('#task-detail-state').textContent === 'succeeded', null, { timeout: 30000 });
    // the task did get the value (masked in its output), and the page names the secret
    await page.waitForFunction(() => document.querySelector('#task-logs').textContent.includes('key=***'), null, { timeout: 15000 });
    assert.ok((await page.textContent('#task-facts')).includes('API_KEY'));
    assert.ok((await page.textContent('body')).includes('API_KEY'));
    const html = await page.evaluate(() => document.documentElement.outerHTML);
    assert.ok(!html.includes(value), 'the secret value is in the DOM');
    assert.ok(html.includes('***'));
    assert.deepEqual(errors.slice(errorsBefore), []);
  });

  it('scales the pool from the page', async () => {
    const { page } = tab;
    await page.fill('#scale-input', '3');
    await page.click('#scale-button');
    await waitFor(async () => (await runner.api('/api/v1/status')).json.pool.target === 3,
      { timeout: 15000, what: 'pool target 3 in /api/v1/status' });
    await page.waitForFunction(() => document.querySelector('#pool-target').textContent === '3');
    await page.waitForFunction(() => document.querySelectorAll('#worker-table tbody tr').length >= 3, null, { timeout: 30000 });
    // a count out of range comes back as the API's error, shown on the page
    await page.fill('#scale-input', '0');
    await page.click('#scale-button');
    await page.waitForFunction(() => /validation_failed/.test(document.querySelector('#pool-message').textContent));
    assert.equal((await runner.api('/api/v1/status')).json.pool.target, 3);
  });

  it('shows schedules and pauses, resumes and triggers one from the Schedules panel', async () => {
    const { page } = tab;
    const made = await runner.api('/api/v1/schedules', { method: 'POST', body: {
      name: 'browser-nightly', cron: '30 3 * * *', timezone: 'Europe/Berlin',
      task: { command: ['true'], isolation: 'process' } } });
    assert.equal(made.status, 201);
    const row = '#schedule-table tr[data-schedule="browser-nightly"]';
    await page.waitForSelector(row, { timeout: 20000 });
    assert.match(await page.textContent(row), /30 3 \* \* \* \(Europe\/Berlin\)/);
    // the next run is shown, as the browser formats the API's next_run_at
    const next = await page.evaluate((iso) => new Date(iso).toLocaleString(), made.json.next_run_at);
    assert.ok((await page.textContent(row)).includes(next), `next run ${next} in the row`);
    await page.click(`${row} [data-testid="schedule-pause"]`);
    await waitFor(async () => (await runner.api('/api/v1/schedules/browser-nightly')).json.paused === true,
      { timeout: 15000, what: 'the schedule paused' });
    // paused still shows its next slot
    await page.waitForFunction(({ sel, text }) => {
      const r = document.querySelector(sel);
      return r && r.textContent.includes(`paused · next ${text}`);
    }, { sel: row, text: next }, { timeout: 15000 });
    await page.click(`${row} [data-testid="schedule-resume"]`);
    await waitFor(async () => (await runner.api('/api/v1/schedules/browser-nightly')).json.paused === false,
      { timeout: 15000, what: 'the schedule resumed' });
    await page.click(`${row} [data-testid="schedule-trigger"]`);
    await page.waitForFunction(() => /task [0-9A-Z]{26} created/.test(document.querySelector('#schedule-message').textContent));
    // the last task links to its task page. Clicked by selector, not by a
    // handle: act() and the schedule.* event each re-render the row, so a
    // handle taken between the two is detached when clicked.
    const link = `${row} a[href^="#/tasks/"]`;
    await page.waitForSelector(link, { timeout: 15000 });
    await page.click(link);
    await page.waitForFunction(() => document.querySelector('#task-detail-id').textContent.length > 0);
    await runner.api('/api/v1/schedules/browser-nightly', { method: 'DELETE' });
  });

  it('shows a queue policy, pauses and resumes it from the Queues panel', async () => {
    const { page } = tab;
    const made = await runner.api('/api/v1/queues/browser-q', { method: 'PUT', body: { max_running: 3 } });
    assert.equal(made.status, 200);
    const row = '#queue-table tr[data-queue="browser-q"]';
    await page.waitForSelector(row, { timeout: 20000 });
    await page.click(`${row} [data-testid="queue-pause"]`);
    await waitFor(async () => (await runner.api('/api/v1/queues/browser-q')).json.paused === true,
      { timeout: 15000, what: 'the queue paused' });
    const paused = (await runner.api('/api/v1/queues/browser-q')).json;
    assert.equal(paused.max_running, 3);  // pause keeps the rest of the policy
    await page.waitForSelector(`${row} [data-testid="queue-resume"]`, { timeout: 15000 });
    await page.click(`${row} [data-testid="queue-resume"]`);
    await waitFor(async () => (await runner.api('/api/v1/queues/browser-q')).json.paused === false,
      { timeout: 15000, what: 'the queue resumed' });
    await runner.api('/api/v1/queues/browser-q', { method: 'DELETE' });
  });

  it('asks before a force stop and keeps the pool when the operator declines', async () => {
    const { page } = tab;
    await page.click('#pool-force-stop');
    await page.waitForSelector('#confirm-dialog[open]');
    await page.click('#confirm-cancel');
    await page.waitForSelector('#confirm-dialog:not([open])', { state: 'attached' });
    await sleep(500);
    assert.equal((await runner.api('/api/v1/status')).json.pool.state, 'running');
  });

  it('saves a screenshot of the main view and fits a phone screen', async () => {
    const { page } = tab;
    for (let i = 0; i < 3; i++) await runner.api('/api/v1/tasks', { method: 'POST', body: { command: ['sh', '-c', `echo batch ${i}; sleep ${i}`] } });
    await page.goto(runner.url + '/');
    await waitLive(page);
    await page.waitForFunction(() => document.querySelectorAll('#task-table tbody tr').length >= 5);
    await sleep(4500);  // a few chart samples
    await page.setViewportSize({ width: 1280, height: 900 });
    await page.screenshot({ path: path.join(artifacts, 'dashboard.png'), fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    await sleep(300);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `page is ${overflow}px wider than a 390px phone`);
    await page.screenshot({ path: path.join(artifacts, 'dashboard-phone.png'), fullPage: true });
    // the task page fits too, long command and output included
    await page.click('#task-table tbody tr:last-child button.link');
    await page.waitForFunction(() => document.querySelector('#task-logs').dataset.state === 'complete');
    const panelOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(panelOverflow <= 0, `task page is ${panelOverflow}px wider than a 390px phone`);
    await page.locator('#task-panel').screenshot({ path: path.join(artifacts, 'task-phone.png') });
    await page.click('#task-close');
    // keyboard: the controls are reachable with Tab and show a focus ring
    await page.setViewportSize({ width: 1280, height: 900 });
    const reached = new Set();
    await page.focus('body');
    for (let i = 0; i < 40; i++) {
      await page.keyboard.press('Tab');
      reached.add(await page.evaluate(() => document.activeElement && document.activeElement.id));
    }
    for (const id of ['scale-input', 'scale-button', 'pool-stop', 'pool-force-stop', 'submit-command', 'submit-button']) {
      assert.ok(reached.has(id), `#${id} is not reachable with Tab`);
    }
    assert.ok(fs.statSync(path.join(artifacts, 'dashboard.png')).size > 10000);
  });

  it('filters the task table by state and queue and pages through it', async () => {
    const { page } = tab;
    // delayed tasks stay queued: a stable set to page through
    const ids = [];
    for (let i = 0; i < 23; i++) {
      const r = await runner.api('/api/v1/tasks', { method: 'POST', body: { command: ['true'], queue: 'paging', delay: 3600 } });
      assert.equal(r.status, 201, r.text);
      ids.push(r.json.id);
    }
    try {
      await page.fill('#filter-queue', 'paging');
      await page.selectOption('#filter-state', 'queued');
      // the table shows the filtered query (a reload started before the filter
      // changed must not count), every row of it queued
      await page.waitForFunction(() => {
        const q = new URLSearchParams(document.querySelector('#task-table').dataset.query || '');
        const rows = [...document.querySelectorAll('#task-table tbody tr')];
        return q.get('queue') === 'paging' && q.get('state') === 'queued' && !q.get('cursor') &&
          rows.length === 20 && rows.every((r) => r.dataset.state === 'queued');
      });
      const seen = await page.$$eval('#task-table tbody tr', (rows) => rows.map((r) => r.dataset.taskId));
      assert.equal(await page.isEnabled('#tasks-next'), true);
      await page.click('#tasks-next');
      await page.waitForFunction(() => new URLSearchParams(document.querySelector('#task-table').dataset.query).get('cursor') &&
        document.querySelectorAll('#task-table tbody tr').length === 3);
      const rest = await page.$$eval('#task-table tbody tr', (rows) => rows.map((r) => r.dataset.taskId));
      assert.deepEqual([...seen, ...rest].sort(), [...ids].sort());
      assert.equal(await page.isEnabled('#tasks-next'), false);
      await page.click('#tasks-prev');
      await page.waitForFunction(() => document.querySelectorAll('#task-table tbody tr').length === 20);
      // another state: none of them
      await page.selectOption('#filter-state', 'succeeded');
      await page.waitForFunction(() => document.querySelectorAll('#task-table tbody tr').length === 0);
      assert.equal(await page.isVisible('#task-empty'), true);
    } finally {
      // the next tests expect the unfiltered table, whatever happened here
      await page.fill('#filter-queue', '');
      await page.selectOption('#filter-state', '');
    }
  });

  it('shows "disconnected" while the server is down and reconnects after it restarts', async () => {
    const { page } = tab;
    await waitLive(page);
    const { port, db, dataDir } = runner;
    await runner.stop({ dropDb: false, removeDir: false });
    await page.waitForSelector('#conn-status[data-state="disconnected"]', { timeout: 20000 });
    assert.match(await page.textContent('#conn-status'), /disconnected/);
    runner = await startRunner('main-restarted', { port, database: db, dataDir, args: ['--config', pressureConfig(NO_PRESSURE)] });
    await page.waitForSelector('#conn-status[data-state="connected"]', { timeout: 40000 });
    // live again: a new task shows up without a reload
    const r = await runner.api('/api/v1/tasks', { method: 'POST', body: { command: ['echo', 'after-restart'] } });
    await page.waitForSelector(`#task-table tbody tr[data-task-id="${r.json.id}"]`, { timeout: 20000 });
  });
});

describe('dashboard with backpressure on', () => {
  let runner;
  after(async () => { if (runner) await runner.stop(); });

  it('shows the throttled state and its reason', async () => {
    // Thresholds at 1-2 %: any host is over them (memory at least), so the
    // pool is throttled at once.
    const config = pressureConfig({ cpuHigh: 2, cpuLow: 1, memoryHigh: 2, memoryLow: 1, diskHigh: 2, diskLow: 1 });
    runner = await startRunner('throttled', { args: ['--config', config], ready: '/healthz', mockArgs: ['--throttled'] });
    const { page, errors } = await openDashboard(runner);
    try {
      await page.waitForFunction(() => document.querySelector('#pool-state').textContent === 'throttled', null, { timeout: 30000 });
      assert.equal(await page.getAttribute('#pool-state', 'data-state'), 'throttled');
      const reason = await page.textContent('#backpressure-reason');
      assert.notEqual(reason, 'none');
      assert.ok(reason.length > 2, `backpressure reason shown: ${reason}`);
      assert.equal(await page.getAttribute('#backpressure-reason', 'data-active'), 'true');
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
    }
  });
});

describe('dashboard with an API token', () => {
  const token = 'browser-test-token-' + Date.now();
  let runner;
  after(async () => { if (runner) await runner.stop(); });

  it('asks for the token once, then works and keeps it for the tab', async () => {
    runner = await startRunner('token', { args: ['--api-token', token, '--config', pressureConfig(NO_PRESSURE)], mockArgs: ['--token', token] });
    assert.equal((await runner.api('/api/v1/status')).status, 401);
    const { page } = await newPage(browser);
    try {
      await page.addInitScript(() => {
        window.__tokenAsks = 0;
        const show = HTMLDialogElement.prototype.showModal;
        HTMLDialogElement.prototype.showModal = function patched() {
          if (this.id === 'token-dialog') window.__tokenAsks++;
          return show.call(this);
        };
      });
      await page.goto(runner.url + '/');
      await page.waitForSelector('#token-dialog[open]');
      await page.fill('#token-input', token);
      await page.click('#token-submit');
      await waitLive(page);
      assert.equal(await page.textContent('#pool-state'), 'running');
      await page.waitForFunction(() => document.querySelectorAll('#worker-table tbody tr').length >= 2);
      // live log follow works too (EventSource carries the token in ?token=)
      await submitFromForm(page, 'echo token-ok');
      await page.waitForFunction(() => document.querySelector('#task-logs').textContent.includes('token-ok'), null, { timeout: 30000 });
      assert.equal(await page.evaluate(() => window.__tokenAsks), 1);
      assert.equal(await page.isVisible('#token-dialog'), false);
      // kept for the tab: a reload does not ask again
      await page.reload();
      await waitLive(page);
      assert.equal(await page.evaluate(() => window.__tokenAsks), 0);
      assert.equal(await page.evaluate(() => sessionStorage.getItem('runner.token')), token);
    } finally {
      await page.close();
    }
  });

  it('says so when the token is wrong and asks again', async () => {
    const { page } = await newPage(browser);  // a new tab: nothing stored
    try {
      await page.goto(runner.url + '/');
      await page.waitForSelector('#token-dialog[open]');
      await page.fill('#token-input', 'not-the-token');
      await page.click('#token-submit');
      await page.waitForFunction(() => document.querySelector('#token-dialog').open &&
        /not accepted/.test(document.querySelector('#token-error').textContent));
      await page.fill('#token-input', token);
      await page.click('#token-submit');
      await waitLive(page);
      assert.equal(await page.textContent('#pool-state'), 'running');
    } finally {
      await page.close();
    }
  });
});
