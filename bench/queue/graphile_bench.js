// graphile-worker working no-op jobs on the same PostgreSQL as the runner
// benchmark: claim-and-complete throughput at 1, 4 and 16 concurrent workers
// (its default, unbatched mode: one get_job and one complete_job per job).
// Usage: node graphile_bench.js --host /tmp/runner-dev/pgsock --user postgres
//          --tasks 3000 --out bench/results/queue_graphile.json
"use strict";
const { execFileSync } = require("child_process");
const fs = require("fs");
const { run, makeWorkerUtils, Logger } = require("graphile-worker");

// Silent: per-job log lines would cost graphile more than its queue work.
const quiet = new Logger(() => () => {});
const { Client } = require("pg");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
}

const host = arg("--host", "/tmp/runner-dev/pgsock");
const user = arg("--user", "postgres");
const tasks = Number(arg("--tasks", "3000"));
const out = arg("--out", "bench/results/queue_graphile.json");
const db = `graphile_bench_${process.pid}`;
const url = `postgres:///${db}?host=${encodeURIComponent(host)}&user=${user}`;
const adminUrl = `postgres:///postgres?host=${encodeURIComponent(host)}&user=${user}`;

async function admin(sql) {
  const c = new Client({ connectionString: adminUrl });
  await c.connect();
  try { await c.query(sql); } finally { await c.end(); }
}

async function fill() {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    // Bulk insert through graphile's own add_job, in one statement.
    await c.query(
      "SELECT graphile_worker.add_job('noop', json_build_object('i', g)) FROM generate_series(1, $1) g",
      [tasks]);
  } finally { await c.end(); }
}

async function once(concurrency) {
  const utils = await makeWorkerUtils({ connectionString: url, logger: quiet });
  await utils.migrate();
  const c = new Client({ connectionString: url });
  await c.connect();
  await c.query("DELETE FROM graphile_worker.jobs").catch(() =>
    c.query("DELETE FROM graphile_worker._private_jobs"));
  await c.end();
  await fill();
  let done = 0;
  let resolveAll;
  const all = new Promise((r) => (resolveAll = r));
  const start = process.hrtime.bigint();
  const runner = await run({
    connectionString: url,
    concurrency,
    noHandleSignals: true,
    pollInterval: 1000,
    logger: quiet,
    taskList: { noop: async () => { if (++done === tasks) resolveAll(); } },
  });
  await all;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await runner.stop();
  await utils.release();
  return { path: "graphile_worker", claimers: concurrency, tasks, seconds,
           tasks_per_second: tasks / seconds };
}

(async () => {
  await admin(`CREATE DATABASE ${db}`);
  const results = [];
  let version = "unknown";
  try {
    version = require("graphile-worker/package.json").version;
    for (const n of [1, 4, 16]) {
      let best = null;
      for (let round = 0; round < 2; round++) {
        const r = await once(n);
        if (!best || r.seconds < best.seconds) best = r;
      }
      results.push(best);
      console.log(`claimers=${String(n).padStart(2)} graphile-worker ${version}: ` +
                  `${best.tasks_per_second.toFixed(0)} tasks/s`);
    }
  } finally {
    await admin(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
  }
  fs.writeFileSync(out, JSON.stringify({ version, mode: "unbatched (default)", claim_finish: results }) + "\n");
})().catch((e) => { console.error("graphile bench failed:", e); process.exit(1); });
