// The process-mode peer of bench/pool: graphile-worker jobs whose task spawns
// /bin/true and awaits its exit, on the same PostgreSQL as the runner. A burst
// of --tasks jobs is added to a warm runner (after 2 x concurrency warm-up
// jobs) and timed until the last one finished: submit -> finished, as the
// runner's figure. Prints one JSON line per concurrency (tasks/s).
// Usage: NODE_PATH=bench/.peers/node_modules node bench/pool/graphile_spawn.js
//          --host /tmp/runner-dev/pgsock --user postgres --tasks 300 --concurrency 1,4,16
"use strict";
const { spawn } = require("child_process");
const path = require("path");
const { arg, version, withScratchDb, timeJobs } =
  require(path.join(__dirname, "..", "queue", "graphile_harness"));

const host = arg("--host", "/tmp/runner-dev/pgsock");
const user = arg("--user", "postgres");
const tasks = Number(arg("--tasks", "300"));
const concurrencies = arg("--concurrency", "1,4,16").split(",").filter(Boolean).map(Number);

// Resolves when /bin/true exited 0; rejects on a spawn error or another exit.
function spawnTrue() {
  return new Promise((resolve, reject) => {
    const child = spawn("/bin/true", [], { stdio: "ignore" });
    child.once("error", reject);
    child.once("exit", (code, signal) =>
      code === 0 ? resolve() : reject(new Error(`/bin/true: code ${code} signal ${signal}`)));
  });
}

(async () => {
  const v = version();
  await withScratchDb({ host, user, prefix: "graphile_spawn" }, async (url) => {
    for (const concurrency of concurrencies) {
      const r = await timeJobs(url, {
        concurrency, tasks, task: spawnTrue, prefill: false, warmup: 2 * concurrency,
        // Its default pool (10) would starve 16 workers: give it one per worker.
        maxPoolSize: Math.max(10, concurrency + 2),
      });
      console.log(JSON.stringify({ version: v, ...r }));
    }
  });
})().catch((e) => { console.error("graphile spawn bench failed:", e); process.exit(1); });
