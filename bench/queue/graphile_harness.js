// Driving graphile-worker (the peer) in benchmarks: arguments, a scratch
// database, and timing a batch of jobs at a given concurrency. Used by
// bench/queue/graphile_bench.js (no-op jobs, claim-and-complete) and
// bench/pool/graphile_spawn.js (jobs that spawn /bin/true). graphile-worker
// and pg come from bench/.peers (NODE_PATH), installed by the run scripts.
"use strict";
const { run, makeWorkerUtils, Logger } = require("graphile-worker");
const { Client, Pool } = require("pg");

// Silent: per-job log lines would cost graphile more than its queue work.
const quiet = new Logger(() => () => {});

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
}

function pgUrl(host, user, db) {
  return `postgres:///${db}?host=${encodeURIComponent(host)}&user=${user}`;
}

async function query(connectionString, sql, params) {
  const c = new Client({ connectionString });
  await c.connect();
  try { return await c.query(sql, params); } finally { await c.end(); }
}

function version() {
  return require("graphile-worker/package.json").version;
}

// Creates a database named `${prefix}_${pid}` on host/user, calls fn(url)
// and drops the database again, whatever fn does.
async function withScratchDb({ host, user, prefix }, fn) {
  const db = `${prefix}_${process.pid}`;
  const admin = pgUrl(host, user, "postgres");
  await query(admin, `CREATE DATABASE ${db}`);
  try {
    return await fn(pgUrl(host, user, db));
  } finally {
    await query(admin, `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
  }
}

// Adds `n` jobs of task `name` through graphile's own add_job, in one statement.
async function addJobs(url, name, n) {
  await query(url,
    "SELECT graphile_worker.add_job($1, json_build_object('i', g)) FROM generate_series(1, $2) g",
    [name, n]);
}

// Times `tasks` jobs, each running `task()` (an async function), through a
// graphile-worker runner with `concurrency` workers. Two ways to start:
// - prefill (default): the jobs are queued first, the clock starts with run()
//   (claim-and-complete throughput of a backlog);
// - prefill false: the runner starts and works `warmup` jobs first, then the
//   clock starts as the batch is added (submit -> finished of a burst into a
//   warm worker, woken by its LISTEN/NOTIFY).
// A job whose task throws counts as done and as a failure (graphile would
// retry it later; the batch is over by then). maxPoolSize: PostgreSQL
// connections (graphile's default, 10, unless given).
async function timeJobs(url, { concurrency, tasks, task, prefill = true, warmup = 0,
                               maxPoolSize }) {
  // Our own pool, ended before the caller drops the database: graphile's own
  // may still hold idle connections then, whose termination it reports as an
  // unhandled error.
  const pgPool = new Pool({ connectionString: url, max: maxPoolSize || 10 });
  pgPool.on("error", () => {});
  const utils = await makeWorkerUtils({ pgPool, logger: quiet });
  try {
    await utils.migrate();
    await query(url, "DELETE FROM graphile_worker.jobs").catch(() =>
      query(url, "DELETE FROM graphile_worker._private_jobs"));
    let done = 0;
    let failures = 0;
    let target = 0;
    let resolveBatch = () => {};
    const batch = (n) => {
      target = done + n;
      return new Promise((r) => (resolveBatch = r));
    };
    const job = async () => {
      try {
        await task();
      } catch (e) {
        ++failures;
      } finally {
        if (++done === target) resolveBatch();
      }
    };
    const options = { pgPool, concurrency, noHandleSignals: true, pollInterval: 1000,
                      logger: quiet, taskList: { job } };
    let start;
    let runner;
    if (prefill) {
      const all = batch(tasks);
      await addJobs(url, "job", tasks);
      start = process.hrtime.bigint();
      runner = await run(options);
      await all;
    } else {
      runner = await run(options);
      if (warmup > 0) {
        const warm = batch(warmup);
        await addJobs(url, "job", warmup);
        await warm;
        failures = 0;
      }
      const all = batch(tasks);
      start = process.hrtime.bigint();
      await addJobs(url, "job", tasks);
      await all;
    }
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    await runner.stop();
    return { concurrency, tasks, seconds, tasks_per_second: tasks / seconds, failures };
  } finally {
    await utils.release();
    await pgPool.end();
  }
}

module.exports = { arg, quiet, query, version, withScratchDb, addJobs, timeJobs };
