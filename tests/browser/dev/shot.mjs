// Development only: opens the dashboard at URL and saves screenshots at 1280 and 390 px.
import { chromium } from 'playwright-core';
import fs from 'node:fs'; import os from 'node:os'; import path from 'node:path';
const url = process.argv[2] || 'http://127.0.0.1:8099/';
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pw-'));
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox','--disable-gpu','--disable-background-networking','--disable-component-update','--no-first-run','--disable-sync', `--user-data-dir=${dir}`] }).catch(async () => null);
const ctx = browser ? await browser.newContext() : await chromium.launchPersistentContext(dir, { executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox'] });
const page = await ctx.newPage();
page.on('console', (m) => console.log('console', m.type(), m.text()));
page.on('pageerror', (e) => console.log('pageerror', e.message));
await page.setViewportSize({ width: 1280, height: 900 });
await page.goto(url);
await page.fill('#submit-command', process.argv[3] || 'echo "<script>alert(1)</script>"; echo done');
await page.click('#submit-button');
await page.waitForTimeout(6000);
await page.screenshot({ path: 'artifacts/dev-1280.png', fullPage: true });
await page.setViewportSize({ width: 390, height: 844 });
await page.waitForTimeout(500);
await page.screenshot({ path: 'artifacts/dev-390.png', fullPage: true });
await (browser || ctx).close();
