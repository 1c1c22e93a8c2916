// graphile-worker working no-op jobs on the same PostgreSQL as the runner
// benchmark: claim-and-complete throughput at 1, 4 and 16 concurrent workers
// (its default, unbatched mode: one get_job and one complete_job per job).
// Usage: node graphile_bench.js --host /tmp/runner-dev/pgsock --user postgres
//          --tasks 3000 --out bench/results/queue_graphile.json
"use strict";
const fs = require("fs");
const { arg, version, withScratchDb, timeJobs } = require("./graphile_harness");

const host = arg("--host", "/tmp/runner-dev/pgsock");
const user = arg("--user", "postgres");
const tasks = Number(arg("--tasks", "3000"));
const out = arg("--out", "bench/results/queue_graphile.json");

(async () => {
  const v = version();
  const results = await withScratchDb({ host, user, prefix: "graphile_bench" }, async (url) => {
    const rows = [];
    for (const n of [1, 4, 16]) {
      let best = null;
      for (let round = 0; round < 2; round++) {
        const r = await timeJobs(url, { concurrency: n, tasks, task: async () => {} });
        if (!best || r.seconds < best.seconds) best = r;
      }
      rows.push({ path: "graphile_worker", claimers: n, tasks, seconds: best.seconds,
                  tasks_per_second: best.tasks_per_second });
      console.log(`claimers=${String(n).padStart(2)} graphile-worker ${v}: ` +
                  `${best.tasks_per_second.toFixed(0)} tasks/s`);
    }
    return rows;
  });
  fs.writeFileSync(out, JSON.stringify({ version: v, mode: "unbatched (default)", claim_finish: results }) + "\n");
})().catch((e) => { console.error("graphile bench failed:", e); process.exit(1); });
